"""The address of the client behind the proxies in front of the site, for counting downloads.

gunicorn puts its peer in REMOTE_ADDR; behind Varnish or a load balancer that peer is the proxy,
and the client is in X-Forwarded-For, which every proxy appends its own peer to. Walking it from
the right, an address is skipped while it is a trusted proxy (settings.FORWARDED_ALLOW_IPS, the
setting gunicorn reads for the same purpose); the first one that is not is the client. Entries to
the left of it were written by the client itself and are never believed. With "*", any address
of a private network (INTERNAL_NETWORKS: loopback, RFC 1918, shared, link-local, unique local)
counts as a proxy of the deployment.

client_marker turns an address into a marker that names no one: an HMAC under a salt derived
from DJANGO_SECRET_KEY, a purpose and a period (the UTC day), so markers change with the period.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
INTERNAL_NETWORKS = [
    ipaddress.ip_network(network)
    for network in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10")
]  # fmt: skip


def client_address(meta: dict) -> str:
    """The client's address for a request's META (REMOTE_ADDR and HTTP_X_FORWARDED_FOR)."""
    peer = _parse(meta.get("REMOTE_ADDR", ""))
    if peer is None:
        return meta.get("REMOTE_ADDR", "")
    client = peer
    forwarded = [_parse(item) for item in meta.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    while _trusted(client) and forwarded:
        hop = forwarded.pop()
        if hop is None:  # a value no proxy of ours would write: stop at the last address we trust
            break
        client = hop
    return str(client)


def _parse(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "203.0.113.7:51234"
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # "::ffff:10.0.0.5" from a server bound to [::]
    return mapped or address


def _trusted(address: Address) -> bool:
    networks = settings.TRUSTED_PROXY_NETWORKS + (INTERNAL_NETWORKS if "*" in settings.FORWARDED_ALLOW_IPS else [])
    return any(address in network for network in networks if address.version == network.version)


def client_marker(address: str, purpose: str, period: str, subject: str) -> str:
    """The client's marker for `subject` (a file id, a minute) in `period`. An IPv6 client is its /64
    (one host's privacy addresses change within it, and a flood of fresh addresses from one network
    is one client)."""
    try:
        if ipaddress.ip_address(address).version == 6:
            address = str(ipaddress.ip_network(f"{address}/64", strict=False).network_address)
    except ValueError:
        pass  # no address (a Unix socket): known by what REMOTE_ADDR says
    salt = hmac.new(settings.SECRET_KEY.encode(), f"{purpose} {period}".encode(), hashlib.sha256).digest()
    return hmac.new(salt, f"{subject} {address}".encode(), hashlib.sha256).hexdigest()[:32]
