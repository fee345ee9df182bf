"""Signed download links, minted at request time by pure local computation.

Three signers, chosen by configuration (`signer()`):

* ``LocalSigner``: an HMAC (Django's signing key) over the whole download path
  and its expiry, for objects served by the site itself (`/files/...`).
* ``S3Signer``: SigV4 presigned GET URLs with ``response-content-disposition``.
* ``CloudFrontSigner``: canned-policy signed URLs on ``CDN_BASE_URL``.

All of them sit behind a **windowed cache**. Time is cut into windows of
``SIGNED_URL_TTL`` seconds; a link for window *w* is signed as of the window's
start and is valid for ``TTL + window``, so whenever within the window it is
handed out it has between TTL and 2 x TTL left. Every process computes the
same link for the same window (browser and CDN friendly), and each link costs
its HMACs once per window, not once per request.

An S3 link also dies with the credentials that signed it. With temporary
credentials its window is cut short at their expiry (`Window.limited_to`), and
`aws.CredentialKeeper` renews them in the background early enough that every
link still has at least TTL left.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import constant_time_compare, salted_hmac

from . import aws, observability
from .process_cache import PerProcess
from .storage import release_store
from .storage.s3 import S3Location

LOCAL_FILES_PREFIX = "/files/"
_SAFE = "-_.~"
CACHE_LIMIT = 50_000  # links kept per process; old windows are dropped first


@dataclass(frozen=True)
class SignedLink:
    url: str
    expires_at: datetime

    @property
    def expires_at_iso(self) -> str:
        return self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    start: int  # unix seconds
    lifetime: int  # seconds the link is valid from `start`
    credentials: aws.CredentialSet | None = None  # what S3 links of this window are signed with

    @property
    def expires(self) -> int:
        return self.start + self.lifetime

    @classmethod
    def current(cls, ttl: int, now: float | None = None) -> Window:
        now = time.time() if now is None else now
        start = int(now) - int(now) % ttl
        return cls(start=start, lifetime=2 * ttl)

    def limited_to(self, credentials: aws.CredentialSet) -> Window:
        """This window signed with `credentials`, its links ending when they do if that comes first."""
        lifetime = self.lifetime
        if credentials.expires_at is not None:
            lifetime = min(lifetime, int(credentials.expires_at) - self.start)
        return replace(self, lifetime=lifetime, credentials=credentials)


class Signer:
    """Base: the windowed cache around `_sign`."""

    name = ""

    def __init__(self, ttl: int):
        self.ttl = ttl
        self._cache: dict[tuple, tuple[Window, SignedLink]] = {}
        self._lock = threading.Lock()
        self._last_window: Window | None = None
        self.hits = 0
        self.misses = 0

    def window(self, now: float | None) -> Window:
        """The current window; the same object for every link of a window (so the cache compares by identity)."""
        now = time.time() if now is None else now
        last = self._last_window
        if last is not None and last.start <= now < last.start + self.ttl:
            return last
        self._last_window = Window.current(self.ttl, now)
        return self._last_window

    def link(self, key: str, filename: str, *, base_url: str = "", now: float | None = None) -> SignedLink:
        window = self.window(now)
        cache_key = (key, filename, base_url)
        cached = self._cache.get(cache_key)
        if cached is not None and (cached[0] is window or cached[0] == window):
            self.hits += 1
            observability.count(signing_hits=1)
            return cached[1]
        self.misses += 1
        observability.count(signing_misses=1)
        link = SignedLink(
            url=self._sign(key, filename, base_url, window),
            expires_at=datetime.fromtimestamp(window.expires, tz=UTC),
        )
        with self._lock:
            if len(self._cache) >= CACHE_LIMIT:
                self._drop_old_windows(window.start)
            self._cache[cache_key] = (window, link)
        return link

    def _drop_old_windows(self, current: int) -> None:
        stale = [k for k, (window, _) in self._cache.items() if window.start != current]
        for k in stale or list(self._cache)[: CACHE_LIMIT // 2]:
            del self._cache[k]

    def _sign(self, key: str, filename: str, base_url: str, window: Window) -> str:
        raise NotImplementedError


def content_disposition(filename: str) -> str:
    """attachment; with an ASCII fallback name and the exact UTF-8 name (RFC 6266 / 5987)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


