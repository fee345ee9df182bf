"""What becomes of an admin upload once the page says all its parts are in (browser_uploads.py).

`finish_upload`, the body of the task queued by completion, joins the parts in storage, checks the
object's size and S3's checksum of the parts, hashes it and builds its chunk manifest in one read
(the local store does both while joining; S3 joins by itself, so its object is read once) and
records it as a file of its draft; or fails the upload: the object is removed, nothing recorded.
Every change of state is conditional on the state it leaves (`move`), so a task delivered twice, an
abort racing a completion, or the beat job never undo one another. Also the `abort-stale-uploads`
job. Kept apart from browser_uploads so that upload_tasks can call it without an import cycle.
"""

from __future__ import annotations

import base64
import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from ..models import BrowserUpload, File
from ..storage import MissingObject, StorageError, StoredObject, StoredPart, release_store
from ..storage.hashing import Composite
from . import chunks
from .common import ReleaseError, as_release_error, version_lock
from .files import check_unused, create_file_row, current_draft, delete_objects, locked_draft

logger = logging.getLogger(__name__)
State = BrowserUpload.State
LOST_TASK_AFTER = timedelta(hours=1)  # longer than the hashing task's time limit


def finish_upload(upload_id) -> BrowserUpload:
    """Join, check, hash and record an upload whose parts the page reported complete. A storage
    error that may pass (a timeout) raises StorageError for the task to retry."""
    upload = BrowserUpload.objects.select_related("version__model").get(pk=upload_id)
    if upload.state != State.HASHING:
        return upload  # recorded already (a task delivered twice), or aborted meanwhile
    builder = chunks.manifest_builder(upload.size)
    try:
        stored = _join(upload, builder)
    except MissingObject:
        return fail_upload(upload, "is missing from storage: neither its parts nor the object are there")
    problem = _size_or_parts_problem(upload, stored)
    if problem:
        return fail_upload(upload, problem)
    sha256 = stored.sha256
    unseen = builder is not None and builder.size != upload.size  # S3 joined the parts by itself
    if sha256 is None or (unseen and chunks.recorded_manifest(sha256) is None):
        # One read of the object for what the join did not give: its SHA-256, its manifest.
        builder = chunks.manifest_builder(upload.size)
        sha256, size = release_store().compute_sha256(upload.key, observe=builder.update if builder else None)
        if size != upload.size:
            return fail_upload(upload, f"has {size:,} bytes in storage, expected {upload.size:,}")
    if upload.expected_sha256 and sha256 != upload.expected_sha256:
        return fail_upload(upload, f"has SHA-256 {sha256}, not the expected {upload.expected_sha256}")
    chunks_size = chunks.store_built_manifest(builder, sha256, upload.size)
    try:
        recorded = _record(upload, sha256)
    except ReleaseError as error:
        return fail_upload(upload, f"could not be recorded: {error}")
    finally:
        chunks.delete_unused_manifests([sha256])  # stored for a row that was not recorded
    if chunks_size is not None:
        chunks.record_manifest(sha256, chunks_size)  # on the row just made (and any other lacking it)
    return recorded


def _join(upload: BrowserUpload, builder) -> StoredObject:
    """Complete the storage upload (a store that reads the parts to join them shows them to the
    builder); if an earlier try completed it already, the object is there."""
    store = release_store()
    try:
        parts = held_parts(upload)
    except MissingObject:
        stored = store.stat(upload.key)
        if stored is None:
            raise
        return stored
    observe = builder.update if builder else None
    return store.complete_parts_upload(upload.key, upload.storage_upload_id, parts, observe=observe)


def held_parts(upload: BrowserUpload) -> list[StoredPart]:
    """The parts storage holds, in order, each with the SHA-256 it was accepted with: listed by
    storage, or the one its URL was signed for (moto lists none)."""
    held = release_store().stored_parts(upload.key, upload.storage_upload_id)
    return [
        StoredPart(n, part.size, part.sha256 or upload.part_checksums.get(str(n)), part.etag)
        for n, part in sorted(held.items())
    ]


def _size_or_parts_problem(upload: BrowserUpload, stored: StoredObject) -> str | None:
    if stored.size != upload.size:
        return f"has {stored.size:,} bytes in storage, expected {upload.size:,}"
    if stored.composite_sha256:
        if stored.parts not in (None, upload.part_count):
            return f"has {stored.parts} parts in storage, expected {upload.part_count}"
        checksums = [base64.b64decode(upload.part_checksums.get(str(n), "")) for n in range(1, upload.part_count + 1)]
        if stored.composite_sha256 != Composite.of("SHA256", checksums).value:
            return "has other part checksums in storage than the parts sent"
    return None


