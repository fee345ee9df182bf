"""Celery tasks for chunk manifests (services/chunks.py). Uploads build manifests from the bytes they
send, so these only read back what was not built so: the `backfill-chunk-manifests` beat job (also
queued once by a publish that leaves a large file without a manifest), and `build_chunk_manifest`
for one file (tasks queued before manifests were built while uploading still run).

They live beside tasks.py rather than in it: services record their CDN work through tasks.py
(`drain_after_commit`), so tasks.py cannot call a service without an import cycle. These call one;
settings.CELERY_IMPORTS names this module so that every worker registers them. Like the tasks in
tasks.py they take ids, are idempotent, and a failure waits for the next backfill run.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.dispatch import receiver

from . import verification
from .services.chunks import ReleaseError
from .services.chunks import backfill_chunk_manifests as backfill
from .services.chunks import build_chunk_manifest as build
from .tasks import periodic

logger = logging.getLogger(__name__)


def build_after_commit(file_ids: list[int]) -> None:
    """Once the change that published these files (which lack a manifest) commits, queue one
    backfill run for them: the one path that reads objects back to build manifests.

    Robust like tasks.drain_after_commit: a broker that is down loses nothing, the beat job runs anyway.
    """
    if file_ids:
        transaction.on_commit(lambda: _queue(file_ids), robust=True)


def _queue(missing: list) -> None:
    try:
        backfill_chunk_manifests.delay()
    except Exception as error:  # broker down: nothing is lost, the beat job's next run builds them
        logger.warning("could not queue chunk manifests of %s (%s); the backfill job will build them", missing, error)


@receiver(verification.manifests_missing)
def _rebuild(sender, sha256s, **kwargs):
    """Verification found manifests missing from storage (their rows say so now): rebuild them."""
    transaction.on_commit(lambda: _queue(sha256s), robust=True)


# A 50 GB file takes a few minutes to chunk; the limits stay well under the broker's visibility timeout.
@shared_task(bind=True, acks_late=True, soft_time_limit=30 * 60, time_limit=35 * 60)
def build_chunk_manifest(self, file_id: int):
    """After a publish: the chunk manifest of one file (shared by every file with its bytes)."""
    try:
        outcome = build(file_id)
    except ReleaseError as error:
        logger.warning("chunk manifest of file %s not built (the backfill job will retry): %s", file_id, error)
        return {"file": file_id, "state": "failed"}
    return {"file": file_id, "state": outcome.state}


@shared_task(bind=True, acks_late=True, soft_time_limit=45 * 60, time_limit=50 * 60)
def backfill_chunk_manifests(self):
    """Beat: build up to CHUNK_BACKFILL_BATCH_SIZE missing manifests of published files."""
    return periodic("backfill-chunk-manifests", lambda: backfill(settings.CHUNK_BACKFILL_BATCH_SIZE))
