"""The CDN outbox: work recorded in the same transaction as the change that causes it,
drained after commit by a task and, for whatever is left (broker down, worker
killed), by the `drain-outbox` and `warm-pending` beat jobs. Nothing is lost.

Workers *claim* due rows for a lease (a short transaction with SKIP LOCKED),
do the work outside any transaction, then settle each row: done, retried
later with exponential backoff, or failed after OUTBOX_MAX_ATTEMPTS (the
admins are mailed; the admin can retry it). A purge goes to every configured
cache; the caches a row has reached are kept on it (`done_targets`), so a
retry after one cache failed purges only the caches still missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.utils import timezone

from . import caching, cdn
from .models import File, OutboxEntry, Version

logger = logging.getLogger(__name__)

Kind, State = OutboxEntry.Kind, OutboxEntry.State


# --- recording (inside the change's transaction) ---------------------------------------------


def record_change(model_slug: str, version: Version | None = None) -> list[int]:
    """Record the purges a change causes; returns the rows' ids (to drain once the change commits)."""
    stale = caching.stale_after_change(
        model_slug, version.version if version is not None else None, objects=_stale_objects(version)
    )
    return [_record(Kind.PURGE, key, paths=paths) for key, paths in stale.items()]


def _stale_objects(version: Version | None) -> list[str]:
    """Where the CDN keeps the bytes of a version that can no longer be downloaded (withdrawn, or a
    draft being deleted: staff may have fetched it through the CDN). Published and yanked bytes never
    change, so a CDN may go on keeping them."""
    if version is None or version.pk is None or version.status not in {Version.Status.WITHDRAWN, Version.Status.DRAFT}:
        return []
    return cdn.object_paths(version.files.all())


def record_warming(version: Version) -> list[int]:
    """Record the files of a newly published version for warming, when downloads go through a CDN
    (files above WARM_MAX_BYTES are left to the first downloader); returns the rows' ids."""
    if not cdn.warming_enabled():
        return []
    return [
        _record(Kind.WARM, f"file-{file.pk}", file=file)
        for file in version.files.filter(size__lte=settings.WARM_MAX_BYTES)
    ]


def _record(kind: str, key: str, *, paths=(), file: File | None = None) -> int:
    """Insert a pending row, or bump the pending row for the same key; returns its id."""
    now = timezone.now()
    # A newer change must reach every cache again, whichever ones the row had reached already.
    bump = dict(generation=F("generation") + 1, next_attempt_at=now, paths=list(paths), attempts=0, done_targets=[])
    pending = OutboxEntry.objects.filter(kind=kind, key=key, state=State.PENDING)
    for _ in range(2):
        existing = pending.values_list("pk", flat=True).first()
        if existing and pending.filter(pk=existing).update(**bump):
            return existing  # coalesced: its generation says it must run again
        try:
            with transaction.atomic():
                return OutboxEntry.objects.create(
                    kind=kind, key=key, paths=list(paths), file=file, next_attempt_at=now
                ).pk
        except IntegrityError:  # a concurrent change created it first: bump that one
            continue
    raise RuntimeError(f"could not record outbox {kind} {key}")


# --- draining ---------------------------------------------------------------------------------


@dataclass
class DrainResult:
    done: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    settled: list = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    entry: OutboxEntry
    generation: int


def claim(kind: str, limit: int, ids: list[int] | None = None) -> list[Claim]:
    """Take up to `limit` due pending rows for a lease; rows other workers hold are skipped."""
    now = timezone.now()
    lease = timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)
    with transaction.atomic():
        due = OutboxEntry.objects.select_for_update(skip_locked=True).filter(
            kind=kind, state=State.PENDING, next_attempt_at__lte=now
        )
        if ids is not None:
            due = due.filter(pk__in=ids)
        entries = list(due.order_by("next_attempt_at", "pk")[:limit])
        OutboxEntry.objects.filter(pk__in=[e.pk for e in entries]).update(
            attempts=F("attempts") + 1, next_attempt_at=now + lease
        )
    return [Claim(entry, entry.generation) for entry in entries]


def drain(kind: str, *, limit: int | None = None, ids: list[int] | None = None) -> DrainResult:
    """Claim due rows of one kind and do their work: one purge call for all keys, one fetch per file."""
    limit = limit or settings.OUTBOX_BATCH_SIZE
    claims = claim(kind, limit, ids)
    result = DrainResult()
    if not claims:
        return result
    try:
        if kind == Kind.PURGE:
            _purge(claims, result)
        else:
            _warm(claims, result)
    except Exception as error:  # anything unforeseen still settles every claimed row
        logger.exception("outbox %s drain failed", kind)
        for item in claims:
            _settle(item, result, error=f"{type(error).__name__}: {error}", only_if_unsettled=True)
    if result.failed:
        _mail_failures(kind, result)
    return result


