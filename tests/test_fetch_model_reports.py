"""The served Python client's run reports (docs/run-reports.md), run for real: `python
fetch_model.py ...` against gunicorn on the site, through a recording proxy of the test's own that
sees every report POSTed (its body) and can hold a request unanswered. Reports arrive with the
contract's fields for first, later, update, failed, interrupted and offline runs; the opt-outs and
the operator's off switch send nothing; an endpoint that never answers changes no exit code; and the
site's counts (the fold, the rates, /metrics) show what arrived."""

import http.client
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from releases import report_fold, run_stats
from releases.models import Version

from .clients import FILES
from .servers import Gunicorn, django_env, free_port, wait_until
from .test_fetch_model import run, tree
from .test_run_reports import forget_reports

pytestmark = pytest.mark.django_db(transaction=True)

REPORTS_PATH = "/api/v1/reports"
FIELDS = {"model", "requested", "version", "client", "client_version", "outcome", "outcome_name", "run_kind",
          "tries", "fresh_links", "bytes_downloaded", "bytes_reused", "bytes_delta", "duration_ms", "os", "resumed"}  # fmt: skip
METRICS_TOKEN = "metrics-token-of-the-run-report-tests"
KEPT = ".fetch-model.report"


class RecordingProxy:
    """A loopback HTTP proxy in front of the site that passes the Host header on (so the site's
    links, report_url included, point at the proxy), keeps every run report it is sent, and holds
    requests unanswered while told to: `hold` ("reports", "files" or None), released by `release`."""

    def __init__(self, backend: str):
        self.backend, self.reports, self.held, self.hold = backend.split("//")[1], [], [], None
        self.released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path == REPORTS_PATH:
                    proxy.reports.append(json.loads(body))
                if proxy.hold and self.path.startswith(REPORTS_PATH if proxy.hold == "reports" else "/files/"):
                    proxy.held.append(self.path)
                    proxy.released.wait(120)  # never answered while the test runs
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection(proxy.backend, timeout=30)
                headers = {key: value for key, value in self.headers.items() if key.lower() != "connection"}
                upstream.request(self.command, self.path, body or None, headers)
                answer = upstream.getresponse()
                content = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(answer.length if self.command == "HEAD" else len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)
                upstream.close()

            do_GET = do_HEAD = do_POST = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def start_site(publish, settings, tmp_path):
    """start_site(**env): index-tts v1 and v2 published, gunicorn serving them (with `env`), and
    the recording proxy in front; the client as that proxy serves it."""
    publish("index-tts", "v1", {"model.pt": b"old weights"})
    publish("index-tts", "v2", FILES)
    forget_reports()
    started = []

    def start(**env):
        site = Gunicorn(django_env(STORAGE_BACKEND="local", DATA_DIR=settings.DATA_DIR, METRICS_TOKEN=METRICS_TOKEN,
                                   **env))  # fmt: skip
        proxy = RecordingProxy(site.url)
        started.append((site, proxy))
        proxy.script = tmp_path / "tools" / "fetch_model.py"
        proxy.script.parent.mkdir(exist_ok=True)
        with urllib.request.urlopen(f"{proxy.url}/fetch_model.py", timeout=10) as response:
            proxy.script.write_bytes(response.read())
        proxy.site = site
        return proxy

    yield start
    for site, proxy in started:
        proxy.stop()
        site.stop()
    forget_reports()


@pytest.fixture
def site(start_site):
    return start_site()


def fetch(site, *args, env=None, **options):
    return run(site.script, *args, env={"MODEL_SITE": site.url, "FETCH_MODEL_NO_REPORT": "", "DO_NOT_TRACK": "",
                                        **(env or {})}, **options)  # fmt: skip


def only_report(site, before: int) -> dict:
    """The one report that arrived since `before` reports, checked against the contract's shape."""
    assert len(site.reports) == before + 1, site.reports
    report = site.reports[-1]
    assert set(report) == FIELDS and report["client"] == "fetch_model.py" and report["os"] == "linux"
    assert 0 <= report["duration_ms"] < 600_000 and report["client_version"] == "1"
    return report


NOTICE = "fetch-model: this client tells the site how each run ends"


