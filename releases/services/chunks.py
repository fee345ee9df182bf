"""Chunk manifests of files (releases.chunking), for clients that update a file they hold an older
version of by fetching only the chunks that changed.

A manifest describes content, so it is built once per SHA-256 and shared by every file with those
bytes: the object `.chunks/<sha256>` in the release storage, recorded as `File.chunks_size` on each
of them. Building reads the object (the local file itself, or a temporary copy of an S3 object) and
uploads the manifest outside any transaction; a short transaction then records it and the CDN
purges of each affected version, whose API response now has a `chunks_url`.

Publishing queues a build per large file (releases.chunk_tasks); the `backfill-chunk-manifests`
beat job and `manage.py build_chunk_manifests` build whatever is still missing.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Max, Q

from .. import chunking
from ..models import File, Version
from ..storage import StorageError, release_store
from .common import ReleaseError, record_change

logger = logging.getLogger(__name__)

Status = File.Verification


@dataclass(frozen=True)
class ManifestOutcome:
    """What building did for one SHA-256: `state` is one of
    built      the manifest was computed, uploaded and recorded (`size` bytes, `chunks` chunks);
    shared     another file with these bytes had one already: recorded for the rest;
    present    every file with these bytes had one already;
    small      the files are under 1 MiB: they get none;
    too-large  it would not stay under 0.1% of the file (highly repetitive content): none is kept."""

    sha256: str
    state: str
    size: int = 0
    chunks: int = 0
    files: int = 0  # file rows recorded by this call

    def describe(self) -> str:
        return {
            "built": f"manifest built: {self.chunks:,} chunks, {self.size:,} bytes",
            "shared": f"manifest shared with another file ({self.size:,} bytes)",
            "present": "has a manifest already",
            "small": f"under {chunking.MIN_FILE_SIZE:,} bytes: no manifest",
            "too-large": "no manifest kept: it would not stay under 0.1% of the file",
        }[self.state]


def build_chunk_manifest(sha256_or_file_id: str | int) -> ManifestOutcome:
    """Build, store and record the manifest of the files with this SHA-256 (or this file id's).

    Idempotent: what is recorded already is left alone. Raises ReleaseError when there is no such
    file, its object cannot be read, or its bytes do not hash to the recorded SHA-256.
    """
    sha256 = _sha256_of(sha256_or_file_id)
    rows = File.objects.filter(sha256=sha256)
    seen = rows.aggregate(
        files=Count("pk"),
        size=Max("size"),
        recorded=Count("pk", filter=Q(chunks_size__isnull=False)),
        manifest=Max("chunks_size"),
    )
    if not seen["files"]:
        raise ReleaseError(f"No file has the SHA-256 {sha256}.")
    if not chunking.gets_manifest(seen["size"]):
        return ManifestOutcome(sha256, "small")
    if seen["recorded"] == seen["files"]:
        return ManifestOutcome(sha256, "present", size=seen["manifest"])
    if seen["manifest"] is not None:  # decided for another file with the same bytes
        state = "shared" if seen["manifest"] else "too-large"
        return ManifestOutcome(sha256, state, size=seen["manifest"], files=_record(sha256, seen["manifest"]))
    data = _compute(sha256, seen["size"])
    if not chunking.small_enough(len(data), seen["size"]):
        logger.warning("chunk manifest of %s: %d bytes for %d, not kept", sha256, len(data), seen["size"])
        return ManifestOutcome(sha256, "too-large", size=len(data), files=_record(sha256, 0))
    try:
        release_store().upload(chunking.manifest_key(sha256), io.BytesIO(data), content_type="application/octet-stream")
    except StorageError as error:
        raise ReleaseError(f"Could not store the chunk manifest of {sha256}: {error}") from error
    count = (len(data) - chunking.HEADER.size) // chunking.RECORD.size
    recorded = _record(sha256, len(data))
    logger.info("chunk manifest of %s: %d chunks, %d bytes, %d files", sha256, count, len(data), recorded)
    return ManifestOutcome(sha256, "built", size=len(data), chunks=count, files=recorded)


def _sha256_of(value: str | int) -> str:
    if isinstance(value, int):
        sha256 = File.objects.filter(pk=value).values_list("sha256", flat=True).first()
        if sha256 is None:
            raise ReleaseError(f"There is no file {value}.")
        return sha256
    if not chunking.is_sha256_hex(value):
        raise ReleaseError(f"{value!r} is not a SHA-256 (64 lower-case hex digits).")
    return value


def _compute(sha256: str, size: int) -> bytes:
    """The manifest of the object of a file with these bytes (a published one when there is one),
    checked against what was recorded. No transaction is open: this reads the whole object."""
    rows = File.objects.filter(sha256=sha256)
    key = rows.published().values_list("key", flat=True).first() or rows.values_list("key", flat=True).first()
    try:
        with release_store().local_copy(key) as path:
            data = chunking.build_manifest(path)
    except (StorageError, chunking.ManifestError) as error:
        raise ReleaseError(f"Could not build the chunk manifest of {key}: {error}") from error
    manifest = chunking.parse_manifest(data)
    if (manifest.file_size, manifest.file_sha256.hex()) != (size, sha256):
        raise ReleaseError(
            f"Could not build the chunk manifest of {key}: the object has {manifest.file_size:,} bytes with "
            f"SHA-256 {manifest.file_sha256.hex()}, not the recorded {size:,} bytes and {sha256}."
        )
    return data


def _record(sha256: str, size: int) -> int:
    """Record the manifest on every file with these bytes that lacks it, and have the API responses
    of their versions purged (they gain a chunks_url). One short transaction; returns the rows."""
    with transaction.atomic():
        pending = File.objects.filter(sha256=sha256, chunks_size__isnull=True)
        versions = list(
            Version.objects.filter(pk__in=pending.values("version_id")).select_related("model").order_by("pk")
        )
        recorded = pending.update(chunks_size=size)
        if size:
            for version in versions:
                if not version.is_draft:  # nothing shared a draft's responses
                    record_change(version.model.slug, version)
    return recorded


def files_for_manifests(model: str | None = None, version: str | None = None):
    """The files of published and yanked versions, of one model or version when named, in order."""
    files = (
        File.objects.published()
        .select_related("version__model")
        .order_by("version__model__slug", "version__sort_key", "path")
    )
    if model is not None:
        if not Version.objects.filter(model__slug=model).exists():
            raise ReleaseError(f"There is no model {model!r}.")
        files = files.filter(version__model__slug=model)
    if version is not None:
        found = Version.objects.filter(model__slug=model, version=version).first()
        if found is None:
            raise ReleaseError(f"{model} has no version {version!r}.")
        if not found.is_downloadable:
            raise ReleaseError(f"{model} {version} is {found.status}; only published and yanked files get manifests.")
        files = files.filter(version=found)
    return files


def backfill_chunk_manifests(limit: int) -> dict[str, int]:
    """Build the manifests that published files of at least 1 MiB still lack, newest first, at most
    `limit` distinct contents (the beat job's batch). Objects that verification found missing or
    changed are left out; any other failure is logged and the next content tried. Returns how
    many contents ended in each state of ManifestOutcome, and how many `failed`."""
    files = File.objects.published().filter(size__gte=chunking.MIN_FILE_SIZE, chunks_size__isnull=True)
    files = files.exclude(verification_status__in=[Status.MISSING, Status.MISMATCH])
    todo = files.values("sha256").annotate(newest=Max("pk")).order_by("-newest")[:limit]
    counts: dict[str, int] = {}
    for row in list(todo):
        try:
            state = build_chunk_manifest(row["sha256"]).state
        except ReleaseError as error:
            logger.warning("chunk manifest of %s not built: %s", row["sha256"], error)
            state = "failed"
        counts[state] = counts.get(state, 0) + 1
    return counts
