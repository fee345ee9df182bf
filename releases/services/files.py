"""Files of a draft: added, registered, removed. Bytes go to storage first, outside any
transaction; a short transaction then records them under the draft's row lock. Objects that
no file row owns after a failure are deleted again."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import contextmanager
from typing import BinaryIO

from django.db import IntegrityError, transaction

from ..models import (
    BrowserUpload,
    File,
    Version,
    canonical_path,
    default_object_key,
    validate_object_key,
    validate_relative_path,
)
from ..storage import Progress, StorageError, guess_content_type, release_store
from . import chunks
from .common import ReleaseError, as_release_error, locked, record_change, version_lock

logger = logging.getLogger(__name__)


def delete_draft(version: Version) -> None:
    """Remove a draft with its file rows, the objects the site uploaded for it, and the chunk
    manifests of its files that no other file shares."""
    with version_lock(version), transaction.atomic():
        version = locked(version)
        if not version.is_draft:
            raise ReleaseError(
                f"{version.model.slug} {version.version} is {version.status}; only drafts can be deleted."
            )
        keys = list(version.files.filter(managed_object=True).values_list("key", flat=True))
        contents = list(version.files.values_list("sha256", flat=True))
        unfinished = list(
            version.browser_uploads.filter(state__in=BrowserUpload.State.active()).values_list(
                "key", "storage_upload_id"
            )
        )
        # Nothing public showed a draft, but whatever a cache kept of it goes too (recorded while its
        # file rows still say where a CDN may keep its objects).
        record_change(version.model.slug, version)
        version.delete()
    # Uploads being checked may have joined their object already: it goes with the draft's.
    delete_objects(keys + [key for key, _ in unfinished])
    chunks.delete_unused_manifests(contents)  # the chunk manifests no other file shares
    abort_storage_uploads(unfinished)


def abort_storage_uploads(uploads: Iterable[tuple[str, str]]) -> None:
    """Drop the parts of unfinished uploads whose rows are gone (the stale-upload job would, later)."""
    store = release_store()
    for key, upload_id in uploads:
        try:
            store.abort_parts_upload(key, upload_id)
        except StorageError:
            logger.warning("could not abort the upload of %s; the abort-stale-uploads job will", key)


def locked_draft(version: Version) -> Version:
    """The draft's row, locked for a short transaction that records files (never around an upload:
    the version's lock, held by the caller, is what keeps publishing waiting meanwhile)."""
    return draft_only(locked(version))


def draft_only(version: Version) -> Version:
    if not version.is_draft:
        raise ReleaseError(
            f"{version.model.slug} {version.version} is {version.status}; files can only be added to a draft."
        )
    return version


def current_draft(version: Version) -> Version:
    return draft_only(Version.objects.select_related("model").get(pk=version.pk))


def check_file_names(model_slug: str, path: str, key: str) -> None:
    """The one check of a new file's path and object key (the form checks, the database does not)."""
    with as_release_error():
        validate_relative_path(path)
        validate_object_key(key, model_slug)


def check_unused(version: Version, path: str, key: str, *, by_upload=None, resuming: bool = False) -> None:
    """Neither the path nor the key is taken yet, by a file or by an admin upload in progress (the
    unique constraints back this under a race). ``by_upload`` is the upload asking; ``resuming``
    lets unfinished uploads of the key through (starting an upload resumes or replaces them)."""
    if version.files.filter(path=path).exists():
        raise ReleaseError(f"{version.model.slug} {version.version} already has a file {path}.")
    if File.objects.filter(key=key).exists():
        raise ReleaseError(f"Object key {key} already belongs to another file.")
    uploads = BrowserUpload.objects.filter(key=key, state__in=BrowserUpload.State.active())
    if by_upload is not None:
        uploads = uploads.exclude(pk=by_upload.pk)
    if resuming:
        uploads = uploads.exclude(state=BrowserUpload.State.UPLOADING)
    if (upload := uploads.first()) is not None:
        raise ReleaseError(
            f"{path} is being uploaded from the admin ({upload.get_state_display()}); "
            "let that upload finish, or abort it on the version's upload page."
        )


@contextmanager
def removing_uploads_on_failure():
    """Collect the keys uploaded inside the block; if it fails, delete those no file row owns.

    Enter it *outside* any transaction, so that rows rolled back no longer own anything.
    """
    uploaded: list[str] = []
    try:
        yield uploaded
    except BaseException:
        owned = set(File.objects.filter(key__in=uploaded).values_list("key", flat=True))
        delete_objects(key for key in uploaded if key not in owned)
        raise