def test_first_later_and_update_runs_report_what_they_did(site, tmp_path):
    first = fetch(site, "index-tts", "v1", tmp_path / "m" / "v1")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(NOTICE) == 1 and "FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1 turns it off" in first.stderr
    report = only_report(site, 0)
    assert report == {**report, "model": "index-tts", "requested": "v1", "version": "v1", "outcome": 0,
                      "outcome_name": "ok", "run_kind": "first", "tries": 1, "fresh_links": 0,
                      "bytes_downloaded": len(b"old weights"), "bytes_reused": 0, "bytes_delta": 0, "resumed": False}  # fmt: skip

    later = fetch(site, "index-tts", "v1", tmp_path / "m" / "v1")
    assert later.returncode == 0 and NOTICE not in later.stderr, later.stderr
    report = only_report(site, 1)
    assert report == {**report, "run_kind": "later", "tries": 0, "bytes_downloaded": 0, "bytes_reused": 11}

    update = fetch(site, "index-tts", "latest", tmp_path / "new", "--from", tmp_path / "m" / "v1")
    assert update.returncode == 0, update.stderr
    report = only_report(site, 2)
    total = sum(len(content) for content in FILES.values())
    assert report == {**report, "requested": "latest", "version": "v2", "run_kind": "update", "outcome": 0,
                      "bytes_downloaded": total, "tries": len(FILES)}  # fmt: skip

    assert report_fold.fold() == 3
    v1, v2 = (Version.objects.get(model__slug="index-tts", version=name) for name in ("v1", "v2"))
    counted = run_stats.summaries("version", [v1.pk, v2.pk], run_stats.timezone.now() - run_stats.DAY)
    assert (counted[v1.pk].runs, counted[v1.pk].first_runs, counted[v1.pk].rate) == (2, 1, 100.0)
    assert (counted[v2.pk].runs, counted[v2.pk].first_runs, counted[v2.pk].rate) == (1, 0, None)


