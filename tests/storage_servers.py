"""A counting proxy in front of an S3 server (moto, LocalStack) on a free loopback port: it passes
every request through unchanged and counts what the storage layer asked for, so tests can say how
many PUTs were in flight at once and how many bytes of objects were read back.

The site's S3 client is pointed at the proxy (path-style addressing, so the Host it signs is the
proxy's; moto does not check signatures, and the proxy forwards the signed headers as they are).
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from .servers import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "host"}


@dataclass
class Seen:
    """What went through the proxy: requests by kind, the most PUTs in flight at once, object bytes
    read back (GET responses for an object), and each object GET's key."""

    requests: Counter = field(default_factory=Counter)
    puts_in_flight: int = 0
    most_puts_in_flight: int = 0
    object_bytes_read: int = 0
    object_reads: list[str] = field(default_factory=list)


class CountingProxy:
    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.seen = Seen()
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> Seen:
        with self.lock:
            seen, self.seen = self.seen, Seen()
        return seen

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's Expect

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                kind = proxy.kind(self.command, self.path)
                with proxy.lock:
                    proxy.seen.requests[kind] += 1
                    if kind == "PutPart" or kind == "PutObject":
                        proxy.seen.puts_in_flight += 1
                        proxy.seen.most_puts_in_flight = max(proxy.seen.most_puts_in_flight, proxy.seen.puts_in_flight)
                try:
                    status, reason, headers, answer = proxy.ask(self.command, self.path, self.headers, body)
                finally:  # before the client hears the answer: it cannot send its next PUT sooner
                    if kind in ("PutPart", "PutObject"):
                        with proxy.lock:
                            proxy.seen.puts_in_flight -= 1
                if kind == "GetObject" and status in (200, 206):
                    with proxy.lock:
                        proxy.seen.object_bytes_read += len(answer)
                        proxy.seen.object_reads.append(urlsplit(self.path).path)
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    @staticmethod
    def kind(method: str, path: str) -> str:
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        if method == "PUT":
            return "PutPart" if "partNumber" in query else "PutObject"
        if method == "GET":
            if "attributes" in query:
                return "GetObjectAttributes"
            if "uploads" in query or "uploadId" in query or "list-type" in query or path.count("/") < 2:
                return "List"
            return "GetObject"
        return method

    def ask(self, method, path, headers, body):
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            forwarded = {name: value for name, value in headers.items() if name.lower() not in HOP_BY_HOP}
            forwarded["Host"] = headers.get("Host", "")
            connection.request(method, path, body=body, headers=forwarded)
            response = connection.getresponse()
            answer = response.read()
            return response.status, response.reason, response.getheaders(), answer
        finally:
            connection.close()


def counted_moto(settings, moto_endpoint: str, s3_bucket: str):
    """For a fixture: the release storage on a fresh moto bucket behind a CountingProxy (yielded),
    with 5 MiB parts. `yield from counted_moto(settings, moto_endpoint, s3_bucket)`."""
    from .conftest import s3_storage_options

    proxy = CountingProxy(moto_endpoint)
    settings.RELEASE_STORAGE = {"BACKEND": "s3", "OPTIONS": s3_storage_options(proxy.url, s3_bucket)}
    settings.RELEASE_MULTIPART_THRESHOLD = 5 * 1024 * 1024
    yield proxy
    proxy.stop()


class StorageReads:
    """Counts the reads of objects' bytes at the storage layer (any store), by key."""

    def __init__(self, monkeypatch, store_class):
        self.keys: list[str] = []
        for name in ("iter_bytes", "compute_sha256", "open"):
            if hasattr(store_class, name):
                monkeypatch.setattr(store_class, name, self._counting(getattr(store_class, name)))

    def _counting(self, real):
        def read(store, key, *args, **kwargs):
            self.keys.append(key)
            return real(store, key, *args, **kwargs)

        return read
