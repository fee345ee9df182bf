"""Celery tasks: thin, idempotent, taking ids; the work lives in outbox.py and verification.py.

Periodic jobs take a lock in the cache (Redis) so that an overlapping run skips.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from . import outbox, verification

logger = logging.getLogger(__name__)

RETRYING = dict(
    bind=True,
    acks_late=True,
    autoretry_for=(Exception,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
    soft_time_limit=600,
    time_limit=660,
)


@contextmanager
def job_lock(name: str):
    """Yield True when this run holds the lock for `name`, False when another run does."""
    key, token = f"job-lock:{name}", uuid.uuid4().hex
    held = cache.add(key, token, timeout=settings.JOB_LOCK_SECONDS)
    try:
        yield held
    finally:
        if held and cache.get(key) == token:
            cache.delete(key)


def _periodic(name: str, work):
    with job_lock(name) as held:
        if not held:
            logger.info("%s: another run is in progress; skipping", name)
            return {"skipped": True}
        result = work()
        logger.info("%s: %s", name, result)
        return result


@shared_task(**RETRYING)
def process_outbox(self, entry_ids: list[int]):
    """Right after the commit that recorded them: purge and warm the given outbox rows."""
    purged = outbox.drain(outbox.Kind.PURGE, ids=entry_ids)
    warmed = outbox.drain(outbox.Kind.WARM, ids=entry_ids)
    wait = outbox.seconds_until_due(entry_ids)
    if wait is not None and not self.request.is_eager:
        # Held by a worker that may have died, or backing off after a failure: come back when due.
        raise self.retry(countdown=wait)
    return {"purge": _as_dict(purged), "warm": _as_dict(warmed)}


@shared_task(**RETRYING)
def drain_outbox(self):
    """Beat: purge whatever is pending (also queued after each change)."""
    return _periodic("drain-outbox", lambda: _as_dict(outbox.drain(outbox.Kind.PURGE)))


@shared_task(**RETRYING)
def warm_pending(self):
    """Beat: fetch newly published files through the CDN."""
    return _periodic("warm-pending", lambda: _as_dict(outbox.drain(outbox.Kind.WARM)))


# Well under JOB_LOCK_SECONDS and the broker's visibility timeout (both an hour by default), so a
# run is never redelivered, or overlapped, while it is still going; batches and the byte budget keep it short.
@shared_task(bind=True, acks_late=True, soft_time_limit=45 * 60, time_limit=50 * 60)
def verify_files(self):
    """Beat: the rolling verification run."""

    def work():
        report = verification.verify_batch()
        return {"summary": report.summary(), "failed": report.failed}

    return _periodic("verify", work)


def _as_dict(result: outbox.DrainResult) -> dict:
    return {"done": result.done, "retried": result.retried, "failed": result.failed}
