"""The served Python client against a fake site that misbehaves on purpose: servers that ignore
Range, endless bodies, malformed answers, size lies, odd redirects, outages. The site is a small
threaded http.server on 127.0.0.1 whose answers each test writes."""

import hashlib
import json
import os
import resource
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .test_fetch_model import CLIENT, load_client, run

MIB = 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the test reads `site.log` instead
        pass

    def do_HEAD(self):
        self.answer()

    def do_GET(self):
        self.answer()

    def answer(self):
        site, path = self.server.site, self.path.split("?")[0]
        site.log.append((self.command, path, self.headers.get("Range")))
        route = site.routes.get(path)
        try:
            route(self) if route else self.send(404, b'{"detail": "Not found."}', "application/json")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send(self, status, body=b"", kind="application/octet-stream", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def redirect(self, location):
        self.send(302, headers=[("Location", location), ("X-Artifact-Expires", "2999-01-01T00:00:00Z")])

    def bytes_of(self, data, ranges=True):
        """The file, as a server that honours Range (206) or, with ranges=False, ignores it (200)."""
        asked = self.headers.get("Range")
        if not (ranges and asked):
            return self.send(200, data)
        start, end = (int(n) for n in asked.split("=")[1].split("-"))
        self.send(206, data[start : end + 1], headers=[("Content-Range", f"bytes {start}-{end}/{len(data)}")])

    def endless(self, status=200, kind="application/json", head=b"", extra=()):
        """A chunked body that never ends (until the client hangs up)."""
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        chunk = b"x" * 65536
        if head:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(head), head))
        while True:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))


