# Varnish in front of Model Releases (Varnish 7 with the xkey vmod from varnish-modules).
#
# - Caches what the site says it may: pages and API responses carry
#   Cache-Control with s-maxage (at most half the signed-link TTL) and xkey
#   surrogate keys; stable-URL redirects are no-store and pass through.
# - PURGE with an `xkey-purge: key1 key2` header drops every object tagged
#   with one of the keys. It needs the site's purge secret in `X-Purge-Token`
#   (the site's CDN_PURGE_TOKEN; varnishd reads the same value from its own
#   environment, VARNISH_PURGE_TOKEN, through vmod std's getenv) and must come
#   from the `purgers` ACL too. Without VARNISH_PURGE_TOKEN nobody may purge.
#   A refused purge answers 403 and changes nothing.
# - The scheme is part of the cache key (X-Forwarded-Proto from the TLS
#   terminator in front, "https" or else "http"): the site's 301 from plain
#   HTTP to HTTPS is never served to an HTTPS request. Redirects are stored
#   only when the site gives them an explicit max-age.
# - site.vcl (one per deployment, found on vcl_path) defines the backend
#   `default` and the ACL `purgers`.
vcl 4.1;

import directors;
import std;
import xkey;

include "site.vcl";

sub vcl_init {
    # Only for its key() method: the SHA-256 of a string, as an integer (see purge_token_ok).
    new digest = directors.shard();
}

# VCL has no constant-time string comparison, and Debian's varnish and varnish-modules have no
# digest vmod. shard.key() hashes with SHA-256 (32 bits of it): both sides are hashed and the
# integers compared first, so the string comparison below, which stops at the first differing
# byte, only ever runs for a guess whose digest already matches. The time a guess takes then
# says nothing about how many of its leading characters are right.
sub purge_token_ok {
    # (getenv gives NULL for an unset variable, which is not equal to ""; NULL + "" is "")
    if (std.getenv("VARNISH_PURGE_TOKEN") + "" == "") {
        return (synth(403, "Purging is off: varnishd has no VARNISH_PURGE_TOKEN"));
    }
    if (!req.http.X-Purge-Token
        || digest.key(req.http.X-Purge-Token) != digest.key(std.getenv("VARNISH_PURGE_TOKEN"))
        || req.http.X-Purge-Token != std.getenv("VARNISH_PURGE_TOKEN")) {
        return (synth(403, "PURGE needs the site's X-Purge-Token"));
    }
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "PURGE is not allowed from this address"));
        }
        call purge_token_ok;
        unset req.http.X-Purge-Token;
        if (req.http.xkey-purge) {
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
        } elsif (req.http.xkey-softpurge) {
            set req.http.n-gone = xkey.softpurge(req.http.xkey-softpurge);
        } else {
            return (synth(400, "PURGE needs an xkey-purge or xkey-softpurge header"));
        }
        return (synth(200, "Purged " + req.http.n-gone + " objects"));
    }
    # The purge secret is never passed on to the site (nor into its logs).
    unset req.http.X-Purge-Token;
    # Two values only, so that nothing else can split or poison the cache key.
    if (req.http.X-Forwarded-Proto != "https") {
        set req.http.X-Forwarded-Proto = "http";
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    # The admin, and anyone signed in (staff may see drafts), are never served from the cache.
    if (req.url ~ "^/admin" || req.http.Cookie ~ "sessionid=") {
        return (pass);
    }
    unset req.http.Cookie;
    unset req.http.Authorization;
    return (hash);
}

sub vcl_hash {
    # Then the builtin vcl_hash adds the URL and the Host.
    hash_data(req.http.X-Forwarded-Proto);
}

sub vcl_backend_response {
    # The builtin logic follows Cache-Control (s-maxage first) and never stores
    # no-store, no-cache or private responses; only make sure nothing sets a
    # cookie into a shared object.
    if (beresp.http.Set-Cookie) {
        set beresp.uncacheable = true;
        return (deliver);
    }
    # The site marks what may be shared (Cache-Control with a max-age, and the surrogate keys that
    # purge it); anything else, such as a 404 from an unknown address, is not stored: a cached
    # answer without keys would stay stale until the default TTL ran out, whatever changed.
    if (!beresp.http.Cache-Control && !beresp.http.Expires) {
        set beresp.uncacheable = true;
        return (deliver);
    }
    # Varnish would keep a redirect without Cache-Control for its default TTL (two minutes);
    # the site's redirects (HTTP to HTTPS, trailing slashes) carry no max-age and must not be shared.
    if (beresp.status >= 300 && beresp.status < 400 && beresp.http.Cache-Control !~ "max-age") {
        set beresp.uncacheable = true;
        return (deliver);
    }
    # No grace: past s-maxage a page may carry links with less than half their life left.
    set beresp.grace = 0s;
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    unset resp.http.xkey;
    unset resp.http.n-gone;
}
