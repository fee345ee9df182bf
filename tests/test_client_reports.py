"""Run reports from the served shell client (docs/run-reports.md), run for real against gunicorn:
the report of a first run, a later run, a reuse, a failure and an offline start (sent by the next
run that reaches the site), with exactly the contract's fields; the opt-outs and the operator's
off switch send nothing; a report endpoint that never answers costs the run about two seconds and
not its exit code; and what the site then counts (its hourly rows and /metrics).

Between the client and the site stands a small proxy that forwards every request and notes the
POSTs: the site builds its report URL from the Host it is asked on, so the reports come to it."""

import http.client
import http.server
import io
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from releases import report_fold

from .clients import FILES, run_process
from .servers import wait_until
from .test_run_reports import rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_run_reports")]

METRICS_TOKEN = "m" * 32
TOTAL = sum(map(len, FILES.values()))
TRIES = sum(1 for content in FILES.values() if content)  # an empty file needs no download
FIELDS = {
    "model", "requested", "version", "client", "client_version", "outcome", "outcome_name", "run_kind", "tries",
    "fresh_links", "bytes_downloaded", "bytes_reused", "bytes_delta", "duration_ms", "os", "resumed",
}  # fmt: skip
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
NOTICE = "reports how each run ends to the site"


class Proxy:
    """Forwards every request to `upstream` (Host kept), and notes each POST's path, body and the
    site's status; with `hang` set, a POST gets no answer until the proxy stops; with `stall` set, a
    body over 1 MB stops after its first 64 KiB until `unstall` is set (a link that hangs mid-file)."""

    def __init__(self, upstream_port: int):
        self.posts, self.hang, self.released = [], False, threading.Event()
        self.stall, self.unstall = False, threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST":
                    proxy.posts.append({"path": self.path, "body": body, "status": None})
                    if proxy.hang:
                        proxy.released.wait(60)
                        return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                if self.command == "POST":
                    proxy.posts[-1]["status"] = answer.status
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                while chunk := answer.read(65536):
                    self.wfile.write(chunk)
                    if proxy.stall and int(answer.getheader("Content-Length") or 0) > 1_000_000:
                        self.wfile.flush()
                        proxy.unstall.wait(60)
                        break
                upstream.close()

            do_GET = do_HEAD = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reports(self) -> list[dict]:
        return [json.loads(post["body"]) for post in self.posts if post["path"] == "/api/v1/reports"]

    def stop(self):
        self.released.set()
        self.unstall.set()
        self.server.shutdown()
        self.server.server_close()


class Site:
    """gunicorn (the shipped configuration, local storage unless `env` says otherwise) behind a Proxy;
    `down()` stops both."""

    def __init__(self, settings, **env):
        from .servers import Gunicorn, django_env

        self.server = Gunicorn(
            django_env(**{"STORAGE_BACKEND": "local", "DATA_DIR": settings.DATA_DIR, "METRICS_TOKEN": METRICS_TOKEN,
                          "RUN_REPORTS_PER_MINUTE": 1000, **env})
        )  # fmt: skip
        self.proxy = Proxy(self.server.port)
        self.url = self.proxy.url
        self.running = True

    def down(self):
        if self.running:
            self.proxy.stop()
            self.server.stop()
            self.running = False


@pytest.fixture
def published(publish):
    publish("index-tts", "v1", {"model.pt": b"old weights"})
    publish("index-tts", "v2", FILES)


@pytest.fixture
def site(settings, published):
    running = Site(settings)
    yield running
    running.down()


@pytest.fixture
def script(site, tmp_path):
    """The client as the site serves it, saved (so it also runs with the site down)."""
    path = tmp_path / "fetch-model.sh"
    subprocess.run(["curl", "-fsSL", "-o", str(path), f"{site.server.url}/fetch-model.sh"], check=True)
    return path


