"""Two real `celery beat` processes on one Redis: every periodic job is sent once per period, and
no schedule file is written (releases/beat.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from releases.beat import PeriodClaims, PeriodScheduler
from site_config.celery import app

from .servers import REPO_ROOT, CeleryWorker, django_env, stop, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

DECISION = re.compile(r"beat: (\S+): (?:sending the run of period (\d+)|period (\d+) was sent by another scheduler)")


class CeleryBeat:
    """`celery beat` in a subprocess with the site's scheduler, logging to a file of its own."""

    def __init__(self, env: dict):
        self.logfile = tempfile.NamedTemporaryFile("w+", prefix="celery-beat-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "site_config", "beat", "--loglevel", "INFO"],
            cwd=REPO_ROOT, env=env, stdout=self.logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return Path(self.logfile.name).read_text()

    def decisions(self) -> list[tuple[str, int, bool]]:
        """(job, period, sent by this beat) for every period this beat settled."""
        found = []
        for match in DECISION.finditer(self.log()):
            job, sent, seen = match.groups()
            found.append((job, int(sent or seen), sent is not None))
        return found

    def stop(self) -> None:
        stop(self.process)
        os.unlink(self.logfile.name)


@pytest.fixture
def redis_client(settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = lambda: client.keys("model-releases:beat:*")  # noqa: E731
    queues = (settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_HEAVY_QUEUE)
    client.delete(*queues, *keys())
    yield client
    client.delete(*queues, *keys())


@pytest.fixture
def started():
    """Start workers and beats with `started(CeleryWorker(env))`; all are stopped at the end."""
    processes = []

    def start(process):
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


def test_two_beats_send_each_job_once_per_period_and_keep_no_schedule_file(settings, redis_client, tmp_path, started):
    env = django_env(DRAIN_OUTBOX_INTERVAL=2, WARM_INTERVAL=3)
    worker = started(CeleryWorker(env))
    beats = [started(CeleryBeat(env)), started(CeleryBeat(env))]

    def both_settled_three_drain_periods():
        assert all(beat.process.poll() is None for beat in beats), beats[0].log() + beats[1].log()
        settled = [{period for job, period, _ in beat.decisions() if job == "drain-outbox"} for beat in beats]
        return len(settled[0] & settled[1]) >= 3

    wait_until(both_settled_three_drain_periods, 60, interval=0.2, what="both beats to settle three periods")
    for beat in beats:
        stop(beat.process)
    decisions = [decision for beat in beats for decision in beat.decisions()]
    sends = Counter((job, period) for job, period, sent in decisions if sent)
    settled = {(job, period) for job, period, _ in decisions}
    assert settled == set(sends) and set(sends.values()) == {1}  # every period settled was sent exactly once
    jobs = {job for job, _ in sends}
    assert jobs == set(settings.CELERY_BEAT_SCHEDULE)  # the hourly ones too: at once, not an hour after start
    drains = sum(1 for job, _ in sends if job == "drain-outbox")
    received = lambda: len(re.findall(r"Task releases\.tasks\.drain_outbox\[\S+\] received", worker.log()))  # noqa: E731
    wait_until(lambda: received() >= drains, 30, what="the worker to receive every drain-outbox run")
    assert received() == drains
    assert not list(tmp_path.glob("celerybeat-schedule*")) and not list(REPO_ROOT.glob("celerybeat-schedule*"))


def test_a_period_is_claimed_once(redis_client, settings):
    first, second = PeriodClaims(settings.REDIS_URL), PeriodClaims(settings.REDIS_URL)
    assert first.claim("verify", 3600, 7)
    assert not second.claim("verify", 3600, 7) and not first.claim("verify", 3600, 7)
    assert second.claim("verify", 3600, 8)
    assert 0 < redis_client.ttl("model-releases:beat:verify:3600:7") <= 3600  # gone after about a period
    alone = PeriodClaims("")  # the embedded default: one beat, claims in its own memory
    assert alone.claim("verify", 3600, 7) and not alone.claim("verify", 3600, 7)


def test_only_interval_schedules_have_periods():
    from celery.schedules import crontab

    shipped = app.conf.beat_schedule
    app.conf.beat_schedule = {"nightly": {"task": "releases.tasks.verify_files", "schedule": crontab()}}
    try:
        with pytest.raises(ValueError, match="beat job nightly: PeriodScheduler runs interval schedules only"):
            PeriodScheduler(app)
    finally:
        app.conf.beat_schedule = shipped


def test_a_beat_that_cannot_reach_redis_sends_nothing_and_asks_again_soon(caplog, monkeypatch):
    import math
    import time
    from types import SimpleNamespace

    from releases import beat
    from releases.beat import RETRY_SECONDS, interval_of

    from .servers import free_port

    scheduler = PeriodScheduler(app, lazy=True)
    scheduler.merge_inplace(app.conf.beat_schedule)
    scheduler.claims, scheduler.decided = PeriodClaims(f"redis://127.0.0.1:{free_port()}/0"), {}
    # One second into a period of every job: no period ends sooner than the retry (else tick()
    # rightly wakes for that one; intervals are at least 10 s).
    common = math.lcm(*(interval_of(entry) for entry in scheduler.schedule.values()))
    start = (int(time.time()) // common + 1) * common
    monkeypatch.setattr(beat, "time", SimpleNamespace(time=lambda: start + 1.0))
    assert scheduler.tick() == RETRY_SECONDS  # nothing listens there: no period settled, none sent
    assert scheduler.decided == {}
    assert "beat: could not claim verify for period" in caplog.text and "trying again" in caplog.text