def upload(key: str, fileobj: BinaryIO, content_type: str, progress, uploaded: list[str], *, jobs=None, observe=None):
    uploaded.append(key)
    with as_release_error():
        store = release_store()
        return store.upload(key, fileobj, content_type=content_type, progress=progress, jobs=jobs, observe=observe)


def create_file_row(version: Version, **fields) -> File:
    """Record a file whose names check_file_names accepted and whose size and SHA-256 storage gave."""
    try:
        with transaction.atomic():
            return File.objects.create(version=version, **fields)
    except IntegrityError as error:
        if "unique_path_per_version" in str(error):
            raise ReleaseError(
                f"{version.model.slug} {version.version} already has a file {fields['path']}."
            ) from error
        raise ReleaseError(f"Could not record {fields['path']}: {error}") from error


def add_file(
    version: Version,
    path: str,
    fileobj: BinaryIO,
    *,
    content_type: str | None = None,
    progress: Progress | None = None,
) -> File:
    """Upload ``fileobj`` as ``path`` of a draft version, recording its size and SHA-256."""
    path = canonical_path(path)
    content_type = content_type or guess_content_type(path)
    with version_lock(version), removing_uploads_on_failure() as uploaded:
        draft = current_draft(version)
        key = default_object_key(draft.model.slug, draft.version, path)
        check_file_names(draft.model.slug, path, key)
        check_unused(draft, path, key)
        builder = chunks.manifest_builder(_size_of(fileobj))  # built from the bytes sent: none read back
        stored = upload(key, fileobj, content_type, progress, uploaded, observe=builder.update if builder else None)
        chunks_size = chunks.store_built_manifest(builder, stored.sha256, stored.size)
        try:
            with transaction.atomic():
                return create_file_row(
                    locked_draft(draft),
                    path=path,
                    key=key,
                    size=stored.size,
                    sha256=stored.sha256,
                    content_type=content_type,
                    chunks_size=chunks_size,
                )
        except BaseException:
            chunks.delete_unused_manifests([stored.sha256])
            raise


def _size_of(fileobj: BinaryIO) -> int:
    """The bytes left in a seekable file from where it stands."""
    start = fileobj.tell()
    size = fileobj.seek(0, 2) - start
    fileobj.seek(start)
    return size


def register_object(version: Version, path: str, key: str | None = None) -> File:
    """Attach an object already in storage; size and checksum come from storage."""
    path = canonical_path(path)
    with version_lock(version):
        draft = current_draft(version)
        key = key or default_object_key(draft.model.slug, draft.version, path)
        check_file_names(draft.model.slug, path, key)
        check_unused(draft, path, key)
        size, sha256, content_type = _read_back(key, path)
        with transaction.atomic():
            return create_file_row(
                locked_draft(draft),
                path=path,
                key=key,
                size=size,
                sha256=sha256,
                content_type=content_type,
                managed_object=False,
            )


def _read_back(key: str, path: str) -> tuple[int, str, str]:
    """Size, SHA-256 and content type of an object in storage (hashing it when storage keeps no checksum)."""
    store = release_store()
    with as_release_error():
        stored = store.stat(key)
        if stored is None:
            raise ReleaseError(f"There is no object {key} in storage to register as {path}.")
        sha256 = stored.sha256
        if sha256 is None:  # storage keeps no full-object SHA-256: hash it by streaming
            sha256, size = store.compute_sha256(key)
            if size != stored.size:
                raise ReleaseError(f"Object {key} changed while it was being hashed; try again.")
    return stored.size, sha256, stored.content_type or guess_content_type(path)


def remove_file(file: File) -> None:
    """Remove a file from a draft (and its object, when the site uploaded it)."""
    with version_lock(file.version), transaction.atomic():
        version = locked(file.version)
        if not version.is_draft:
            raise ReleaseError(
                f"{file.path} belongs to {version.status} version {version.version}; it cannot be removed."
            )
        key, managed = file.key, file.managed_object
        File.objects.filter(pk=file.pk).delete()
    if managed:
        delete_objects([key])
    chunks.delete_unused_manifests([file.sha256])


def delete_objects(keys: Iterable[str]) -> None:
    store = release_store()
    for key in keys:
        try:
            store.delete(key)
        except StorageError:
            logger.warning("could not delete object %s; it is orphaned and safe to remove by hand", key)