# --- local -----------------------------------------------------------------


class LocalSigner(Signer):
    """Links to the site's own `/files/<key>` view; the HMAC covers the path and the expiry."""

    name = "local"
    salt = "releases.signing.local"

    def _sign(self, key, filename, base_url, window):
        path = local_file_path(key)
        return f"{base_url}{path}?{urlencode({'expires': window.expires, 'signature': local_signature(path, window.expires)})}"


def local_file_path(key: str) -> str:
    return LOCAL_FILES_PREFIX + quote(key, safe="/")


def local_signature(path: str, expires: int) -> str:
    return salted_hmac(LocalSigner.salt, f"{path}\n{expires}", algorithm="sha256").hexdigest()


_CANONICAL_EXPIRES = re.compile(r"[1-9][0-9]{0,11}", re.ASCII)


class LinkRefused(Exception):
    """A local link that was tampered with or has expired; str() says which."""


def verify_local_link(path: str, expires: str, signature: str, *, now: float | None = None) -> None:
    """Raise LinkRefused unless `signature` is ours for `path` and `expires` lies in the future.

    `expires` has one spelling only, the one we sign (ASCII digits, no sign, no leading zero):
    int() would also take "+123", " 123 ", "1_2" or full-width digits, several URLs for one link.
    """
    if not isinstance(expires, str) or not _CANONICAL_EXPIRES.fullmatch(expires):
        raise LinkRefused("This download link is malformed; ask the stable URL for a fresh one.")
    expires_at = int(expires)
    if not constant_time_compare(local_signature(path, expires_at), signature or ""):
        raise LinkRefused("This download link's signature does not match; ask the stable URL for a fresh one.")
    if (time.time() if now is None else now) >= expires_at:
        raise LinkRefused("This download link has expired; ask the stable URL for a fresh one.")


# --- S3 (SigV4 query signing) ---------------------------------------------------


class S3Signer(Signer):
    """SigV4 presigned GET URLs, computed here so that they can be signed as of the window's start.

    The credentials come from a `CredentialKeeper` (no network call here); a window whose
    credentials expire before it ends gives links that end with them.
    """

    name = "s3"

    def __init__(self, ttl: int, location: S3Location, credentials: aws.CredentialKeeper):
        super().__init__(ttl)
        self.location, self.credentials = location, credentials
        self._last_limited: Window | None = None

    def window(self, now):
        base, credentials = super().window(now), self.credentials.current(now)
        limited = self._last_limited
        if limited is None or limited.start != base.start or limited.credentials is not credentials:
            limited = self._last_limited = base.limited_to(credentials)
        return limited

    def _sign(self, key, filename, base_url, window):
        return presign_s3_get(
            self.location,
            window.credentials,
            key,
            signed_at=window.start,
            expires_in=window.lifetime,
            params={"response-content-disposition": content_disposition(filename)},
        )


def _uri_encode(value: str, *, keep_slash: bool = False) -> str:
    return quote(value, safe=_SAFE + ("/" if keep_slash else ""))


