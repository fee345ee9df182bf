# Per-deployment part of the VCL: where the site is, and who may purge.
# (The compose stack's web service; tests write their own with loopback addresses.)
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
