"""Chunk manifests of files (releases.chunking), for clients that update a file they hold an older
version of by fetching only the chunks that changed.

A manifest describes content, so it is built once per SHA-256 and shared by every file with those
bytes: the object `.chunks/<sha256>` in the release storage, recorded as `File.chunks_size` on each
of them.

Uploads build it from the bytes they send, in the pass that hashes them (`manifest_builder`, then
`store_built_manifest` before the file's row is recorded): publish_release, the admin's form and its
uploads in parts never read an object back for it. What they could not build (files published
before, a manifest upload that failed, one that verification found missing from storage) is built by
the `backfill-chunk-manifests` beat job and `manage.py build_chunk_manifests`, the only paths that
read objects back: they stream the object once (no temporary copy), count the bytes they read (log
and /metrics), upload the manifest outside any transaction, and a short transaction records it with
the CDN purges of each affected version, whose API response now has a `chunks_url`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Max, Q

from .. import chunking, observability
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
    read: int = 0  # bytes of the object read back from storage to build it

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
        return ManifestOutcome(sha256, state, size=seen["manifest"], files=record_manifest(sha256, seen["manifest"]))
    data = _compute(sha256, seen["size"])
    read = seen["size"]
    if not chunking.small_enough(len(data), seen["size"]):
        logger.warning("chunk manifest of %s: %d bytes for %d, not kept", sha256, len(data), seen["size"])
        return ManifestOutcome(sha256, "too-large", size=len(data), files=record_manifest(sha256, 0), read=read)
    try:
        _upload(sha256, data)
    except StorageError as error:
        failure = ReleaseError(f"Could not store the chunk manifest of {sha256}: {error}")
        failure.read_bytes = read
        raise failure from error
    count = (len(data) - chunking.HEADER.size) // chunking.RECORD.size
    recorded = record_manifest(sha256, len(data))
    logger.info(
        "chunk manifest of %s: %d chunks, %d bytes, %d files, %d bytes read back",
        sha256,
        count,
        len(data),
        recorded,
        read,
    )
    return ManifestOutcome(sha256, "built", size=len(data), chunks=count, files=recorded, read=read)


def _upload(sha256: str, data: bytes) -> None:
    release_store().upload(chunking.manifest_key(sha256), io.BytesIO(data), content_type="application/octet-stream")


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
    checked against what was recorded. No transaction is open: this streams the whole object once,
    hashing and chunking it in the same pass, and counts the bytes read (/metrics)."""
    rows = File.objects.filter(sha256=sha256)
    key = rows.published().values_list("key", flat=True).first() or rows.values_list("key", flat=True).first()
    builder = chunking.ManifestBuilder()
    try:
        digest, read = release_store().compute_sha256(key, observe=builder.update)
        if (read, digest) != (size, sha256):
            raise ReleaseError(
                f"Could not build the chunk manifest of {key}: the object has {read:,} bytes with "
                f"SHA-256 {digest}, not the recorded {size:,} bytes and {sha256}."
            )
    except StorageError as error:
        raise _unbuilt(ReleaseError(f"Could not build the chunk manifest of {key}: {error}"), builder) from error
    except ReleaseError as error:
        raise _unbuilt(error, builder) from None
    observability.count(chunk_backfill_read_bytes=builder.size)
    return builder.finish(bytes.fromhex(digest))


def _unbuilt(error: ReleaseError, builder: chunking.ManifestBuilder) -> ReleaseError:
    """`error`, counting the bytes read before it (in /metrics, and for the backfill's log)."""
    observability.count(chunk_backfill_read_bytes=builder.size)
    error.read_bytes = builder.size
    return error


# --- built while uploading ---------------------------------------------------------------------


def manifest_builder(size: int) -> chunking.ManifestBuilder | None:
    """A builder to show the bytes of an upload of `size` bytes to, or None: it gets no manifest."""
    return chunking.ManifestBuilder() if chunking.gets_manifest(size) else None


def recorded_manifest(sha256: str) -> int | None:
    """The manifest size already recorded for these bytes (0: none kept), or None if none is."""
    found = File.objects.filter(sha256=sha256, chunks_size__isnull=False).values_list("chunks_size", flat=True)
    return found.first()


def store_built_manifest(builder: chunking.ManifestBuilder | None, sha256: str, size: int) -> int | None:
    """Store the manifest `builder` built from an upload of `size` bytes hashing to `sha256`; the
    `chunks_size` to record with the file. None when it has none yet: small files, a builder that
    did not see every byte, a manifest upload that failed (the backfill job builds those later).
    Bytes that have a manifest already share it: nothing is stored again."""
    if builder is None:
        return None
    shared = recorded_manifest(sha256)
    if shared is not None:
        return shared
    if builder.size != size:
        return None
    data = builder.finish(bytes.fromhex(sha256))
    if not chunking.small_enough(len(data), size):
        return 0
    try:
        _upload(sha256, data)
    except StorageError as error:
        logger.warning("chunk manifest of %s not stored (the backfill job will build it): %s", sha256, error)
        return None
    return len(data)


def delete_unused_manifests(sha256s) -> None:
    """Delete the stored manifests of these contents that no file row has any more (a deleted
    draft's, a refused upload's). A manifest a concurrent upload records meanwhile and loses here
    is noticed by verification and rebuilt."""
    store = release_store()
    for sha256 in sorted(
        set(sha256s) - set(File.objects.filter(sha256__in=set(sha256s)).values_list("sha256", flat=True))
    ):
        try:
            store.delete(chunking.manifest_key(sha256))
        except StorageError as error:
            logger.warning("could not delete the chunk manifest of %s (unused, safe to remove): %s", sha256, error)


def record_manifest(sha256: str, size: int) -> int:
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
    read = 0
    for row in list(todo):
        try:
            outcome = build_chunk_manifest(row["sha256"])
            state, read = outcome.state, read + outcome.read
        except ReleaseError as error:
            logger.warning("chunk manifest of %s not built: %s", row["sha256"], error)
            state, read = "failed", read + getattr(error, "read_bytes", 0)
        counts[state] = counts.get(state, 0) + 1
    if counts:
        counts["bytes_read"] = read
    return counts
