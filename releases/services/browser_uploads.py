"""Large files uploaded from the admin straight to storage, in parts, resumable (models/uploads.py).

1. `start_upload` checks the file's path and key as any new file's, and starts (or finds, for a page
   reloaded half way) an upload in parts for that exact key. A found upload that storage holds
   parts of is the chosen file's only if those parts are its bytes: the page hashes its own parts
   at those numbers and `resume_if_same` keeps the upload, or aborts it and starts another.
2. `sign_part` hands out where one part goes: for S3 a presigned URL that expires after
   UPLOAD_PART_URL_SECONDS and accepts only the bytes whose SHA-256 the browser computed; for the
   local store, the site's own part URL (`receive_part`).
3. `complete_upload` compares the parts storage holds with the file's size and the checksums the
   browser computed, then hands the upload to a task (`upload_outcomes.finish_upload`) that joins
   the parts, checks the object's size and S3's checksum of the parts, hashes it and records the
   file. A version cannot be published while one of its uploads is unfinished. A SHA-256 other
   than the one the uploader gave removes the object and records nothing.

Storage is never asked inside a transaction; rows change in short ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import re

from django.conf import settings
from django.db import transaction

from .. import upload_tasks
from ..models import BrowserUpload, File, Version, canonical_path, default_object_key
from ..storage import PartTarget, StoredPart, guess_content_type, release_store
from .common import ReleaseError, as_release_error, version_lock
from .files import add_file, check_file_names, check_unused, current_draft
from .upload_outcomes import abort, held_parts, move, require_state

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
PART_SIZE = 16 * MiB  # a browser hashes each part in memory; several are in flight at once
MIN_PART, MAX_PARTS = 5 * MiB, 10_000  # S3's limits (every part but the last is at least MIN_PART)
MAX_SIZE = 5 * 1024**4  # S3's largest object
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
State = BrowserUpload.State


def start_upload(version: Version, path: str, size: int, *, expected_sha256: str = "", user=None) -> BrowserUpload:
    """The upload of ``path`` (``size`` bytes) to a draft: the unfinished one with the same path and
    size if there is one (to resume; its stored parts tell whether it is the same file, see
    `resume_if_same`), else a new one. Only an expected SHA-256 other than the one it was begun
    with makes it another file at once; one given now for an upload begun without is kept."""
    path, expected_sha256 = canonical_path(path), _expected(expected_sha256)
    if not 0 < size <= MAX_SIZE:
        raise ReleaseError(f"A file to upload in parts has 1 byte to 5 TiB; {path} has {size}.")
    with version_lock(version):
        draft = current_draft(version)
        key = default_object_key(draft.model.slug, draft.version, path)
        check_file_names(draft.model.slug, path, key)
        check_unused(draft, path, key, resuming=True)
        for upload in draft.browser_uploads.filter(path=path, state=State.UPLOADING):
            if upload.size == size and expected_sha256 in ("", upload.expected_sha256):
                upload.save(update_fields=["updated_at"])  # in use again: not abandoned
                return upload
            if upload.size == size and not upload.expected_sha256:
                upload.expected_sha256 = expected_sha256
                upload.save(update_fields=["expected_sha256", "updated_at"])
                return upload
            abort(upload, "another file was chosen for this path")
        content_type = guess_content_type(path)
        with as_release_error():
            storage_upload_id = release_store().start_parts_upload(key, content_type)
        return BrowserUpload.objects.create(
            version=draft, path=path, key=key, size=size, part_size=part_size_for(size), content_type=content_type,
            expected_sha256=expected_sha256, storage_upload_id=storage_upload_id, started_by=user,
        )  # fmt: skip


def add_empty_file(version: Version, path: str, *, expected_sha256: str = "") -> File:
    """An empty file of a chosen folder (a `.gitkeep`): it has no parts, so it is stored in this one
    request. One the draft holds already, empty, is kept as it is, so that choosing the same folder
    again after a failure refuses nothing."""
    path, expected_sha256 = canonical_path(path), _expected(expected_sha256)
    if expected_sha256 not in ("", EMPTY_SHA256):
        raise ReleaseError(f"{path} is empty; its SHA-256 is {EMPTY_SHA256}, not the {expected_sha256} given.")
    held = version.files.filter(path=path, size=0).first()
    return held if held is not None else add_file(version, path, io.BytesIO(b""))


def part_size_for(size: int) -> int:
    """PART_SIZE, or more for a file that would need over MAX_PARTS parts (whole MiB)."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, MIN_PART, -(-needed // MiB) * MiB)


def _expected(sha256: str) -> str:
    sha256 = sha256.strip().lower()
    if sha256 and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ReleaseError("The expected SHA-256 is 64 hexadecimal digits (as sha256sum prints it).")
    return sha256


def stored_parts(upload: BrowserUpload) -> list[StoredPart]:
    """The parts storage holds with their checksums, so a page can skip the parts it has already sent."""
    require_state(upload, State.UPLOADING)
    with as_release_error():
        return held_parts(upload)


