"""A fake Model Releases site that misbehaves on request, for the served clients' fault tests.

`HostileSite(files)` answers, on a free loopback port, what the clients ask of a real site: the
version's `sha256sums` (with `X-Artifact-Version`), the version's JSON, and each file's stable URL
(`HEAD` with `X-Artifact-Size` / `X-Artifact-SHA256`, `GET` with Range support). Each test then
sets what goes wrong:

- `sums`: the sha256sums body to send instead of the right one (malformed lines);
- `endless_sums`: the sha256sums answer never ends; `sums_status`: answer it with this status
  (a 503 from a proxy) and an empty body; `silent_sums`: accept the request and never answer;
- `body`: how file GETs are answered:
  `"right"` (default), `"endless"` (200, no length, bytes until the client hangs up),
  `"longer"` (200, no length, the file then `extra` more bytes), `"ignore range"` (200 with the
  whole file to a ranged request), or `"redirect"` (302 to `location`);
- `on_get(path)`: called when a file GET arrives, before it is answered (a test fills a disk);
- `tls`: serve https with a self-signed certificate (`cafile` is its path, for curl's --cacert).

Every request is recorded in `requests` as a `Seen` (method, path, Range header, body bytes sent).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    sent: int = 0


class HostileSite:
    def __init__(self, files: dict[str, bytes], model: str = "m", version: str = "v1", tls: bool = False):
        self.files, self.model, self.version = dict(files), model, version
        self.sums: bytes | None = None
        self.endless_sums = False
        self.sums_status = 200
        self.silent_sums = False
        self._stopping = threading.Event()
        self.body = "right"
        self.extra = 1024 * 1024
        self.location = ""
        self.on_get = None
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self.cafile = None
        self._certs = None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        if tls:
            self._certs = Path(tempfile.mkdtemp(prefix="hostile-tls-"))
            self.cafile = self._certs / "cert.pem"
            key = self._certs / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.cafile)],
                check=True, capture_output=True,
            )  # fmt: skip
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cafile, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.cafile else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def file_gets(self, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.method == "GET" and seen.path == path]

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        if self._certs:
            shutil.rmtree(self._certs, ignore_errors=True)

    def _sums_text(self) -> bytes:
        return "".join(f"{hashlib.sha256(body).hexdigest()}  {path}\n" for path, body in self.files.items()).encode()

    def _handler(self):
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _seen(self) -> Seen:
                seen = Seen(self.command, unquote(urlsplit(self.path).path), self.headers.get("Range"))
                with site._lock:
                    site.requests.append(seen)
                return seen

            def _send(self, seen: Seen, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                    seen.sent += len(body)

            def _stream(self, seen: Seen, chunks) -> None:
                """200 with no length: the body ends when the connection does (HTTP/1.0)."""
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        seen.sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            def do_GET(self):
                seen = self._seen()
                api = f"/api/v1/models/{site.model}/versions/"
                stable = f"/models/{site.model}/{site.version}/"
                if seen.path.startswith(api) and seen.path.endswith("/sha256sums"):
                    return self._sums(seen)
                if seen.path.startswith(api):
                    return self._version_json(seen)
                if seen.path.startswith(stable) and seen.path[len(stable) :] in site.files:
                    return self._file(seen, seen.path[len(stable) :])
                self._send(seen, 404, b'{"detail": "Not found."}', {"Content-Type": "application/json"})

            do_HEAD = do_GET

            def _sums(self, seen: Seen):
                headers = {"Content-Type": "text/plain; charset=utf-8", "X-Artifact-Version": site.version}
                if site.silent_sums:
                    site._stopping.wait(120)  # a hung proxy: the client must give up on its own
                    return
                if site.sums_status != 200:
                    return self._send(seen, site.sums_status, b"", {"Content-Type": "text/plain"})
                if site.endless_sums:
                    self.send_response(200)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    return self._stream_rest(seen, b"0" * 65536)
                self._send(seen, 200, site._sums_text() if site.sums is None else site.sums, headers)

            def _stream_rest(self, seen: Seen, chunk: bytes):
                try:
                    while True:
                        self.wfile.write(chunk)
                        seen.sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            def _version_json(self, seen: Seen):
                files = [
                    {"path": path, "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                     "url": f"{site.url}/models/{site.model}/{site.version}/{path}",
                     "expires_at": "2099-01-01T00:00:00Z",
                     "stable_url": f"{site.url}/models/{site.model}/{site.version}/{path}"}
                    for path, body in site.files.items()
                ]  # fmt: skip
                body = {"model": site.model, "version": site.version, "status": "published", "prerelease": False,
                        "published_at": "2026-01-01T00:00:00Z", "notes": "", "yanked_reason": "", "files": files}  # fmt: skip
                self._send(seen, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

            def _file(self, seen: Seen, path: str):
                body = site.files[path]
                facts = {"X-Artifact-Size": str(len(body)), "X-Artifact-SHA256": hashlib.sha256(body).hexdigest(),
                         "X-Artifact-Version": site.version, "Content-Type": "application/octet-stream"}  # fmt: skip
                if self.command == "HEAD":
                    return self._send(seen, 200, body, facts)
                if site.on_get:
                    site.on_get(path)
                if site.body == "redirect":
                    return self._send(seen, 302, b"", {"Location": site.location})
                if site.body == "endless":
                    return self._stream(seen, iter(lambda: b"x" * 65536, None))
                if site.body == "longer":
                    return self._stream(seen, [body, b"y" * site.extra])
                start = 0
                if seen.range and site.body != "ignore range":
                    start = int(seen.range.split("=", 1)[1].split("-", 1)[0])
                if start:
                    headers = {**facts, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                    return self._send(seen, 206, body[start:], headers)
                self._send(seen, 200, body, facts)

        return Handler