class FakeSite:
    def __init__(self):
        self.routes, self.log = {}, []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.site = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def listing(self, files, **fields):
        """An API answer for m v1 with these files (path -> bytes), stable URLs that redirect to /blob/."""
        entries = []
        for path, data in files.items():
            entries.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                            "url": f"{self.url}/blob/{path}", "expires_at": "2999-01-01T00:00:00Z",
                            "stable_url": f"{self.url}/models/m/v1/{path}"})  # fmt: skip
            self.routes[f"/models/m/v1/{path}"] = lambda h, p=path: h.redirect(f"/blob/{p}")
            self.routes[f"/blob/{path}"] = lambda h, d=data: h.bytes_of(d)
        answer = {"model": "m", "version": "v1", "status": "published", "yanked_reason": None, "files": entries}
        answer.update(fields)
        self.answer_api(json.dumps(answer).encode())
        return answer

    def answer_api(self, body):
        self.routes["/api/v1/models/m/versions/v1"] = lambda h: h.send(200, body, "application/json")

    def gets(self, prefix):
        return [(method, byte_range) for method, path, byte_range in self.log if path.startswith(prefix)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    fake = FakeSite()
    yield fake
    fake.stop()


def fetch(site, dest, *args, env=None):
    return run(CLIENT, "m", "v1", dest, *args, env={"MODEL_SITE": site.url, "FETCH_MODEL_RETRIES": "2", **(env or {})})


def measured(site, dest, *args):
    """A run and its peak memory (VmHWM, which unlike ru_maxrss does not carry over an exec)."""
    program = (
        "import atexit, runpy, sys\n"
        "hwm = lambda: next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
        "atexit.register(lambda: sys.stderr.write('peak %s\\n' % hwm()))\n"
        f"sys.argv = ['fetch_model.py', 'm', 'v1', {str(dest)!r}, *{list(args)!r}]\n"
        f"runpy.run_path({str(CLIENT)!r}, run_name='__main__')\n"
    )
    from .clients import run_process

    env = {"MODEL_SITE": site.url, "FETCH_MODEL_RETRIES": "2", "FETCH_MODEL_TIMEOUT": "5"}
    result = run_process([sys.executable, "-c", program], env=env)
    return result, int(result.stderr.strip().splitlines()[-1].split()[1]) * 1024


# --- Range ignored ----------------------------------------------------------------------------------


def test_a_server_that_ignores_range_gives_the_whole_file_in_the_first_response(site, tmp_path):
    data = os.urandom(20 * MIB)  # three segments
    site.listing({"weights.bin": data})
    site.routes["/blob/weights.bin"] = lambda h: h.bytes_of(data, ranges=False)
    result = fetch(site, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert site.gets("/blob/") == [("GET", f"bytes=0-{8 * MIB - 1}")]  # that body was the file: used
    assert (tmp_path / "out" / "weights.bin").read_bytes() == data


def test_a_server_that_honours_only_a_range_from_0_gets_one_stream(site, tmp_path):
    data = os.urandom(20 * MIB)
    site.listing({"weights.bin": data})
    site.routes["/blob/weights.bin"] = lambda h: h.bytes_of(
        data, ranges=(h.headers.get("Range") or "").startswith("bytes=0-")
    )
    result = fetch(site, tmp_path / "out", "--connections", "3")
    assert result.returncode == 0, result.stderr
    assert "weights.bin: the server ignores Range; downloading the file in one stream" in result.stderr
    assert site.gets("/blob/")[-1] == ("GET", f"bytes=0-{len(data) - 1}")
    assert (tmp_path / "out" / "weights.bin").read_bytes() == data


def test_a_resumed_download_from_a_server_that_ignores_range_starts_over_in_one_stream(site, tmp_path):
    data = os.urandom(3 * MIB)
    site.listing({"weights.bin": data})
    site.routes["/blob/weights.bin"] = lambda h: h.bytes_of(data, ranges=False)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / ".weights.bin.part").write_bytes(data[:1_000_000])
    result = fetch(site, dest)
    assert result.returncode == 0, result.stderr
    assert "ignores Range" in result.stderr and (dest / "weights.bin").read_bytes() == data


# --- bounded by the published facts -------------------------------------------------------------------


def test_an_endless_api_answer_is_cut_at_its_cap(site, tmp_path):
    site.routes["/api/v1/models/m/versions/v1"] = lambda h: h.endless(head=b'{"files": ["')
    result, peak = measured(site, tmp_path / "out")
    assert result.returncode == 4, result.stderr
    assert "is larger than 16777216 bytes" in result.stderr and not (tmp_path / "out").exists()
    assert peak < 120 * MIB, peak


def test_an_endless_refusal_body_is_not_read_to_its_end(site, tmp_path):
    data = b"weights" * 1000
    site.listing({"w.bin": data})
    site.routes["/blob/w.bin"] = lambda h: h.endless(status=403, kind="text/plain")
    result, peak = measured(site, tmp_path / "out")
    assert result.returncode == 4 and "the link was refused (403, expired?)" in result.stderr, result.stderr
    assert peak < 120 * MIB, peak


def test_a_segment_with_an_endless_tail_is_read_no_further_than_its_bytes(site, tmp_path):
    data = os.urandom(2 * MIB)
    site.listing({"w.bin": data})
    site.routes["/blob/w.bin"] = lambda h: h.endless(
        status=206, kind="application/octet-stream", head=data, extra=[("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")]
    )  # fmt: skip
    result, peak = measured(site, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "w.bin").read_bytes() == data and peak < 120 * MIB


def test_a_manifest_whose_count_overstates_the_file_is_not_read(site, tmp_path):
    import struct

    client = load_client()
    header = struct.pack(">8sIIIQ32sI", b"MRCHUNK1", 16384, 65536, 262144, 4 * MIB, bytes(32), 2**32 - 1)
    site.routes["/chunks"] = lambda h: h.send(200, header + b"\0" * 1000)
    asked = client.Request("w", "v1", tmp_path / "out", [], [])
    run_ = client.Run(site.url, 1, 1, client.Tally(asked, client.Reporter(quiet=True), False, ()))
    with pytest.raises(ValueError, match="count does not fit the file's size"):
        client.read_manifest(run_, f"{site.url}/chunks", 4 * MIB, "0" * 64)


def test_a_size_beyond_the_free_space_exits_6_before_writing(site, tmp_path):
    answer = site.listing({"huge.bin": b"x"})
    answer["files"][0]["size"] = 2**50  # a petabyte: the site lies, or the disk is small
    site.answer_api(json.dumps(answer).encode())
    result = fetch(site, tmp_path / "out")
    assert result.returncode == 6, result.stderr
    [line] = result.stderr.splitlines()[-1:]
    assert line.startswith(f"fetch-model: not enough free space in {tmp_path / 'out'}: ")
    assert "GiB needed (" in line and "GiB to download + margin), " in line and line.endswith(" GiB free")
    assert site.gets("/blob/") == [] and not list((tmp_path / "out").glob(".huge*"))


def test_a_write_the_filesystem_refuses_mid_download_exits_6_and_removes_the_part(site, tmp_path):
    data = os.urandom(3 * MIB)
    site.listing({"w.bin": data})

    def small_files_only():  # the child may write at most 1 MiB per file, as a full disk would stop it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (MIB, MIB))

    import subprocess

    result = subprocess.run([sys.executable, str(CLIENT), "m", "v1", str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=60, preexec_fn=small_files_only,
                            env={**os.environ, "MODEL_SITE": site.url, "FETCH_MODEL_RETRIES": "2"})  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "cannot write" in result.stderr and not list((tmp_path / "out").glob(".w.bin*"))


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://127.0.0.1/x"])
def test_a_redirect_to_another_scheme_is_refused(site, tmp_path, location):
    site.listing({"w.bin": b"weights"})
    site.routes["/models/m/v1/w.bin"] = lambda h: h.redirect(location)
    result = fetch(site, tmp_path / "out")
    assert result.returncode == 4 and "refusing a redirect from http:// to " in result.stderr, result.stderr
    assert not (tmp_path / "out" / "w.bin").exists()


def test_a_redirect_from_https_down_to_http_is_refused():
    client = load_client()
    assert client.redirect_target("https://a/x", "https://b/y") == "https://b/y"
    assert client.redirect_target("http://a/x", "/y?z") == "http://a/y?z"
    with pytest.raises(client.Malformed, match="refusing a redirect from https:// to http://"):
        client.redirect_target("https://a/x", "http://a/y")


# --- malformed answers ----------------------------------------------------------------------------------

GOOD = {"path": "w.bin", "size": 7, "sha256": hashlib.sha256(b"weights").hexdigest(),
        "stable_url": "http://127.0.0.1:9/models/m/v1/w.bin"}  # fmt: skip
MALFORMED = {
    "not JSON": b"<html>hello</html>",
    "a list": b"[]",
    "files not a list": json.dumps({"version": "v1", "files": {"w.bin": 7}}).encode(),
    "no version": json.dumps({"files": [GOOD]}).encode(),
    "a file without a size": json.dumps({"version": "v1", "files": [{**GOOD, "size": None}]}).encode(),
    "a size as text": json.dumps({"version": "v1", "files": [{**GOOD, "size": "7"}]}).encode(),
    "a size as a boolean": json.dumps({"version": "v1", "files": [{**GOOD, "size": True}]}).encode(),
    "a short sha256": json.dumps({"version": "v1", "files": [{**GOOD, "sha256": "abc"}]}).encode(),
    "a path as a number": json.dumps({"version": "v1", "files": [{**GOOD, "path": 7}]}).encode(),
    "a file as a string": json.dumps({"version": "v1", "files": ["w.bin"]}).encode(),
    "a stable_url to file://": json.dumps({"version": "v1", "files": [{**GOOD, "stable_url": "file:///x"}]}).encode(),
    "deep nesting": b"[" * 200_000 + b"]" * 200_000,
}


def test_a_path_with_a_lone_surrogate_exits_5_before_writing_anything(site, tmp_path):
    """JSON can carry "\\ud800", which no file name can hold: refused like any unsafe path."""
    good = {"path": "w.bin", "size": 7, "sha256": hashlib.sha256(b"weights").hexdigest(),
            "stable_url": f"{site.url}/models/m/v1/w.bin"}  # fmt: skip
    site.answer_api(json.dumps({"version": "v1", "files": [good, {**good, "path": "sub/\ud800.bin"}]}).encode())
    result = fetch(site, tmp_path / "out")
    assert result.returncode == 5 and "refusing the unsafe path 'sub/\\ud800.bin'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_answer_exits_4_with_one_line(site, tmp_path, kind):
    site.answer_api(MALFORMED[kind])
    result = fetch(site, tmp_path / "out")
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", MALFORMED)
def test_the_library_raises_a_fetch_error_for_a_malformed_answer(site, tmp_path, kind):
    client = load_client()
    site.answer_api(MALFORMED[kind])
    with pytest.raises(client.FetchError) as raised:
        client.ensure_model("m", "v1", tmp_path / "out", site=site.url, quiet=True, retries=1)
    assert isinstance(raised.value, client.Malformed) and raised.value.exit_code == 4


# --- outages ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_site_answering_errors_is_down_and_a_verified_copy_starts(site, tmp_path, status):
    data = b"weights"
    site.listing({"w.bin": data})
    dest = tmp_path / "out"
    assert fetch(site, dest).returncode == 0
    site.routes["/api/v1/models/m/versions/v1"] = lambda h: h.send(status, b'{"detail": "busy"}', "application/json")
    result = fetch(site, dest, env={"FETCH_MODEL_RETRIES": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"fetch-model: warning: cannot reach {site.url} (HTTP {status}); using m v1 as")
    fresh = fetch(site, tmp_path / "fresh", env={"FETCH_MODEL_RETRIES": "1"})
    assert (
        fresh.returncode == 4 and f"cannot reach {site.url}/api/v1/models/m/versions/v1: HTTP {status}" in fresh.stderr
    )


def test_another_refusal_of_the_api_is_not_an_outage(site, tmp_path):
    site.listing({"w.bin": b"weights"})
    dest = tmp_path / "out"
    assert fetch(site, dest).returncode == 0
    site.routes["/api/v1/models/m/versions/v1"] = lambda h: h.send(403, b"{}", "application/json")
    result = fetch(site, dest)
    assert result.returncode == 4 and "answered HTTP 403" in result.stderr


# --- the segment progress file ------------------------------------------------------------------------------


def test_the_segment_progress_is_saved_by_one_writer_at_a_time_and_never_read_half_written(tmp_path):
    client = load_client()
    state = tmp_path / ".w.bin.part.segments"
    segments = client.Segments(state, 100, "0" * 64, [[0, 0, 50], [50, 50, 100]])
    segments.save()
    failures, broken, done = [], [], threading.Event()

    def writer(index):
        try:
            for step in range(300):
                with segments.lock:
                    segments.ranges[index % 2][1] = segments.ranges[index % 2][0] + step % 50
                segments.save()
        except Exception as error:
            failures.append(error)

    def reader():
        while not done.is_set():
            try:
                json.loads(state.read_text())
            except ValueError:
                broken.append(1)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert failures == [] and broken == []
    assert [path.name for path in Path(tmp_path).iterdir()] == [state.name]  # no temporary left
