"""Celery tasks: thin, idempotent, taking ids; the work lives in outbox.py, verification.py and
download_fold.py.

Outbox rows are drained by a task queued once their change commits (`drain_after_commit`,
the one place that queues it) and by beat jobs for whatever that missed. Retries of CDN work
follow the outbox's own backoff (rows come due again); Celery does not retry on top of it.
Periodic jobs take a lock so that an overlapping run skips; beat (releases/beat.py) sends each
once per period. Queues by kind: settings.CELERY_TASK_ROUTES sends the hashing ones to the heavy queue.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings
from django.db import transaction

from . import download_fold, outbox, verification

logger = logging.getLogger(__name__)

OUTBOX_TASK = dict(bind=True, acks_late=True, max_retries=8, soft_time_limit=600, time_limit=660)


def drain_after_commit(ids: list[int]) -> None:
    """Once the change that recorded these outbox rows commits, queue their draining.

    Robust: a broker that is down loses nothing, the rows wait for the beat jobs.
    """
    if ids:
        transaction.on_commit(lambda: _queue(ids), robust=True)


def _queue(ids: list[int]) -> None:
    try:
        process_outbox.delay(ids)
    except Exception as error:  # broker down: nothing is lost, the rows wait for the beat jobs
        logger.warning("could not queue outbox rows %s (%s); the beat jobs will drain them", ids, error)


_local_job_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


@contextmanager
def job_lock(name: str):
    """Yield True when this run holds the lock for `name`, False when another run does.

    With Redis, redis-py's Lock: taken atomically, released only by its holder's token. It lives
    JOB_LOCK_SECONDS (a minute by default) and a thread renews it every third of that while the job
    runs, so a job whose worker is killed frees it within JOB_LOCK_SECONDS. Without Redis (the
    embedded default, where beat runs the jobs itself), a lock of this process.
    """
    if not settings.REDIS_URL:
        lock = _local_job_locks[name]
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()
        return
    import redis

    lock = redis.Redis.from_url(settings.REDIS_URL).lock(
        f"model-releases:job-lock:{name}", timeout=settings.JOB_LOCK_SECONDS, blocking=False, thread_local=False
    )
    if not lock.acquire():
        yield False
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, name, stop), name=f"job-lock-{name}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        try:
            lock.release()
        except redis.exceptions.LockError:  # expired unrenewed (Redis unreachable, restarted) or taken over
            logger.warning("job %s lost its lock while running; another run may have overlapped it", name)


def _renew(lock, name: str, stop: threading.Event) -> None:
    """Every third of the lock's lifetime, give it its whole lifetime again, until the job ends."""
    import redis

    while not stop.wait(lock.timeout / 3):
        try:
            lock.reacquire()
        except redis.exceptions.LockNotOwnedError:
            logger.warning("job %s lost its lock while running; another run may have overlapped it", name)
            return
        except redis.exceptions.RedisError as error:  # a stall: the next attempt may succeed in time
            logger.warning("job %s could not renew its lock (%s)", name, error)


def periodic(name: str, work):
    """Run a beat job's `work` under its job lock; an overlapping run skips."""
    with job_lock(name) as held:
        if not held:
            logger.info("%s: another run is in progress; skipping", name)
            return {"skipped": True}
        result = work()
        logger.info("%s: %s", name, result)
        return result


@shared_task(**OUTBOX_TASK)
def process_outbox(self, entry_ids: list[int]):
    """Right after the commit that recorded them: purge and warm the given outbox rows."""
    purged = outbox.drain(outbox.Kind.PURGE, ids=entry_ids)
    warmed = outbox.drain(outbox.Kind.WARM, ids=entry_ids)
    wait = outbox.seconds_until_due(entry_ids)
    if wait is not None and not self.request.is_eager:
        # Held by a worker that may have died, or backing off after a failure: come back when due.
        raise self.retry(countdown=wait)
    return {"purge": _as_dict(purged), "warm": _as_dict(warmed)}


@shared_task(**OUTBOX_TASK)
def drain_outbox(self):
    """Beat: purge whatever is pending (also queued after each change)."""
    return periodic("drain-outbox", lambda: _as_dict(outbox.drain(outbox.Kind.PURGE)))


@shared_task(**OUTBOX_TASK)
def warm_pending(self):
    """Beat: fetch newly published files through the CDN."""
    return periodic("warm-pending", lambda: _as_dict(outbox.drain(outbox.Kind.WARM)))


# Under the broker's visibility timeout (settings refuse one below LONGEST_TASK_SECONDS), so a run is
# never redelivered while it is still going; batches and the byte budget keep it short.
@shared_task(bind=True, acks_late=True, soft_time_limit=45 * 60, time_limit=50 * 60)
def verify_files(self):
    """Beat: the rolling verification run."""

    def work():
        report = verification.verify_batch()
        return {"summary": report.summary(), "failed": report.failed}

    return periodic("verify", work)


@shared_task(bind=True, acks_late=True, soft_time_limit=10 * 60, time_limit=11 * 60)
def rollup_downloads(self):
    """Beat: fold the download counters into daily rows."""
    return periodic("rollup-downloads", lambda: {"downloads": download_fold.fold()})


def _as_dict(result: outbox.DrainResult) -> dict:
    return {"done": result.done, "retried": result.retried, "failed": result.failed}