def metrics_text(site) -> str:
    request = urllib.request.Request(f"{site.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_a_corrupt_object_reports_wrong_content_and_the_site_counts_a_failed_first_run(site, tmp_path, local_store):
    local_store.upload(
        "index-tts/v2/model.pt", io.BytesIO(os.urandom(len(FILES["model.pt"]))), content_type="application/octet-stream"
    )
    result = fetch(site, "index-tts", "v2", tmp_path / "v2", env={"FETCH_MODEL_RETRIES": "2"})
    assert result.returncode == 5, result.stderr
    report = only_report(site, 0)
    assert report == {**report, "version": "v2", "outcome": 5, "outcome_name": "wrong_content", "run_kind": "first"}
    assert report["tries"] == 2 + len(FILES) - 1  # model.pt twice, the other files once each
    assert report["fresh_links"] == 1  # after the first SHA-256 mismatch
    assert report["bytes_downloaded"] >= 2 * len(FILES["model.pt"])
    assert ('model_releases_run_reports_total{client="fetch_model.py",model="index-tts",outcome="wrong_content",'
            'version="v2"} 1.0') in metrics_text(site)  # fmt: skip
    assert report_fold.fold() == 1
    v2 = Version.objects.get(model__slug="index-tts", version="v2")
    counted = run_stats.windows("version", v2.pk)["last_24_hours"]
    assert (counted.first_runs, counted.rate, dict(counted.first_failing)) == (1, 0.0, {"wrong_content": 1})


def test_an_offline_start_keeps_its_report_and_the_next_run_that_reaches_the_site_sends_it(site, tmp_path):
    dest = tmp_path / "v2"
    assert fetch(site, "index-tts", "v2", dest).returncode == 0 and len(site.reports) == 1
    down = {"MODEL_SITE": f"http://127.0.0.1:{free_port()}", "FETCH_MODEL_RETRIES": "1"}
    for args, env in (((), down), (("--offline",), {})):
        result = fetch(site, "index-tts", "v2", dest, *args, env=env)
        assert result.returncode == 0, result.stderr
    assert len(site.reports) == 1  # nothing reached the site
    kept = [json.loads(line) for line in (dest / KEPT).read_text().splitlines()]
    assert [(report["run_kind"], report["version"], report["outcome"]) for report in kept] == [("offline", "v2", 0)] * 2
    assert [report["bytes_reused"] for report in kept] == [sum(len(content) for content in FILES.values())] * 2
    assert all(set(report) == FIELDS for report in kept) and tree(dest) == FILES
    with open(dest / KEPT, "a") as lines:  # only a report's fields are ever sent: not these
        lines.write(json.dumps({**kept[0], "hostname": "laptop"}) + "\n")

    online = fetch(site, "index-tts", "v2", dest)
    assert online.returncode == 0, online.stderr
    assert site.reports[1:] == kept + [site.reports[-1]] and site.reports[-1]["run_kind"] == "later"  # in order
    assert not (dest / KEPT).exists() and not list(dest.glob(f"{KEPT}*"))
    again = fetch(site, "index-tts", "v2", dest)  # sent once: not again
    assert again.returncode == 0 and len(site.reports) == 5
    assert report_fold.fold() == 5


def test_a_site_down_first_run_keeps_its_report_only_in_a_folder_that_exists(site, tmp_path):
    down = {"MODEL_SITE": f"http://127.0.0.1:{free_port()}", "FETCH_MODEL_RETRIES": "1"}
    assert fetch(site, "index-tts", "v2", tmp_path / "never", env=down).returncode == 4
    assert not (tmp_path / "never").exists()  # no folder made for a report
    (tmp_path / "made").mkdir()
    for _ in range(12):
        assert fetch(site, "index-tts", "v2", tmp_path / "made", env=down).returncode == 4
    kept = [json.loads(line) for line in (tmp_path / "made" / KEPT).read_text().splitlines()]
    assert len(kept) == 10  # the newest ten, as the shell client keeps
    assert kept[0] == {**kept[0], "version": None, "outcome": 4, "outcome_name": "network", "run_kind": "offline"}
    assert fetch(site, "index-tts", "v2", tmp_path / "made").returncode == 0
    assert [report["outcome"] for report in site.reports] == [4] * 10 + [0]


@pytest.mark.parametrize("opt_out", ["FETCH_MODEL_NO_REPORT", "DO_NOT_TRACK"])
def test_the_opt_outs_send_and_keep_nothing(site, tmp_path, opt_out):
    dest = tmp_path / "v2"
    result = fetch(site, "index-tts", "v2", dest, env={opt_out: "1"})
    assert result.returncode == 0 and NOTICE not in result.stderr, result.stderr
    offline = fetch(site, "index-tts", "v2", dest, "--offline", env={opt_out: "1"})
    assert offline.returncode == 0 and not (dest / KEPT).exists()
    library = f"""
import sys
sys.path.insert(0, {str(site.script.parent)!r})
from fetch_model import ensure_model
ensure_model("index-tts", "v2", {str(tmp_path / "lib")!r}, site={site.url!r}, send_report=False)
"""
    called = subprocess.run([sys.executable, "-c", library], capture_output=True, text=True, timeout=60)
    assert called.returncode == 0 and NOTICE not in called.stderr, called.stderr
    assert site.reports == [] and report_fold.fold() == 0


def test_the_operators_off_switch_sends_nothing(start_site, tmp_path):
    site = start_site(RUN_REPORTS="off")
    result = fetch(site, "index-tts", "v2", tmp_path / "v2")
    assert result.returncode == 0 and NOTICE not in result.stderr, result.stderr
    assert site.reports == [] and report_fold.fold() == 0


def test_the_library_reports_as_the_command_line_does(site, tmp_path):
    library = f"""
import sys
sys.path.insert(0, {str(site.script.parent)!r})
from fetch_model import NotFound, ensure_model
print(ensure_model("index-tts", "latest", {str(tmp_path / "lib")!r}, site={site.url!r}))
"""
    called = subprocess.run([sys.executable, "-c", library], capture_output=True, text=True, timeout=60,
                                          env={**os.environ, "FETCH_MODEL_NO_REPORT": "", "DO_NOT_TRACK": ""})  # fmt: skip
    assert called.returncode == 0 and called.stderr.count(NOTICE) == 1, called.stderr
    report = only_report(site, 0)
    assert report == {**report, "requested": "latest", "version": "v2", "outcome": 0, "run_kind": "first"}


def test_a_report_endpoint_that_never_answers_changes_no_exit_code(site, tmp_path):
    site.hold = "reports"
    ok = fetch(site, "index-tts", "v2", tmp_path / "v2")
    assert ok.returncode == 0, ok.stderr
    failed = fetch(site, "index-tts", "v9", tmp_path / "v9")  # a 404 of a known model: reported too
    assert failed.returncode == 3
    verified = fetch(site, "index-tts", "v2", tmp_path / "v2", env={"FETCH_MODEL_VERIFY": "1"})
    assert verified.returncode == 0
    assert site.held == [REPORTS_PATH] * 3 and len(site.reports) == 3  # all arrived, none was answered


@pytest.mark.parametrize("stop, code, name", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_run_reports_how_it_was_stopped(site, tmp_path, stop, code, name):
    site.hold = "files"
    process = fetch(site, "index-tts", "v2", tmp_path / "v2", wait=False)
    wait_until(lambda: site.held, 60, what="a file request held by the proxy")
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert f"fetch-model: {name}; run again to resume" in stderr
    report = only_report(site, 0)
    assert report == {**report, "version": "v2", "outcome": code, "outcome_name": name, "run_kind": "first"}
    assert not (tmp_path / "v2" / ".fetch-model.lock").exists()


def test_a_folder_of_an_older_version_updated_in_place_is_an_update(site, tmp_path):
    dest = tmp_path / "index-tts"
    assert fetch(site, "index-tts", "v1", dest).returncode == 0
    update = fetch(site, "index-tts", "latest", dest)
    assert update.returncode == 0 and NOTICE not in update.stderr, update.stderr
    report = only_report(site, 1)
    assert report == {**report, "requested": "latest", "version": "v2", "run_kind": "update", "outcome": 0}


def test_help_says_what_a_report_holds_and_how_to_turn_it_off():
    from .test_fetch_model import CLIENT

    result = subprocess.run([sys.executable, str(CLIENT), "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0, result.stderr
    for words in ("report_url the site gives", "never a path, host name or user name", "docs/run-reports.md",
                  "DEST_DIR/.fetch-model.report", "FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1: none at all",
                  "run kind (first, update, later, offline)", "OS family (linux, darwin, windows, other)"):  # fmt: skip
        assert words in text, words


def test_runs_that_end_at_a_withdrawn_or_missing_version_are_reported(site, tmp_path):
    from releases.services import withdraw_version

    withdraw_version(Version.objects.get(model__slug="index-tts", version="v1"), "trained on data we may not share")
    gone = fetch(site, "index-tts", "v1", tmp_path / "v1")
    assert gone.returncode == 3 and "withdrawn" in gone.stderr and gone.stderr.count(NOTICE) == 1, gone.stderr
    report = only_report(site, 0)
    assert report == {**report, "requested": "v1", "version": "v1", "outcome": 3, "outcome_name": "not_found",
                      "run_kind": "first", "tries": 0, "bytes_downloaded": 0}  # fmt: skip
    typo = fetch(site, "index-tts", "v9", tmp_path / "v9")
    assert typo.returncode == 3, typo.stderr
    report = only_report(site, 1)
    assert report == {**report, "requested": "v9", "version": None, "outcome": 3, "run_kind": "first"}
    made_up = fetch(site, "no-such-model", "v1", tmp_path / "nope")
    assert made_up.returncode == 3 and NOTICE not in made_up.stderr, made_up.stderr
    assert len(site.reports) == 2  # the site named no report URL for a model it does not have
    assert report_fold.fold() == 2
    v1 = Version.objects.get(model__slug="index-tts", version="v1")
    counted = run_stats.windows("version", v1.pk)["last_24_hours"]
    assert (counted.first_runs, counted.rate, dict(counted.first_failing)) == (1, 0.0, {"not_found": 1})


def test_the_off_switch_leaves_a_withdrawn_versions_run_unreported(start_site, tmp_path):
    from releases.services import withdraw_version

    withdraw_version(Version.objects.get(model__slug="index-tts", version="v1"))
    site = start_site(RUN_REPORTS="off")
    assert fetch(site, "index-tts", "v1", tmp_path / "v1").returncode == 3
    assert fetch(site, "index-tts", "v9", tmp_path / "v9").returncode == 3
    assert site.reports == []
