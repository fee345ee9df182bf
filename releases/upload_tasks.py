"""Celery tasks for the admin's direct uploads (services/browser_uploads.py): hashing an uploaded
S3 object before it is recorded, and the `abort-stale-uploads` beat job.

Like chunk_tasks.py they sit beside tasks.py because they call services (which queue through
tasks.py); settings.CELERY_IMPORTS names this module. They take ids and are idempotent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction

from .services.upload_outcomes import abort_stale_uploads as abort_stale
from .services.upload_outcomes import finish_upload, out_of_time
from .storage import StorageError
from .tasks import periodic

logger = logging.getLogger(__name__)


def finish_after_commit(upload_id) -> None:
    """Once the completed upload's row commits, queue the task that joins, hashes and records it.

    A broker that is down leaves the upload "checking its SHA-256"; the abort job's sweep queues
    it again (see `abort_stale_uploads`).
    """
    transaction.on_commit(lambda: _queue(upload_id), robust=True)


def _queue(upload_id) -> None:
    try:
        finish_upload_task.delay(str(upload_id))
    except Exception as error:
        logger.warning("could not queue the check of upload %s (%s); the next sweep will", upload_id, error)


# A 50 GB object hashes in well under an hour at the rates `make bench` shows for verify. The hard limit
# is settings.LONGEST_TASK_SECONDS (the broker's visibility timeout may not be shorter). An object that
# takes longer than the soft limit fails the upload: left "checking", the sweep would queue it again
# every hour, forever.
@shared_task(
    bind=True,
    acks_late=True,
    max_retries=5,
    soft_time_limit=50 * 60,
    time_limit=55 * 60,
    name="releases.upload_tasks.finish_upload",
)
def finish_upload_task(self, upload_id: str):
    """Join, check and hash an uploaded object, then record it as a file (or fail the upload)."""
    try:
        upload = finish_upload(upload_id)
    except ObjectDoesNotExist:  # the draft was deleted meanwhile, and its uploads with it
        return {"state": "gone"}
    except StorageError as error:
        raise self.retry(exc=error, countdown=60) from error
    except SoftTimeLimitExceeded:
        upload = out_of_time(upload_id, self.soft_time_limit)
    return {"state": upload.state}


@shared_task(bind=True, acks_late=True, soft_time_limit=10 * 60, time_limit=11 * 60)
def abort_stale_uploads(self):
    """Beat: abort uploads left unfinished longer than STALE_UPLOAD_HOURS; queue hashing that was lost."""

    def work():
        outcome = abort_stale(timedelta(hours=settings.STALE_UPLOAD_HOURS))
        for upload_id in outcome.pop("to_hash"):
            _queue(upload_id)
        return outcome

    return periodic("abort-stale-uploads", work)