@lru_cache(maxsize=64)
def _sigv4_key(secret_key: str, datestamp: str, region: str) -> bytes:
    """The derived signing key is the same for a whole day: derive it once."""
    key = ("AWS4" + secret_key).encode()
    for part in (datestamp, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def presign_s3_get(
    location: S3Location, credentials: aws.CredentialSet, key: str, *, signed_at: int, expires_in: int, params: dict
) -> str:
    """A SigV4 query-string-signed GET URL (the algorithm botocore uses for generate_presigned_url)."""
    if expires_in > 604800:
        raise ValueError("SigV4 links cannot live longer than 7 days")
    canonical_uri = location.prefix + _uri_encode(key, keep_slash=True)
    amz_date = datetime.fromtimestamp(signed_at, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{location.region}/s3/aws4_request"
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{credentials.access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_in),
        "X-Amz-SignedHeaders": "host",
        **params,
    }
    if credentials.token:
        query["X-Amz-Security-Token"] = credentials.token
    canonical_query = "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(query.items()))
    canonical_request = f"GET\n{canonical_uri}\n{canonical_query}\nhost:{location.host}\n\nhost\nUNSIGNED-PAYLOAD"
    string_to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    signature = hmac.new(
        _sigv4_key(credentials.secret_key, amz_date[:8], location.region), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    return f"{location.origin}{canonical_uri}?{canonical_query}&X-Amz-Signature={signature}"


# --- CloudFront (canned policy) -------------------------------------------------


class CloudFrontSigner(Signer):
    name = "cloudfront"

    def __init__(self, ttl: int, base_url: str, key_id: str, private_key_pem: bytes):
        from cryptography.hazmat.primitives import serialization

        super().__init__(ttl)
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        try:
            self.private_key = serialization.load_pem_private_key(private_key_pem, password=None)
        except ValueError as error:
            raise ImproperlyConfigured(f"CLOUDFRONT_PRIVATE_KEY is not a PEM RSA private key: {error}") from None

    def _sign(self, key, filename, base_url, window):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        resource = f"{self.base_url}/{_uri_encode(key, keep_slash=True)}"
        policy = json.dumps(
            {"Statement": [{"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": window.expires}}}]},
            separators=(",", ":"),
        )
        signature = self.private_key.sign(policy.encode(), padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - CloudFront's canned policy is RSA-SHA1
        return f"{resource}?Expires={window.expires}&Signature={cloudfront_b64(signature)}&Key-Pair-Id={self.key_id}"


def cloudfront_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().replace("+", "-").replace("=", "_").replace("/", "~")


# --- choosing one ---------------------------------------------------------------


def signer() -> Signer:
    """The process-wide signer for the configured backends (its cache lives as long as the process)."""
    return SIGNER.get()


def _build_signer() -> Signer:
    ttl = settings.SIGNED_URL_TTL
    if settings.CDN_BACKEND == "cloudfront" and settings.CLOUDFRONT_KEY_ID:
        return CloudFrontSigner(ttl, settings.CDN_BASE_URL, settings.CLOUDFRONT_KEY_ID, settings.CLOUDFRONT_PRIVATE_KEY)
    store = release_store()
    if store.backend_name == "s3":
        keeper = aws.CredentialKeeper(lambda: aws.fetch_credentials(store.keys), ttl)
        return S3Signer(ttl, store.signing_location(), keeper)
    return LocalSigner(ttl)


def credentials_problem() -> tuple[str, bool] | None:
    """What keeps S3 links from their promised lifetime in this process, and whether links can
    still be signed at all; None when nothing does (for /readyz)."""
    built = signer()
    if not isinstance(built, S3Signer):
        return None
    problem = built.credentials.problem()
    return (problem, built.credentials.can_sign()) if problem else None


def credentials_status() -> dict | None:
    """Seconds left on the signing credentials and failed renewals, for /metrics (None: no S3 signer)."""
    built = signer()
    return built.credentials.status() if isinstance(built, S3Signer) else None


def prepare() -> None:
    """Build the signer and fetch its first credentials at process start, not in a request."""
    built = signer()
    if isinstance(built, S3Signer):
        built.credentials.start()


SIGNER = PerProcess(
    _build_signer,
    {"RELEASE_STORAGE", "SIGNED_URL_TTL", "CDN_BACKEND", "CDN_BASE_URL", "CLOUDFRONT_KEY_ID", "SECRET_KEY"},
)
