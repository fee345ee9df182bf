"""What every service shares: the one error they raise, and the version's lock and row lock."""

from __future__ import annotations

from contextlib import contextmanager

from django.core.exceptions import ValidationError

from .. import locks, outbox, tasks
from ..models import Version
from ..storage import StorageError


class ReleaseError(Exception):
    """A refused release operation; str() is one clear line."""


def message(error: ValidationError) -> str:
    return " ".join(error.messages)


@contextmanager
def as_release_error():
    try:
        yield
    except ValidationError as error:
        raise ReleaseError(message(error)) from error
    except StorageError as error:
        raise ReleaseError(str(error)) from error


@contextmanager
def version_lock(version: Version, *, wait: bool = True):
    """Hold the version's lock (no transaction): file changes and publishing take turns, while
    uploads and storage checks run outside any transaction."""
    try:
        with locks.version_lock(version.pk, wait=wait):
            yield
    except locks.Busy:
        raise ReleaseError(
            f"Another change to {version.model.slug} {version.version} is in progress; try again when it is done."
        ) from None


def locked(version: Version) -> Version:
    """The version's row, locked until the end of the (short) transaction."""
    return Version.objects.select_for_update().select_related("model").get(pk=version.pk)


def record_change(model_slug: str, version: Version | None = None, *, warm: Version | None = None) -> None:
    """The one place a change records its CDN work (inside its transaction) and has it drained
    once it commits: purges for what the change made stale, warming for newly published files."""
    ids = outbox.record_change(model_slug, version)
    if warm is not None:
        ids += outbox.record_warming(warm)
    tasks.drain_after_commit(ids)


def retry_cdn_work(ids: list[int]) -> int:
    """Put failed outbox rows back in the queue (an admin action) and drain them once committed."""
    count = outbox.retry_failed(ids)
    tasks.drain_after_commit(ids)
    return count
