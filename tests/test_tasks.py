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

    client = redis.Redis.from_url(settings.REDIS_URL)
    queues = (settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_HEAVY_QUEUE)
    client.delete(*queues, "model-releases:job-lock:verify")
    app.conf.task_always_eager = False
    yield
    app.conf.task_always_eager = True
    client.delete(*queues, "unacked", "unacked_index")  # what a killed worker left unacknowledged


@pytest.fixture
def stalled_s3():
    """An S3 endpoint whose first request hangs until `release` is set (a hash stuck on storage);
    every later one is a 404. `arrived` is set once the first one is in."""
    from .servers import RecordingServer

    arrived, release = threading.Event(), threading.Event()

    def first_hangs(request):
        if not arrived.is_set():
            arrived.set()
            release.wait(120)
        return 404, b""

    server = RecordingServer(respond=first_hangs)
    server.arrived, server.release = arrived, release
    server.env = {
        "STORAGE_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": "releases",
        "AWS_S3_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    yield server
    release.set()
    server.stop()


@pytest.fixture
def start_worker():
    workers = []

    def start(queues: list[str] | None = None, **env) -> CeleryWorker:
        worker = CeleryWorker(django_env(**env), queues)
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


def test_a_run_that_loses_its_lock_never_frees_the_next_runs_lock(settings, caplog):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    key = "model-releases:job-lock:slow-job"
    with tasks.job_lock("slow-job") as first:
        assert first
        client.delete(key)  # as if it had expired unrenewed (Redis stalled longer than JOB_LOCK_SECONDS)
        with tasks.job_lock("slow-job") as second:
            assert second  # the next run takes over
            token = client.get(key)
        client.set(key, token, px=5000)  # (as if the second run were still going)
    assert client.get(key) == token  # the first run's release left it alone
    assert "job slow-job lost its lock while running" in caplog.text
    client.delete(key)


def test_a_job_lock_is_short_lived_and_renewed_while_the_job_runs(settings):
    import redis

    settings.JOB_LOCK_SECONDS = 1
    client, key = redis.Redis.from_url(settings.REDIS_URL), "model-releases:job-lock:long-job"
    lifetimes = []

    def renewed():
        lifetimes.append(client.pttl(key))
        return len(lifetimes) > 1 and lifetimes[-1] > lifetimes[-2]

    with tasks.job_lock("long-job") as held:
        assert held and 0 < client.pttl(key) <= 1000
        for _ in range(3):  # three renewals: the job runs well past the lock's one-second lifetime
            wait_until(renewed, 10, interval=0.05, what="the lock's lifetime to be renewed")
            lifetimes.clear()
        with tasks.job_lock("long-job") as second:
            assert not second
    assert not client.exists(key)


def test_a_worker_killed_mid_job_frees_the_job_lock_within_its_lifetime(
    publish, stalled_s3, queued_for_real, start_worker, settings
):
    import os

    import redis

    publish("index-tts", "v1", {"model.pt": b"weights"})
    worker = start_worker(JOB_LOCK_SECONDS=10, **stalled_s3.env)
    tasks.verify_files.delay()
    assert stalled_s3.arrived.wait(60), worker.log()  # verify holds its lock, hashing from a stalled store
    lifetime = redis.Redis.from_url(settings.REDIS_URL).pttl("model-releases:job-lock:verify")
    assert 0 < lifetime <= 10_000
    assert tasks.verify_files.apply().get() == {"skipped": True}  # the next run, here, finds it held

    os.killpg(worker.process.pid, signal.SIGKILL)  # the whole worker, at once: nothing releases the lock
    worker.process.wait(10)
    result = wait_until(
        lambda: (run := tasks.verify_files.apply().get()) != {"skipped": True} and run,
        30,
        interval=0.5,
        what="the dead worker's lock to expire",
    )
    assert result["summary"].startswith("Verified 1 file") and result["failed"] == 0


def test_hashing_and_cdn_work_go_to_their_own_queues(settings):
    def queue(name):
        return app.amqp.router.route({}, name)["queue"].name

    heavy, light = settings.CELERY_HEAVY_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE
    assert heavy == light + "-heavy"
    for name in settings.HEAVY_TASKS:
        assert name in app.tasks and queue(name) == heavy
    for name in ("process_outbox", "drain_outbox", "warm_pending", "rollup_downloads"):
        assert queue(f"releases.tasks.{name}") == light
    assert queue("releases.upload_tasks.abort_stale_uploads") == light


def test_a_purge_is_not_stuck_behind_a_long_hash(
    settings, publish, recording_server, stalled_s3, queued_for_real, start_worker
):
    from releases import services

    cdn = {"CDN_BACKEND": "varnish", "CDN_PURGE_URL": recording_server.url}
    light = start_worker(queues=[settings.CELERY_TASK_DEFAULT_QUEUE], **cdn)
    heavy = start_worker(queues=[settings.CELERY_HEAVY_QUEUE], **stalled_s3.env, **cdn)
    version = publish("index-tts", "v1", {"model.pt": b"weights"})
    wait_until(all_done, 30, what="the light worker to purge after the publish")

    tasks.verify_files.delay()
    assert stalled_s3.arrived.wait(60), heavy.log()  # the heavy worker is busy hashing, and stays so
    services.yank_version(version, "Corrupt vocoder.")
    wait_until(all_done, 30, what="the light worker to purge after the yank")
    assert not stalled_s3.release.is_set()
    assert "version-index-tts-v1" in recording_server.requests[-1].headers["xkey-purge"].split()
    assert "releases.tasks.verify_files[" not in light.log() and "releases.tasks.verify_files[" in heavy.log()


def test_the_longest_task_time_limit_is_the_one_settings_compare_with_the_visibility_timeout(settings):
    ours = [task for name, task in app.tasks.items() if name.startswith("releases.")]
    assert max(task.time_limit for task in ours) == settings.LONGEST_TASK_SECONDS
    assert all(task.soft_time_limit < task.time_limit for task in ours)
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] >= settings.LONGEST_TASK_SECONDS


def test_an_upload_check_past_its_soft_time_limit_fails_the_upload_instead_of_waiting_for_the_sweep(monkeypatch):
    """Unit test of upload_tasks: the soft limit's exception, as Celery raises it inside the task."""
    from celery.exceptions import SoftTimeLimitExceeded

    from releases import upload_tasks

    failed = []

    def hashing_too_long(upload_id):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(upload_tasks, "finish_upload", hashing_too_long)
    monkeypatch.setattr(upload_tasks, "out_of_time", lambda pk, seconds: failed.append((pk, seconds)) or FailedUpload)
    assert upload_tasks.finish_upload_task.apply(args=["u-1"]).get() == {"state": "failed"}
    assert failed == [("u-1", 50 * 60)]


class FailedUpload:
    state = "failed"
