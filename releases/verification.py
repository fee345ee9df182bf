"""Keep the promise that every published file is in storage, whole and unchanged.

A cheap check (size, and S3's own checksums when it has them) for the files
verified longest ago, plus full re-hashes of the files hashed longest ago
within a byte budget per run, so every file is fully re-read over time. The
chunk manifests of the files checked are looked for too: one missing from
storage is queued to be rebuilt (`manifests_missing`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import mail_admins
from django.db.models import F
from django.dispatch import Signal
from django.utils import timezone

from . import chunking
from .models import File
from .storage import MissingObject, ReleaseStore, StorageError, release_store

logger = logging.getLogger(__name__)

Status = File.Verification
FAILURES = (Status.MISSING, Status.MISMATCH, Status.ERROR)
# Sent with `sha256s`, the contents whose manifest storage no longer has, once their rows say they
# have none (so the backfill job, which chunk_tasks queues on this signal, rebuilds them).
manifests_missing = Signal()


@dataclass
class VerifyReport:
    counts: Counter = field(default_factory=Counter)
    bytes_hashed: int = 0
    failures: list[str] = field(default_factory=list)
    manifests_missing: list[str] = field(default_factory=list)  # SHA-256s queued to be rebuilt

    @property
    def files(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return sum(self.counts[status] for status in FAILURES)

    def summary(self) -> str:
        parts = ", ".join(f"{self.counts[s]} {s}" for s in (Status.OK, *FAILURES) if self.counts[s] or s == Status.OK)
        return f"Verified {self.files} file{'s' if self.files != 1 else ''} ({self.bytes_hashed:,} bytes re-hashed): {parts}."


def check_file(store: ReleaseStore, file: File, *, rehash: bool, progress: Callable[[int], None] | None = None):
    """(status, detail, bytes hashed) for one file."""
    missing = Status.MISSING, f"object {file.key} is not in storage", 0
    try:
        if rehash:  # reading the whole object tells everything a cheap check would, in one request
            digest, size = store.compute_sha256(file.key, progress)
            if size != file.size:
                return Status.MISMATCH, f"object has {size} bytes, expected {file.size}", size
            if digest != file.sha256:
                return Status.MISMATCH, f"content hashes to {digest}, expected {file.sha256}", size
            return Status.OK, "re-hashed: SHA-256 matches", size
        stored = store.stat(file.key)
        if stored is None:
            return missing
        if stored.size != file.size:
            return Status.MISMATCH, f"object has {stored.size} bytes, expected {file.size}", 0
        if stored.sha256 is not None and stored.sha256 != file.sha256:
            return Status.MISMATCH, f"storage's SHA-256 is {stored.sha256}, expected {file.sha256}", 0
        return Status.OK, "size matches" + (" and storage's SHA-256" if stored.sha256 else ""), 0
    except MissingObject:
        return missing
    except StorageError as error:
        return Status.ERROR, str(error), 0


def record(file: File, status: str, detail: str, *, rehashed: bool) -> None:
    now = timezone.now()
    fields = {"verification_status": status, "verification_detail": detail[:2000], "verified_at": now}
    if rehashed:
        fields["hashed_at"] = now
    File.objects.filter(pk=file.pk).update(**fields)
    if status in FAILURES:
        logger.error(
            "verify %s (%s %s): %s: %s", file.path, file.version.model.slug, file.version.version, status, detail
        )


def checked(files: Iterable[File], *, rehash: Callable[[File], bool], progress=None) -> Iterator[tuple]:
    """(file, re-hashed?, (status, detail, bytes hashed)) for each file, in order.

    Storage is read on VERIFY_CONCURRENCY threads, so one object's transfer overlaps
    another's hashing and each request's latency; at most two checks per thread are
    in flight, so a long iterator of files is never loaded at once. The threads never
    touch the database.
    """
    store, workers = release_store(), settings.VERIFY_CONCURRENCY
    progress = _serialized(progress)
    pending: deque = deque()

    def settled():
        file, full, result = pending.popleft()
        return file, full, result.result()

    pool = ThreadPoolExecutor(workers, thread_name_prefix="verify")
    finished = False
    try:
        for file in files:
            full = rehash(file)
            pending.append((file, full, pool.submit(check_file, store, file, rehash=full, progress=progress)))
            if len(pending) >= 2 * workers:
                yield settled()
        while pending:
            yield settled()
        finished = True
    finally:
        # Stopped early (a time limit, Ctrl-C): do not wait for reads already under way.
        pool.shutdown(wait=finished, cancel_futures=True)


def _serialized(progress: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """A progress callback that several threads can call."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(count: int) -> None:
        with lock:
            progress(count)

    return report