def run(script, site, *args, env=None):
    environment = {**os.environ, "MODEL_SITE": site.url, **(env or {})}
    for name in ("FETCH_MODEL_NO_REPORT", "DO_NOT_TRACK", "FETCH_MODEL_FROM", "FETCH_MODEL_OFFLINE"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run(["sh", str(script), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=environment)  # fmt: skip


def expected(**changes) -> dict:
    """A report of the shell client as it should arrive; the measured fields are checked apart."""
    report = {
        "model": "index-tts", "requested": "v2", "version": "v2", "client": "fetch-model.sh",
        "client_version": "1", "outcome": 0, "outcome_name": "ok", "run_kind": "first", "tries": TRIES,
        "fresh_links": 0, "bytes_downloaded": sum(map(len, FILES.values())), "bytes_reused": 0,
        "bytes_delta": 0, "os": "linux", "resumed": False,
    }  # fmt: skip
    report.update(changes)
    return report


def without_duration(report: dict) -> dict:
    assert set(report) == FIELDS, report
    assert isinstance(report["duration_ms"], int) and 0 <= report["duration_ms"] < 120_000
    return {key: value for key, value in report.items() if key != "duration_ms"}


def metrics(site) -> str:
    answer = subprocess.run(["curl", "-fsS", "-H", f"Authorization: Bearer {METRICS_TOKEN}", f"{site.server.url}/metrics"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return answer.stdout


def test_a_first_run_then_a_later_run_report_how_they_ended(site, script, tmp_path):
    dest = tmp_path / "v2"
    first = run(script, site, "index-tts", "v2", dest)
    assert first.returncode == 0, first.stderr + site.server.log()
    assert first.stderr.count(NOTICE) == 1 and "FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1" in first.stderr
    later = run(script, site, "index-tts", "v2", dest)
    assert later.returncode == 0 and NOTICE not in later.stderr, later.stderr
    assert [without_duration(report) for report in site.proxy.reports()] == [
        expected(),
        expected(run_kind="later", tries=0, bytes_downloaded=0, bytes_reused=TOTAL),
    ]
    assert [post["status"] for post in site.proxy.posts] == [202, 202]
    assert not (dest / ".fetch-model.report").exists()
    assert report_fold.fold() == 2
    assert rows() == {
        ("v2", "fetch-model.sh", "linux", "first", 0): 1,
        ("v2", "fetch-model.sh", "linux", "later", 0): 1,
    }


def test_a_reuse_from_another_folder_is_an_update(site, script, tmp_path):
    old = tmp_path / "elsewhere"
    assert run(script, site, "index-tts", "v2", old).returncode == 0
    site.proxy.posts.clear()
    result = run(script, site, "index-tts", "latest", tmp_path / "new", env={"FETCH_MODEL_FROM": str(old)})
    assert result.returncode == 0, result.stderr
    [report] = site.proxy.reports()
    assert without_duration(report) == expected(
        requested="latest", run_kind="update", tries=0, bytes_downloaded=0, bytes_reused=TOTAL
    )


def test_a_corrupt_object_is_reported_as_wrong_content_and_counted(site, script, tmp_path, local_store):
    local_store.upload("index-tts/v2/model.pt", io.BytesIO(os.urandom(len(FILES["model.pt"]))),
                       content_type="application/octet-stream")  # fmt: skip
    result = run(script, site, "index-tts", "v2", tmp_path / "v2", env={"FETCH_MODEL_RETRIES": "2"})
    assert result.returncode == 5, result.stderr
    [report] = site.proxy.reports()
    assert without_duration(report) == expected(
        outcome=5, outcome_name="wrong_content", tries=TRIES + 1, fresh_links=1,
        bytes_downloaded=TOTAL + len(FILES["model.pt"]),
    )  # fmt: skip
    assert report_fold.fold() == 1
    assert rows() == {("v2", "fetch-model.sh", "linux", "first", 5): 1}
    assert (
        'model_releases_run_reports_total{client="fetch-model.sh",model="index-tts",outcome="wrong_content",version="v2"} 1.0'
        in metrics(site)
    )


def test_an_offline_start_keeps_its_report_for_the_next_run_that_reaches_the_site(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, site, "index-tts", "v2", dest).returncode == 0
    offline = run(script, site, "index-tts", "v2", dest, env={"FETCH_MODEL_OFFLINE": "1"})
    assert offline.returncode == 0 and len(offline.stderr.splitlines()) == 1, offline.stderr
    missing = run(script, site, "index-tts", "v1", dest, env={"FETCH_MODEL_OFFLINE": "1"})
    assert missing.returncode == 4
    kept = [json.loads(line) for line in (dest / ".fetch-model.report").read_text().splitlines()]
    assert [(report["outcome"], report["run_kind"], report["version"]) for report in kept] == [
        (0, "offline", "v2"), (4, "offline", None)
    ]  # fmt: skip
    assert without_duration(kept[0]) == expected(run_kind="offline", tries=0, bytes_downloaded=0,
                                                 bytes_reused=TOTAL)  # fmt: skip
    assert len(site.proxy.reports()) == 1  # the first run's: nothing sent while offline
    online = run(script, site, "index-tts", "v2", dest)
    assert online.returncode == 0, online.stderr
    assert site.proxy.reports()[1:] == [*kept, site.proxy.reports()[3]]  # oldest first, then its own
    assert site.proxy.reports()[3]["run_kind"] == "later"
    assert not (dest / ".fetch-model.report").exists()
    assert [post["status"] for post in site.proxy.posts] == [202] * 4


def test_a_folder_keeps_at_most_ten_reports(site, script, tmp_path):
    dest = tmp_path / "v2"
    dest.mkdir()
    for _ in range(12):
        assert run(script, site, "index-tts", "v2", dest, env={"FETCH_MODEL_OFFLINE": "1"}).returncode == 4
    assert len((dest / ".fetch-model.report").read_text().splitlines()) == 10
    assert site.proxy.posts == []


def test_the_site_down_keeps_the_report_and_the_next_run_sends_it(settings, published, tmp_path):
    first_site = Site(settings)
    try:
        script = tmp_path / "fetch-model.sh"
        subprocess.run(["curl", "-fsSL", "-o", str(script), f"{first_site.url}/fetch-model.sh"], check=True)
        dest = tmp_path / "v2"
        assert run(script, first_site, "index-tts", "v2", dest).returncode == 0
    finally:
        first_site.down()
    down = run(script, first_site, "index-tts", "v2", dest)
    assert down.returncode == 0 and "cannot reach" in down.stderr
    assert len((dest / ".fetch-model.report").read_text().splitlines()) == 1
    again = Site(settings)
    try:
        assert run(script, again, "index-tts", "v2", dest).returncode == 0
        assert [(report["run_kind"], report["outcome"]) for report in again.proxy.reports()] == [
            ("offline", 0), ("later", 0)
        ]  # fmt: skip
    finally:
        again.down()


@pytest.mark.parametrize("opt_out", [{"FETCH_MODEL_NO_REPORT": "1"}, {"DO_NOT_TRACK": "1"}])
def test_the_opt_outs_send_and_keep_nothing(site, script, tmp_path, opt_out):
    dest = tmp_path / "v2"
    first = run(script, site, "index-tts", "v2", dest, env=opt_out)
    assert first.returncode == 0 and NOTICE not in first.stderr
    assert run(script, site, "index-tts", "v2", dest, env={**opt_out, "FETCH_MODEL_OFFLINE": "1"}).returncode == 0
    assert run(script, site, "index-tts", "v9", dest, env=opt_out).returncode == 3
    assert site.proxy.posts == [] and not (dest / ".fetch-model.report").exists()


def test_the_operators_off_switch_sends_nothing(settings, published, tmp_path):
    off = Site(settings, RUN_REPORTS="off")
    try:
        script = tmp_path / "fetch-model.sh"
        subprocess.run(["curl", "-fsSL", "-o", str(script), f"{off.url}/fetch-model.sh"], check=True)
        first = run(script, off, "index-tts", "v2", tmp_path / "v2")
        assert first.returncode == 0 and NOTICE not in first.stderr
        assert run(script, off, "index-tts", "v2", tmp_path / "v2").returncode == 0
        assert off.proxy.posts == []
        assert "model_releases_run_reports_total{" not in metrics(off)
    finally:
        off.down()


def test_a_report_endpoint_that_never_answers_is_given_up_and_changes_no_exit_code(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, site, "index-tts", "v2", dest).returncode == 0
    site.proxy.hang = True  # every POST from now on waits for the proxy to stop
    started = time.monotonic()
    later = run(script, site, "index-tts", "v2", dest)
    print(f"a later run whose report is never answered: {time.monotonic() - started:.2f} s")
    assert later.returncode == 0, later.stderr
    assert not site.proxy.released.is_set()  # the client gave up on its own: its POST is still waiting
    assert len(site.proxy.posts) == 2 and site.proxy.posts[1]["status"] is None
    nothing = run(script, site, "--include", "*.onnx", "index-tts", "v2", tmp_path / "none")
    assert nothing.returncode == 1, nothing.stderr  # the run's own exit code, whatever the report did
    assert len(site.proxy.posts) == 3 and json.loads(site.proxy.posts[2]["body"])["outcome_name"] == "usage"


@pytest.mark.parametrize("stop, code, name", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_run_reports_its_signal_and_the_next_run_says_it_resumed(site, script, tmp_path, stop, code, name):
    dest = tmp_path / "v2"
    part = dest / ".model.pt.part"
    site.proxy.stall = True
    running = run_process(["sh", str(script), "index-tts", "v2", str(dest)], env={"MODEL_SITE": site.url},
                          wait=False)  # fmt: skip
    try:
        wait_until(lambda: running.poll() is not None or (part.exists() and part.stat().st_size > 0), 60,
                   what="a download under way")  # fmt: skip
        assert running.poll() is None, running.communicate()
    finally:
        os.killpg(running.pid, stop)  # the shell and its curl, as Ctrl-C or a service manager stops them
        running.communicate(timeout=60)
        site.proxy.stall = False
        site.proxy.unstall.set()
    assert running.returncode == code
    [stopped] = site.proxy.reports()
    assert (stopped["outcome"], stopped["outcome_name"], stopped["run_kind"], stopped["version"]) == (
        code, name, "first", "v2"
    )  # fmt: skip
    assert stopped["resumed"] is False and 0 < stopped["bytes_downloaded"] < TOTAL
    resumed = run(script, site, "index-tts", "v2", dest)
    assert resumed.returncode == 0 and "model.pt: resuming at" in resumed.stderr, resumed.stderr
    report = site.proxy.reports()[1]
    # the folder held files of this model already (the stopped run's): not a first run
    assert (report["outcome"], report["resumed"], report["run_kind"]) == (0, True, "later")
    assert report["bytes_downloaded"] + stopped["bytes_downloaded"] == TOTAL  # each byte counted once


def test_runs_that_end_at_a_withdrawn_or_missing_version_are_reported(site, script, tmp_path):
    from releases.models import Version
    from releases.services import withdraw_version

    withdraw_version(Version.objects.get(model__slug="index-tts", version="v1"), "trained on data we may not share")
    gone = run(script, site, "index-tts", "v1", tmp_path / "v1")
    assert gone.returncode == 3 and "withdrawn" in gone.stderr, gone.stderr
    assert gone.stderr.count(NOTICE) == 1  # a first run in this folder says that it reports
    typo = run(script, site, "index-tts", "v9", tmp_path / "v9")
    assert typo.returncode == 3, typo.stderr
    made_up = run(script, site, "no-such-model", "v1", tmp_path / "nope")
    assert made_up.returncode == 3 and NOTICE not in made_up.stderr, made_up.stderr
    not_found = {"outcome": 3, "outcome_name": "not_found", "tries": 0, "bytes_downloaded": 0}
    assert [without_duration(report) for report in site.proxy.reports()] == [
        expected(requested="v1", version="v1", **not_found),
        expected(requested="v9", version=None, **not_found),
    ]  # the made-up model's run sent nothing: the site named no report URL for it
    assert [post["status"] for post in site.proxy.posts] == [202, 202]
    assert report_fold.fold() == 2
    assert rows() == {
        ("v1", "fetch-model.sh", "linux", "first", 3): 1,
        (None, "fetch-model.sh", "linux", "first", 3): 1,
    }


def test_the_off_switch_leaves_a_withdrawn_versions_run_unreported(settings, published, tmp_path):
    from releases.models import Version
    from releases.services import withdraw_version

    withdraw_version(Version.objects.get(model__slug="index-tts", version="v1"))
    off = Site(settings, RUN_REPORTS="off")
    try:
        script = tmp_path / "fetch-model.sh"
        subprocess.run(["curl", "-fsSL", "-o", str(script), f"{off.url}/fetch-model.sh"], check=True)
        assert run(script, off, "index-tts", "v1", tmp_path / "v1").returncode == 3
        assert run(script, off, "index-tts", "v9", tmp_path / "v9").returncode == 3
        assert off.proxy.posts == []
    finally:
        off.down()
