"""The production image, run: every role from one image against real services, and a download
journey through Varnish. Run by `make docker-test` (scripts/docker-test.sh builds the image and
starts the engine); `make test` does not collect it.

The services are the suite's own: the machine's PostgreSQL (a fresh database), a Redis database,
LocalStack's S3 (signatures checked) and varnishd with the shipped VCL. The roles get the
production settings of .env.example, with only addresses, credentials and intervals changed:
DJANGO_ALLOWED_HOSTS keeps models.example.org and adds only `localhost` (the address the
journey uses), so the HEALTHCHECK's 127.0.0.1 is still a host Django would refuse.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import psycopg
import pytest
import yaml

from ..servers import REPO_ROOT, Varnish, free_port, wait_until
from .roles import IMAGE, NO_REDIRECT, QUEUES, Roles, figure, get, http_status, services_env


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request, database_url, redis_url, s3_endpoint):
    """migrate, then web, worker and beat, with varnishd in front of web."""
    web_port, second_web_port = free_port(), free_port()
    cache = Varnish(web_port)
    second_cache = Varnish(second_web_port)  # in front of the second web node (the two-node test's)
    site = f"http://localhost:{cache.port}"
    env = services_env(site, database_url, redis_url, s3_endpoint)
    env.update(
        CDN_BACKEND="varnish",
        CDN_PURGE_URL=f"{cache.url},{second_cache.url}",  # every purge goes to both caches
        CDN_PURGE_TOKEN=cache.purge_token,
        VERIFY_INTERVAL="10",
        DRAIN_OUTBOX_INTERVAL="5",
        OUTBOX_LEASE_SECONDS="10",
    )
    roles = Roles(IMAGE, env, tmp_path_factory.mktemp("roles"))
    roles.site = site
    roles.cache = cache
    roles.second_cache, roles.second_web_port = second_cache, second_web_port
    try:
        roles.run("migrate")
        started = time.monotonic()
        (web,) = roles.start("web", ports=[web_port])
        wait_until(lambda: http_status(f"{site}/") == 200 or not web.state()["Running"], 120, what="the first 200")
        figure(f"docker run (web) to the first 200 through Varnish: {time.monotonic() - started:.1f} s")
        roles.start("worker", "-Q", QUEUES, "--concurrency", "1")
        roles.start("beat")
        yield roles
    finally:
        roles.remove_all(show_logs=bool(request.session.testsfailed))
        cache.stop()
        second_cache.stop()


def container(roles: Roles, name: str):
    return next(c for c in roles.started if c.name == name)


FILES = {"model.pt": os.urandom(3 * 1024 * 1024 + 17), "config/config.yaml": b"sample_rate: 24000\n"}


@pytest.fixture(scope="module")
def published(stack, tmp_path_factory):
    """`publish_release` in a container of its own: a small model from a read-only mount."""
    release = tmp_path_factory.mktemp("release")
    release.chmod(0o755)
    for path, body in FILES.items():
        (release / path).parent.mkdir(parents=True, exist_ok=True)
        (release / path).parent.chmod(0o755)
        (release / path).write_bytes(body)
        (release / path).chmod(0o644)
    output = stack.run(
        "publish_release", "demo-tts", "v1", *(f"/release/{path}" for path in FILES), mounts=(f"{release}:/release:ro",)
    )
    return output


def test_web_runs_as_its_user_on_a_read_only_root_and_passes_its_own_deploy_check(stack):
    web = container(stack, "web-1")
    for host in ("10.0.0.5:8000", "127.0.0.1"):  # probes by address, which ALLOWED_HOSTS does not list
        assert http_status(f"{web.url}/healthz", host=host) == 200
        assert http_status(f"{web.url}/readyz", host=host) == 200
        assert http_status(f"{web.url}/", host=host) == 400
    web.wait_healthy()  # the image's own HEALTHCHECK (it asks 127.0.0.1)
    assert web.exec("id", "-u").stdout.strip() == "10001"
    assert web.exec("touch", "/app/written", check=False).returncode != 0
    check = web.exec("python", "manage.py", "check", "--deploy", "--fail-level", "ERROR", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_worker_and_beat_pass_the_healthchecks_docker_compose_gives_them(stack):
    services = yaml.safe_load((REPO_ROOT / "docker" / "compose.yaml").read_text())["services"]
    worker = container(stack, "worker-1")
    wait_until(lambda: "ready." in worker.logs(), 90, interval=0.5, what="the worker")  # compose: start_period
    for name in ("worker-1", "beat-1"):
        test = services[name.split("-")[0]]["healthcheck"]["test"]
        # As compose runs it: $$ is a literal $; each worker here is named after its container.
        command = (
            ["sh", "-c", test[1].replace("$$", "$").replace("celery@", f"{name}@")]
            if test[0] == "CMD-SHELL"
            else test[1:]
        )
        result = container(stack, name).exec(*command, check=False)
        assert result.returncode == 0, f"{name}: {command}\n{result.stdout}{result.stderr}"


def test_a_release_published_in_a_container_downloads_through_varnish(stack, published):
    # Varnish cached the index before the release (the first 200): the worker's purge clears it.
    release_downloads_through(stack.site, purge_seconds=30)


def release_downloads_through(site: str, purge_seconds: float) -> None:
    """The published release is listed once the index is purged, and each stable URL redirects
    (302, with its SHA-256) to the bytes that were published."""
    wait_until(
        lambda: b"demo-tts" in get(f"{site}/")[2],
        purge_seconds,
        interval=0.5,
        what="the purged index to list the model",
    )
    status, _, body = get(f"{site}/api/v1/models/demo-tts/versions/latest")
    version = json.loads(body)
    assert status == 200 and version["version"] == "v1" and {f["path"] for f in version["files"]} == set(FILES)
    for file in version["files"]:
        assert file["stable_url"] == f"{site}/models/demo-tts/v1/{file['path']}"
        with pytest.raises(urllib.error.HTTPError) as redirect:
            NO_REDIRECT.open(file["stable_url"], timeout=30)
        assert redirect.value.code == 302 and redirect.value.headers["X-Artifact-SHA256"] == file["sha256"]
        assert sha256(get(redirect.value.headers["Location"])[2]) == file["sha256"] == sha256(FILES[file["path"]])


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("client", ["fetch-model.sh", "fetch_model.py"])
def test_both_served_clients_download_and_verify_through_varnish(stack, published, tmp_path, client):
    served_client_downloads(stack.site, client, tmp_path)


def served_client_downloads(site: str, client: str, tmp_path) -> None:
    """The client as `site` serves it, run as a start script would, downloads FILES and verifies them."""
    status, _, source = get(f"{site}/{client}")
    assert status == 200 and site.encode() in source
    dest = tmp_path / "models" / "demo-tts" / "v1"
    command = ["sh", "-s", "--"] if client.endswith(".sh") else [sys.executable, "-"]
    result = subprocess.run(
        [*command, "demo-tts", "latest", str(dest)], input=source, capture_output=True, timeout=120, env=client_env()
    )
    assert result.returncode == 0, result.stderr.decode()
    for path, body in FILES.items():
        assert (dest / path).read_bytes() == body


def client_env() -> dict:
    return {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}


def test_beat_schedules_verification_and_the_outbox_drains(stack, published, database_url):
    def rows(query: str):
        with psycopg.connect(database_url) as connection:
            return connection.execute(query).fetchall()

    wait_until(
        lambda: rows("SELECT verification_status FROM releases_file") == [("ok",), ("ok",)],
        90,
        interval=1,
        what="beat's verify job to mark both files ok",
    )
    wait_until(
        lambda: rows("SELECT state FROM releases_outboxentry WHERE state <> 'done'") == [],
        60,
        interval=1,
        what="the outbox to drain",
    )


def stable_url_status_from(source: str, base_url: str, path: str) -> int:
    """A GET of `path` sent from the loopback address `source` (redirects not followed)."""
    parsed = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Host": "localhost"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_two_web_nodes_see_one_change_at_once_and_count_a_download_once(stack, published):
    """Two web containers on one database and Redis, each behind a varnishd of its own: a yank
    shows on both nodes at once and, purged from both caches, through both."""
    first = container(stack, "web-1")
    (second,) = stack.start("web", ports=[stack.second_web_port])
    second.wait_healthy()
    caches = (stack.site, f"http://localhost:{stack.second_cache.port}")
    api = "/api/v1/models/demo-tts/versions/v1"

    def through(cache: str) -> dict:
        return json.loads(get(f"{cache}{api}")[2])

    assert [through(cache)["status"] for cache in caches] == ["published", "published"]  # now cached by both
    first.exec("python", "manage.py", "release_status", "demo-tts", "v1", "yank", "--reason", "seen on every node")
    for web in (first, second):
        version = json.loads(get(f"{web.url}{api}", Host="localhost")[2])
        assert (version["status"], version["yanked_reason"]) == ("yanked", "seen on every node"), web.name
    for cache in caches:  # cached for s-maxage unless the worker's purge reached this cache too
        wait_until(lambda: through(cache)["status"] == "yanked", 30, interval=0.5, what=f"{cache} to be purged")

    def total(web) -> int:
        web.exec("python", "manage.py", "rollup_downloads")  # each node folds: the count must not double
        return json.loads(get(f"{web.url}/api/v1/models/demo-tts/versions/v1", Host="localhost")[2])["downloads"][
            "total"
        ]

    before = total(first)
    # From a loopback address no earlier test used: the same client and file count once a window.
    assert stable_url_status_from("127.0.0.2", second.url, "/models/demo-tts/v1/model.pt") == 302  # node 2
    assert [total(first), total(second)] == [before + 1, before + 1]


DRAIN_DECISION = re.compile(r"beat: drain-outbox: (?:sending the run of period (\d+)|period (\d+) was sent by another)")


def drain_decisions(beat) -> list[tuple[int, bool]]:
    """(period, sent by this beat) for every drain-outbox period the beat settled (releases/beat.py logs it)."""
    found = DRAIN_DECISION.findall("\n".join(text for _, text in beat.timed_lines()))
    return [(int(sent or seen), bool(sent)) for sent, seen in found]


def test_two_beats_and_two_workers_run_each_periodic_job_once_per_period(stack):
    """A second beat and a second worker container on the same Redis: in every period both beats
    settle, one of them sends drain-outbox (every DRAIN_OUTBOX_INTERVAL s here) and one worker receives it."""
    interval = int(stack.env["DRAIN_OUTBOX_INTERVAL"])
    (second_beat,) = stack.start("beat")
    (second_worker,) = stack.start("worker", "-Q", QUEUES, "--concurrency", "1")
    beats, workers = [container(stack, "beat-1"), second_beat], [container(stack, "worker-1"), second_worker]
    try:
        wait_until(lambda: "ready." in second_worker.logs(), 90, interval=0.5, what="the second worker")

        def settled_by_both() -> list[int]:
            first, second = ({period for period, _ in drain_decisions(beat)} for beat in beats)
            return sorted(first & second)

        started = max(settled_by_both(), default=-1)  # from a period both workers were there for
        wait_until(lambda: len([p for p in settled_by_both() if p > started]) >= 3, 20 * interval, what="3 periods")
        periods = [period for period in settled_by_both() if period > started][:3]
        sends = Counter(period for beat in beats for period, sent in drain_decisions(beat) if sent)
        assert [sends[period] for period in periods] == [1, 1, 1], (periods, sends)

        def received() -> Counter:  # a run is sent as its period starts: it is received within it
            task = re.compile(r"Task releases\.tasks\.drain_outbox\[\S+\] received")
            return Counter(int(at // interval) for w in workers for at, text in w.timed_lines() if task.search(text))

        wait_until(lambda: received()[periods[-1]] >= 1, 30, interval=0.5, what="the last period's run to arrive")
        assert [received()[period] for period in periods] == [1, 1, 1], (periods, received())
    finally:
        stack.remove(second_beat, second_worker)


class HeldPurges(http.server.ThreadingHTTPServer):
    """A cache whose PURGE answers only once released: a purge task stays in progress meanwhile."""

    def __init__(self):
        self.released = threading.Event()
        self.purges: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PURGE(handler):  # noqa: N802 - the HTTP method's name
                self.purges.append(handler.headers.get("xkey-purge", ""))
                self.released.wait(60)
                handler.send_response(200)
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_each_role_stops_within_docker_stops_grace_and_a_task_in_progress_is_not_lost(stack, published, database_url):
    for running in sorted(stack.started, key=lambda c: c.role != "beat"):  # then only workers drain the outbox
        seconds, code = running.stop()
        figure(f"docker stop {running.name}: {seconds:.1f} s (exit {code})")
        assert code != 137, f"{running.name} was killed after the grace period:\n{running.logs()}"
    held = HeldPurges()
    try:
        purger = {"CDN_PURGE_URL": f"http://127.0.0.1:{held.server_address[1]}"}
        (first,) = stack.start("worker", "-Q", QUEUES, "--concurrency", "1", env=purger)
        wait_until(lambda: "ready." in first.logs(), 60, what="the worker")
        stack.run("release_status", "demo-tts", "v1", "unyank", env=purger)
        wait_until(lambda: held.purges, 60, what="a purge in progress")
        seconds, code = first.stop()
        figure(f"docker stop of a worker with a task in progress: {seconds:.1f} s (exit {code})")
        assert code != 137, first.logs()
        held.released.set()
        stack.start("worker", "-Q", QUEUES, "--concurrency", "1", env=purger)  # no beat runs now

        def pending():
            with psycopg.connect(database_url) as connection:
                return connection.execute("SELECT count(*) FROM releases_outboxentry WHERE state <> 'done'").fetchone()

        wait_until(lambda: pending() == (0,), 60, interval=0.5, what="the redelivered purge to finish")
        assert len(held.purges) >= 2 and held.purges[-1] == held.purges[0]
    finally:
        held.released.set()
        held.shutdown()