def _record(upload: BrowserUpload, sha256: str) -> BrowserUpload:
    with version_lock(upload.version):
        draft = current_draft(upload.version)
        with transaction.atomic():
            row = BrowserUpload.objects.select_for_update().get(pk=upload.pk)
            if row.state != State.HASHING:
                return row  # another delivery of the task recorded it, or it was aborted
            check_unused(draft, upload.path, upload.key, by_upload=upload)
            file = create_file_row(
                locked_draft(draft), path=upload.path, key=upload.key, size=upload.size, sha256=sha256,
                content_type=upload.content_type, hashed_at=timezone.now(),
            )  # fmt: skip
            move(row, State.HASHING, State.DONE, file=file)
    logger.info("uploaded %s to %s %s from the admin", upload.path, draft.model.slug, draft.version)
    return row


def fail_upload(upload: BrowserUpload, problem: str) -> BrowserUpload:
    """HASHING -> FAILED: the object is removed (unless a file owns it) and the row says why."""
    detail = f"{upload.path} {problem}; it was removed, upload it again."
    if move(upload, State.HASHING, State.FAILED, detail=detail):
        drop_object(upload)
        logger.warning("the upload of %s failed: %s", upload.key, detail)
    return BrowserUpload.objects.get(pk=upload.pk)


def out_of_time(upload_id, seconds: int) -> BrowserUpload:
    """The check ran past its time limit: fail the upload, or the sweep would queue it again every hour."""
    upload = BrowserUpload.objects.get(pk=upload_id)
    return fail_upload(upload, f"could not be checked within {seconds // 60} minutes (the task's time limit)")


def drop_object(upload: BrowserUpload) -> None:
    """Delete what an upload put at its key, never a recorded file's object."""
    if not File.objects.filter(key=upload.key).exists():
        delete_objects([upload.key])


def move(upload: BrowserUpload, leaving: str | list[str], to: str, *, detail: str = "", **fields) -> bool:
    """Change the state if it is still ``leaving`` (one state or several); whether it did."""
    leaving = [leaving] if isinstance(leaving, str) else leaving
    changes = {"state": to, "detail": detail, "updated_at": timezone.now(), **fields}
    moved = BrowserUpload.objects.filter(pk=upload.pk, state__in=leaving).update(**changes)
    if moved:
        for name, value in changes.items():
            setattr(upload, name, value)
    return bool(moved)


def abort_stale_uploads(older_than) -> dict:
    """The beat job: abort the admin's uploads that no part reached for ``older_than``, then every
    other storage upload started longer ago than that (publish_release's); and list the completed
    uploads whose task was lost, to queue again."""
    store, now = release_store(), timezone.now()
    aborted_rows = 0
    for upload in BrowserUpload.objects.filter(state=State.UPLOADING, updated_at__lt=now - older_than):
        if move(upload, State.UPLOADING, State.ABORTED, detail="abandoned: aborted by the abort-stale-uploads job"):
            aborted_rows += 1
            try:
                store.abort_parts_upload(upload.key, upload.storage_upload_id)
            except StorageError as error:  # S3's own age limit catches it on a later run
                logger.warning("could not abort the upload of %s: %s", upload.key, error)
    active = set(BrowserUpload.objects.filter(state=State.UPLOADING).values_list("storage_upload_id", flat=True))
    aborted = store.abort_stale_uploads(older_than, keep=active)  # a long admin upload still in progress stays
    lost = BrowserUpload.objects.filter(state=State.HASHING, updated_at__lt=now - LOST_TASK_AFTER)
    return {
        "aborted": aborted,
        "admin_uploads": aborted_rows,
        "to_hash": [str(pk) for pk in lost.values_list("pk", flat=True)],
    }


def abort(upload: BrowserUpload, why: str) -> BrowserUpload:
    """Stop an upload still sending parts, or one whose check was lost (HASHING for over an hour)."""
    with version_lock(upload.version):
        upload = BrowserUpload.objects.get(pk=upload.pk)
        stale = upload.updated_at < timezone.now() - LOST_TASK_AFTER
        if not (upload.state == State.UPLOADING or (upload.state == State.HASHING and stale)):
            raise ReleaseError(
                f"The upload of {upload.path} is {upload.get_state_display()}; it cannot be aborted now."
            )
        was = upload.state
        move(upload, was, State.ABORTED, detail=why)
        with as_release_error():
            release_store().abort_parts_upload(upload.key, upload.storage_upload_id)
        if was == State.HASHING:
            drop_object(upload)
    return upload


def require_state(upload: BrowserUpload, state: str) -> None:
    if upload.state != state:
        raise ReleaseError(f"The upload of {upload.path} is {upload.get_state_display()}.")