def verify(files: Iterable[File], *, rehash: Callable[[File], bool], progress=None) -> VerifyReport:
    report, with_manifests = VerifyReport(), set()
    for file, full, (status, detail, hashed) in checked(files, rehash=rehash, progress=progress):
        record(file, status, detail, rehashed=full and status != Status.ERROR)
        report.counts[status] += 1
        report.bytes_hashed += hashed
        if status in FAILURES:
            report.failures.append(f"{file.version.model.slug} {file.version.version} {file.path}: {status}: {detail}")
        elif file.chunks_size:
            with_manifests.add(file.sha256)
    report.manifests_missing = rebuild_missing_manifests(with_manifests)
    if report.failures:
        mail_admins(
            f"Verify: {report.failed} published file(s) failed",
            "\n".join(report.failures) + "\n\nThe admin lists them under Files, filtered by verification status.",
            fail_silently=True,
        )
    return report


def rebuild_missing_manifests(sha256s: Iterable[str]) -> list[str]:
    """The contents among these whose chunk manifest is missing from storage: their rows forget it
    (the chunks URL answers 404 rather than a link to nothing) and they are queued to be rebuilt.
    A manifest that cannot be looked at now (storage error) is left for the next run."""
    store, missing = release_store(), []
    for sha256 in sorted(sha256s):
        try:
            if store.stat(chunking.manifest_key(sha256)) is None:
                missing.append(sha256)
        except StorageError as error:
            logger.warning("could not look for the chunk manifest of %s: %s", sha256, error)
    if missing:
        File.objects.filter(sha256__in=missing, chunks_size__gt=0).update(chunks_size=None)
        logger.error("chunk manifests missing from storage, queued to be rebuilt: %s", ", ".join(missing))
        manifests_missing.send(sender=File, sha256s=missing)
    return missing


def published_files():
    return File.objects.published().select_related("version__model")


def verify_batch(*, limit: int | None = None, byte_budget: int | None = None) -> VerifyReport:
    """One rolling run: the files verified longest ago, re-hashing those hashed longest ago within the budget."""
    limit = limit or settings.VERIFY_BATCH_SIZE
    budget = settings.VERIFY_BYTE_BUDGET if byte_budget is None else byte_budget
    to_hash, spent = set(), 0
    for pk, size in published_files().order_by(F("hashed_at").asc(nulls_first=True), "pk").values_list("pk", "size"):
        if spent + size > budget and (to_hash or budget == 0):
            break  # (a file larger than the whole budget still gets its turn, alone)
        to_hash.add(pk)
        spent += size
    oldest = list(published_files().order_by(F("verified_at").asc(nulls_first=True), "pk")[:limit])
    chosen = {file.pk: file for file in oldest}
    for file in published_files().filter(pk__in=to_hash - set(chosen)):
        chosen[file.pk] = file
    return verify(chosen.values(), rehash=lambda file: file.pk in to_hash)


def verify_everything(progress=None) -> VerifyReport:
    """Every published file, fully re-hashed (the verify_artifacts command)."""
    return verify(
        published_files().order_by("pk").iterator(chunk_size=500), rehash=lambda file: True, progress=progress
    )
