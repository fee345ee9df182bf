# Per-deployment part of the VCL: where the site is, and from which addresses purges may come.
# (The compose stack's web service; tests write their own with loopback addresses.)
# A purge also needs the site's secret: varnishd must run with VARNISH_PURGE_TOKEN in its
# environment, the site's CDN_PURGE_TOKEN (default.vcl reads it with std.getenv).
backend default {
    .host = "web";
    .port = "8000";
    .connect_timeout = 5s;
    .first_byte_timeout = 60s;
}

acl purgers {
    "127.0.0.1";
    "::1";
    "172.16.0.0"/12;  # container networks: the worker and web services send PURGE
    "10.0.0.0"/8;
}
