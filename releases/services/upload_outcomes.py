"""What becomes of an admin upload once its bytes are in storage (services/browser_uploads.py):
recorded as a file of its draft once its SHA-256 is known (`finish_upload`, also the body of the
task that hashes S3 objects), or failed with the object removed and nothing recorded; and the beat
job that aborts abandoned uploads. Kept apart from browser_uploads so that upload_tasks can call it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from ..models import BrowserUpload
from ..storage import StorageError, release_store
from .common import ReleaseError, version_lock
from .files import check_unused, create_file_row, current_draft, delete_objects, locked_draft

logger = logging.getLogger(__name__)
State = BrowserUpload.State


def finish_upload(upload_id, sha256: str | None = None) -> BrowserUpload:
    """Record the uploaded object as a file of its draft, hashing it first unless ``sha256`` is
    known; a SHA-256 other than the expected one removes the object and records nothing."""
    upload = BrowserUpload.objects.select_related("version__model").get(pk=upload_id)
    if upload.state != State.HASHING:
        return upload  # done already (a task delivered twice), or aborted meanwhile
    if sha256 is None:
        try:
            sha256, size = release_store().compute_sha256(upload.key)
        except StorageError as error:
            logger.warning("could not hash the uploaded %s (%s); the next try will", upload.key, error)
            raise
        if size != upload.size:
            return fail_upload(upload, f"has {size:,} bytes in storage, expected {upload.size:,}")
    if upload.expected_sha256 and sha256 != upload.expected_sha256:
        return fail_upload(upload, f"has SHA-256 {sha256}, not the expected {upload.expected_sha256}")
    try:
        return _record(upload, sha256)
    except ReleaseError as error:
        return fail_upload(upload, f"could not be recorded: {error}")


def _record(upload: BrowserUpload, sha256: str) -> BrowserUpload:
    with version_lock(upload.version):
        draft = current_draft(upload.version)
        check_unused(draft, upload.path, upload.key)
        with transaction.atomic():
            upload = current_upload(upload, State.HASHING)
            file = create_file_row(
                locked_draft(draft), path=upload.path, key=upload.key, size=upload.size, sha256=sha256,
                content_type=upload.content_type, hashed_at=timezone.now(),
            )  # fmt: skip
            upload.file = file
            set_state(upload, State.DONE, fields=["file"])
    logger.info("uploaded %s to %s %s from the admin", upload.path, draft.model.slug, draft.version)
    return upload


def fail_upload(upload: BrowserUpload, problem: str) -> BrowserUpload:
    """The object is removed and nothing is recorded; the row says why."""
    delete_objects([upload.key])
    set_state(upload, State.FAILED, detail=f"{upload.path} {problem}; it was removed, upload it again.")
    logger.warning("the upload of %s failed: %s", upload.key, upload.detail)
    return upload


def abort_stale_uploads(older_than) -> dict:
    """The beat job: abort the admin's uploads that no part reached for ``older_than``, then every
    storage upload started longer ago than that (publish_release's too); and list the completed
    uploads whose hashing task was lost (none ran for an hour: its time limit is less)."""
    store, now = release_store(), timezone.now()
    stale = BrowserUpload.objects.filter(state=State.UPLOADING, updated_at__lt=now - older_than)
    for upload in stale:
        store.abort_parts_upload(upload.key, upload.storage_upload_id)
        set_state(upload, State.ABORTED, detail="abandoned: aborted by the abort-stale-uploads job")
    aborted = store.abort_stale_uploads(older_than)
    lost = BrowserUpload.objects.filter(state=State.HASHING, updated_at__lt=now - timedelta(hours=1))
    return {
        "aborted": aborted,
        "admin_uploads": len(stale),
        "to_hash": [str(pk) for pk in lost.values_list("pk", flat=True)],
    }


def require_state(upload: BrowserUpload, state: str) -> None:
    if upload.state != state:
        raise ReleaseError(f"The upload of {upload.path} is {upload.get_state_display()}.")


def current_upload(upload: BrowserUpload, state: str) -> BrowserUpload:
    upload = BrowserUpload.objects.select_related("version__model").get(pk=upload.pk)
    require_state(upload, state)
    return upload


def set_state(upload: BrowserUpload, state: str, *, detail: str = "", fields: list[str] = ()) -> None:
    upload.state, upload.detail = state, detail
    upload.save(update_fields=["state", "detail", "updated_at", *fields])