def resume_if_same(upload: BrowserUpload, checksums: dict[int, str], *, expected_sha256: str = "", user=None):
    """The upload to go on with, once the page hashed its chosen file's parts at the numbers storage
    holds (``checksums``, base64 SHA-256 by part number, as storage keeps them): this one when every
    stored part has the chosen file's bytes (the page then sends only the missing parts), else a new
    one, this one aborted: the bytes say another file was chosen for its path."""
    held = {part.number: part for part in stored_parts(upload)}
    unchecked = sorted(held.keys() - checksums.keys())
    if unchecked:
        raise ReleaseError(f"Give the checksum of every stored part of {upload.path}; part {unchecked[0]} has none.")
    differing = sorted(number for number, part in held.items() if part.sha256 != checksums[number])
    if not differing:
        return upload
    abort(upload, f"another file was chosen for this path (its part {differing[0]} has other bytes)")
    return start_upload(upload.version, upload.path, upload.size, expected_sha256=expected_sha256, user=user)


def sign_part(upload: BrowserUpload, number: int, sha256: str) -> PartTarget:
    """Where part ``number`` goes, accepted only with bytes whose base64 SHA-256 is ``sha256``."""
    _check_part(upload, number, sha256)
    with transaction.atomic():
        row = BrowserUpload.objects.select_for_update().get(pk=upload.pk)
        require_state(row, State.UPLOADING)
        row.part_checksums[str(number)] = sha256
        row.save(update_fields=["part_checksums", "updated_at"])
    with as_release_error():
        return release_store().part_target(
            upload.key, upload.storage_upload_id, number, sha256, settings.UPLOAD_PART_URL_SECONDS
        )


def receive_part(upload: BrowserUpload, number: int, read, length: int, sha256: str) -> StoredPart:
    """A part sent to the site itself (the local store): refused unless it is the part's length
    and its bytes have the SHA-256 the part's URL was signed for."""
    require_state(upload, State.UPLOADING)
    _check_part(upload, number, sha256)
    if length != upload.part_length(number):
        raise ReleaseError(f"Part {number} has {upload.part_length(number):,} bytes; {length:,} were sent.")
    with as_release_error():
        return release_store().receive_part(upload.storage_upload_id, number, read, length, sha256)


def _check_part(upload: BrowserUpload, number: int, sha256: str) -> None:
    if not 1 <= number <= upload.part_count:
        raise ReleaseError(f"{upload.path} has parts 1 to {upload.part_count}; there is no part {number}.")
    try:
        valid = len(base64.b64decode(sha256, validate=True)) == 32
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise ReleaseError(f"The checksum of part {number} is not a base64 SHA-256.")


def complete_upload(upload: BrowserUpload, checksums: dict[int, str]) -> BrowserUpload:
    """Once every part storage holds is the part the page hashed (``checksums`` by part number),
    hand the upload to a task that joins, checks, hashes and records it (upload_outcomes)."""
    _check_parts_match(upload, checksums)
    with version_lock(upload.version):
        current_draft(upload.version)
        check_unused(upload.version, upload.path, upload.key, by_upload=upload)
        if not move(upload, State.UPLOADING, State.HASHING):
            require_state(BrowserUpload.objects.get(pk=upload.pk), State.UPLOADING)  # says what it is instead
        upload_tasks.finish_after_commit(upload.pk)
    return BrowserUpload.objects.select_related("file").get(pk=upload.pk)  # finished already if tasks run eagerly


def _check_parts_match(upload: BrowserUpload, checksums: dict[int, str]) -> None:
    """Every part is stored, with its length and the checksum the page computed for it."""
    held = {part.number: part for part in stored_parts(upload)}
    for number in range(1, upload.part_count + 1):
        part, claimed = held.get(number), checksums.get(number)
        if part is None or part.size != upload.part_length(number):
            raise ReleaseError(f"Part {number} of {upload.path} is not stored yet; send it, then complete.")
        if claimed is None or part.sha256 != claimed:
            raise ReleaseError(
                f"Part {number} in storage has other bytes than part {number} of the chosen file; send it again."
            )


def abort_upload(upload: BrowserUpload, why: str = "aborted by a maintainer") -> BrowserUpload:
    """Drop an unfinished upload's parts; the row stays, saying why."""
    return abort(upload, why)


def unfinished_uploads(version: Version) -> list[BrowserUpload]:
    return list(version.browser_uploads.filter(state__in=State.active()).order_by("created_at"))


def part_upload_origin() -> str | None:
    """Where the upload page sends parts when it is not the site itself (its CSP must allow it)."""
    return release_store().part_origin()


def apply_bucket_cors(origins: list[str], *, dry_run: bool = False) -> dict:
    """Set (or, with ``dry_run``, only build) the bucket's CORS rule that lets the admin's pages at
    ``origins`` (scheme://host[:port]) PUT parts to S3; the rule."""
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ReleaseError(f"{origin!r} is not an origin: give scheme://host[:port], with no path.")
    if not origins:
        raise ReleaseError("Name the site's origin (--origin https://models.example.org), or set SITE_URL.")
    store = release_store()
    if store.part_origin() is None:  # parts come to the site itself
        raise ReleaseError(f"The {store.backend_name} store receives parts through the site; it needs no CORS rule.")
    if dry_run:
        return store.cors_rules(origins)
    with as_release_error():
        return store.apply_cors(origins)
