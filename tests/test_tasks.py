"""Celery for real: a worker process on Redis, varnishd, a broker that is down, a worker that dies."""

import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from releases import observability, tasks
from releases.models import OutboxEntry
from site_config.celery import app

from .servers import REPO_ROOT, CeleryWorker, RedisServer, django_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queued_for_real(settings):
    """Tasks go through the broker (the test Redis) instead of running in-process."""
    import redis

    redis.Redis.from_url(settings.REDIS_URL).delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = True


@pytest.fixture
def start_worker():
    workers = []

    def start(**env) -> CeleryWorker:
        worker = CeleryWorker(django_env(**env))
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def all_done(kind="purge"):
    entries = OutboxEntry.objects.filter(kind=kind)
    return entries.exists() and not entries.exclude(state="done").exists()


def x_cache(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["X-Cache"], response.read()


def test_a_publish_purges_varnish_through_a_real_worker(settings, varnish, publish, queued_for_real, start_worker):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", varnish.url
    worker = start_worker(CDN_BACKEND="varnish", CDN_PURGE_URL=varnish.url, CDN_PURGE_TOKEN=varnish.purge_token)
    token = observability.request_id_var.set("req-publish-v1")  # as if an admin request published it
    try:
        publish("index-tts", "v1", {"model.pt": b"one"})
    finally:
        observability.request_id_var.reset(token)
    wait_until(all_done, 30, what="the worker to drain the outbox")
    wait_until(lambda: "[req-publish-v1]" in worker.log(), 10, what="the request id in the worker's log")
    page = f"{varnish.url}/models/index-tts/latest/"
    x_cache(page)
    assert x_cache(page)[0] == "HIT"

    publish("index-tts", "v2", {"model.pt": b"two"})
    wait_until(all_done, 30, what="the worker to purge after v2")
    state, body = x_cache(page)
    assert state == "MISS" and b'<span class="version">v2</span>' in body
    assert "releases.tasks.process_outbox" in worker.log()


def test_with_the_broker_down_publishing_succeeds_and_the_outbox_drains_later(
    manage, write_file, recording_server, start_worker
):
    broker = RedisServer()  # its port is free: nothing listens yet
    cdn = {"CDN_BACKEND": "varnish", "CDN_PURGE_URL": recording_server.url}
    result = manage(
        "publish_release", "index-tts", "v1", str(write_file("model.pt", b"weights")),
        env={**django_env(REDIS_URL=broker.url, **cdn)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "the beat jobs will drain them" in result.stderr
    assert OutboxEntry.objects.filter(state="pending").count() == 2 and recording_server.requests == []

    broker.start()
    try:
        start_worker(REDIS_URL=broker.url, **cdn)
        beat = subprocess.run(  # what beat does on its next tick
            [sys.executable, "-m", "celery", "-A", "site_config", "call", "releases.tasks.drain_outbox"],
            cwd=REPO_ROOT, env=django_env(REDIS_URL=broker.url, **cdn), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert beat.returncode == 0, beat.stderr
        wait_until(all_done, 30, what="the outbox to drain once the broker is back")
    finally:
        broker.stop()
    assert [set(r.headers["xkey-purge"].split()) for r in recording_server.requests] == [{"models", "model-index-tts"}]


def test_a_worker_killed_mid_task_gets_the_task_again_and_the_work_happens_once(
    publish, recording_server, queued_for_real, start_worker
):
    arrived, release = threading.Event(), threading.Event()

    def first_purge_hangs(request):
        if not arrived.is_set():
            arrived.set()
            release.wait(30)
        return 200, b"{}"

    recording_server.respond = first_purge_hangs
    worker = start_worker(CDN_BACKEND="varnish", CDN_PURGE_URL=recording_server.url, OUTBOX_LEASE_SECONDS=10)
    publish("index-tts", "v1", {"model.pt": b"one"})
    assert arrived.wait(30), worker.log()
    (child,) = worker.pool_children()
    import os

    os.kill(child, signal.SIGKILL)  # the pool process dies mid-purge; the message was not acknowledged
    release.set()
    wait_until(all_done, 60, what="the redelivered task to finish the purge")
    entries = OutboxEntry.objects.all()
    assert all(entry.done_at is not None for entry in entries)
    assert len(recording_server.requests) == 2  # the one cut off, and the one that completed
    assert "signal 9" in worker.log() or "WorkerLostError" in worker.log()


def test_overlapping_periodic_runs_skip(settings):
    with tasks.job_lock("drain-outbox") as held:
        assert held
        assert tasks.drain_outbox.apply().get() == {"skipped": True}
    assert tasks.drain_outbox.apply().get() == {"done": 0, "retried": 0, "failed": 0}


def test_the_beat_schedule_has_its_jobs(settings):
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert {name: entry["task"] for name, entry in schedule.items()} == {
        "verify": "releases.tasks.verify_files",
        "drain-outbox": "releases.tasks.drain_outbox",
        "warm-pending": "releases.tasks.warm_pending",
        "rollup-downloads": "releases.tasks.rollup_downloads",
        "backfill-chunk-manifests": "releases.chunk_tasks.backfill_chunk_manifests",
        "abort-stale-uploads": "releases.upload_tasks.abort_stale_uploads",
        "rollup-run-reports": "releases.report_tasks.rollup_run_reports",
    }
    assert all(name in app.tasks for name in (entry["task"] for entry in schedule.values()))


def test_a_run_that_outlives_its_lock_never_frees_the_next_runs_lock(settings, caplog):
    import redis

    settings.JOB_LOCK_SECONDS = 1
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = "model-releases:job-lock:slow-job"
    with tasks.job_lock("slow-job") as first:
        assert first
        wait_until(lambda: not client.exists(key), 10, what="the first run's lock to expire")
        with tasks.job_lock("slow-job") as second:
            assert second  # the next run takes over
            token = client.get(key)
        client.set(key, token, px=5000)  # (as if the second run were still going)
    assert client.get(key) == token  # the first run's release left it alone
    assert "ran past JOB_LOCK_SECONDS" in caplog.text
    client.delete(key)