def _purge(claims: list[Claim], result: DrainResult) -> None:
    """Send each cache one purge for the keys of the rows that have not reached it yet; a row is done
    once every cache has been purged, and a retry goes only to the caches that failed."""
    reached: dict[int, list[str]] = {c.entry.pk: list(c.entry.done_targets) for c in claims}
    errors: dict[int, list[str]] = {c.entry.pk: [] for c in claims}
    todo = {target: [c for c in claims if target.target not in reached[c.entry.pk]] for target in cdn.backends()}
    todo = {target: items for target, items in todo.items() if items}
    work = [
        (target, [c.entry.key for c in items], sorted({path for c in items for path in c.entry.paths}))
        for target, items in todo.items()
    ]
    for (target, items), error in zip(todo.items(), cdn.purge_each(work), strict=True):
        for item in items:
            if error:
                errors[item.entry.pk].append(error)
            else:
                reached[item.entry.pk].append(target.target)
    for item in claims:
        error = "; ".join(errors[item.entry.pk]) or None
        _settle(item, result, error=error, done_targets=reached[item.entry.pk])


def _warm(claims: list[Claim], result: DrainResult) -> None:
    files = File.objects.select_related("version").in_bulk([c.entry.file_id for c in claims])
    errors = cdn.warm_files([file for file in files.values() if file.version.is_downloadable])
    for item in claims:
        file = files.get(item.entry.file_id)
        if file is None or not file.version.is_downloadable:  # withdrawn meanwhile: nothing to warm
            _settle(item, result)
            continue
        error = errors.get(file.pk)
        if error is None:
            File.objects.filter(pk=file.pk).update(warmed_at=timezone.now())
        _settle(item, result, error=error)


def _settle(
    item: Claim,
    result: DrainResult,
    *,
    error: str | None = None,
    done_targets: list[str] | None = None,
    only_if_unsettled: bool = False,
) -> None:
    entry, now = item.entry, timezone.now()
    if only_if_unsettled and item in result.settled:
        return
    result.settled.append(item)
    mine = OutboxEntry.objects.filter(pk=entry.pk, state=State.PENDING, generation=item.generation)
    progress = {} if done_targets is None else {"done_targets": done_targets}  # only for the generation sent
    if error is None:
        if mine.update(state=State.DONE, done_at=now, last_error="", **progress):
            result.done += 1
        else:  # recorded again while in flight: run once more soon
            OutboxEntry.objects.filter(pk=entry.pk, state=State.PENDING).update(next_attempt_at=now)
        return
    if progress:
        mine.update(**progress)
    attempts = entry.attempts + 1
    result.errors.append(f"{entry.kind} {entry.key}: {error}")
    if attempts >= settings.OUTBOX_MAX_ATTEMPTS and mine.update(state=State.FAILED, last_error=error):
        result.failed += 1
        logger.error("outbox %s %s failed after %d attempts: %s", entry.kind, entry.key, attempts, error)
    else:  # retry later (also when a newer change bumped the row: it starts its attempts afresh)
        backoff = min(settings.OUTBOX_BACKOFF_SECONDS * 2 ** (attempts - 1), 3600)
        OutboxEntry.objects.filter(pk=entry.pk, state=State.PENDING).update(
            next_attempt_at=now + timedelta(seconds=backoff), last_error=error
        )
        result.retried += 1
        logger.warning("outbox %s %s: %s (retry in %ss)", entry.kind, entry.key, error, backoff)


def _mail_failures(kind: str, result: DrainResult) -> None:
    mail_admins(
        f"CDN {kind} failed for {result.failed} entr{'y' if result.failed == 1 else 'ies'}",
        "These outbox entries failed after every retry; retry them from the admin (CDN outbox) once the "
        "CDN is reachable:\n\n" + "\n".join(result.errors),
        fail_silently=True,
    )


def retry_failed(ids: list[int]) -> int:
    """Put failed rows back in the queue (admin action); a pending row for the same key absorbs them."""
    count = 0
    for entry in OutboxEntry.objects.filter(pk__in=ids, state=State.FAILED):
        try:
            with transaction.atomic():
                OutboxEntry.objects.filter(pk=entry.pk).update(
                    state=State.PENDING, attempts=0, next_attempt_at=timezone.now()
                )
        except IntegrityError:  # the key is pending again already
            OutboxEntry.objects.filter(pk=entry.pk).delete()
        count += 1
    return count


def seconds_until_due(ids: list[int]) -> int | None:
    """Seconds until the first of these rows that is still pending is due again, or None if none is."""
    first = (
        OutboxEntry.objects.filter(pk__in=ids, state=State.PENDING)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    if first is None:
        return None
    return max(1, int((first - timezone.now()).total_seconds()) + 1)


def backlog() -> dict[str, int]:
    counts = dict(
        OutboxEntry.objects.exclude(state=State.DONE)
        .values_list("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    return {State.PENDING.value: counts.get(State.PENDING, 0), State.FAILED.value: counts.get(State.FAILED, 0)}
