"""Models and versions: creation, status changes and their CDN work, metadata edits."""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import chunk_tasks, chunking
from ..models import (
    BrowserUpload,
    MLModel,
    Version,
    validate_model_slug,
    validate_object_key,
    validate_relative_path,
    validate_version_string,
)
from ..rendering import normalise_newlines, render_markdown
from ..storage import release_store
from .common import ReleaseError, as_release_error, locked, record_change, version_lock

logger = logging.getLogger(__name__)


def get_or_create_model(slug: str, *, name: str = "", summary: str = "") -> MLModel:
    with as_release_error():
        validate_model_slug(slug)
    model, _ = MLModel.objects.get_or_create(slug=slug, defaults={"name": name or slug, "summary": summary})
    return model


def create_version(model: MLModel, version: str, *, notes: str = "", prerelease: bool = False) -> Version:
    notes = normalise_newlines(notes)
    with as_release_error():
        validate_version_string(version)
        notes_html = render_markdown(notes)
    existing = Version.objects.filter(model=model, version__iexact=version).first()
    if existing:
        raise ReleaseError(f"{model.slug} already has version {existing.version} ({existing.status}).")
    try:
        with transaction.atomic():
            return Version.objects.create(
                model=model, version=version, notes=notes, notes_html=notes_html, prerelease=prerelease
            )
    except IntegrityError as error:
        raise ReleaseError(f"{model.slug} already has version {version}.") from error


def _require_transition(version: Version, status: str) -> None:
    if not version.can_become(status):
        raise ReleaseError(f"{version.model.slug} {version.version} is {version.status} and cannot become {status}.")


def publish_version(version: Version) -> Version:
    """Draft (or yanked) -> published, once every file is complete and present in storage.

    Storage is asked outside any transaction, under the version's lock, which keeps files
    from being added or removed meanwhile; then a short transaction changes the status.
    """
    with version_lock(version):
        current = Version.objects.select_related("model").get(pk=version.pk)
        _require_transition(current, Version.Status.PUBLISHED)
        if current.is_draft:
            _check_files_ready(current)
        with transaction.atomic():
            version = locked(version)
            _require_transition(version, Version.Status.PUBLISHED)
            first_time = version.is_draft
            if first_time:
                version.published_at = timezone.now()
            version.status = Version.Status.PUBLISHED
            version.yanked_reason = ""
            version.save(update_fields=["status", "published_at", "yanked_reason", "updated_at"])
            record_change(version.model.slug, None if first_time else version, warm=version if first_time else None)
            if first_time:
                chunk_tasks.build_after_commit(_lacking_manifests(version))
    logger.info("published %s %s", version.model.slug, version.version)
    return version


def _lacking_manifests(version: Version) -> list[int]:
    """The version's files that get a chunk manifest and have none yet (services/chunks.py)."""
    files = version.files.filter(size__gte=chunking.MIN_FILE_SIZE, chunks_size__isnull=True)
    return list(files.order_by("path").values_list("pk", flat=True))


def _check_files_ready(version: Version) -> None:
    files = list(version.files.all())
    label = f"{version.model.slug} {version.version}"
    unfinished = version.browser_uploads.filter(state__in=BrowserUpload.State.active()).first()
    if unfinished is not None:
        raise ReleaseError(
            f"{label} has an unfinished upload of {unfinished.path} ({unfinished.get_state_display()}); "
            "let it finish or abort it on the version's upload page first."
        )
    if not files:
        raise ReleaseError(f"{label} has no files; add at least one before publishing.")
    store = release_store()
    for file in files:
        if file.size is None or not file.sha256:
            raise ReleaseError(f"{label}: {file.path} has no size or checksum yet.")
        with as_release_error():
            validate_relative_path(file.path)  # a draft's file recorded before the portable-name rule
            validate_object_key(file.key, version.model.slug)
        with as_release_error():
            stored = store.stat(file.key)
        if stored is None:
            raise ReleaseError(f"{label}: the object for {file.path} ({file.key}) is missing from storage.")
        if stored.size != file.size:
            raise ReleaseError(
                f"{label}: the object for {file.path} has {stored.size} bytes in storage, expected {file.size}."
            )
        if stored.sha256 is not None and stored.sha256 != file.sha256:
            raise ReleaseError(f"{label}: the object for {file.path} has another SHA-256 in storage than recorded.")


STATUS_ACTIONS = ("publish", "yank", "unyank", "withdraw")


def change_status(version: Version, action: str, *, reason: str = "") -> Version:
    """The status changes maintainers ask for by name (admin and release_status alike).

    publish: a draft (or a yanked version) becomes published; unyank: only a yanked one;
    yank needs a reason; withdraw is for good.
    """
    if action == "publish":
        return publish_version(version)
    if action == "unyank":
        if version.status != Version.Status.YANKED:
            raise ReleaseError(f"{version.model.slug} {version.version} is {version.status}, not yanked.")
        return publish_version(version)
    if action == "yank":
        return yank_version(version, reason)
    if action == "withdraw":
        return withdraw_version(version, reason)
    raise ReleaseError(f"Unknown status change {action!r}; use one of {', '.join(STATUS_ACTIONS)}.")


def yank_version(version: Version, reason: str) -> Version:
    """Published -> yanked: still downloadable by exact version, never latest."""
    reason = normalise_newlines(reason or "").strip()
    if not reason:
        raise ReleaseError("Yanking needs a reason; it is shown to everyone who finds the version.")
    with transaction.atomic():
        version = locked(version)
        _require_transition(version, Version.Status.YANKED)
        version.status = Version.Status.YANKED
        version.yanked_reason = reason
        version.save(update_fields=["status", "yanked_reason", "updated_at"])
        record_change(version.model.slug, version)
    logger.info("yanked %s %s: %s", version.model.slug, version.version, reason)
    return version


def withdraw_version(version: Version, reason: str = "") -> Version:
    """Published or yanked -> withdrawn: nothing is signed for it again (410 Gone). The reason, when
    given, is kept where a yank's is (`yanked_reason`: why it may not be used) and its 410 shows it."""
    reason = normalise_newlines(reason or "").strip()
    with transaction.atomic():
        version = locked(version)
        _require_transition(version, Version.Status.WITHDRAWN)
        version.status = Version.Status.WITHDRAWN
        version.yanked_reason = reason or version.yanked_reason
        version.save(update_fields=["status", "yanked_reason", "updated_at"])
        record_change(version.model.slug, version)
    logger.info("withdrew %s %s", version.model.slug, version.version)
    return version


def update_version_details(version: Version, *, notes: str, prerelease: bool) -> Version:
    """Edit release notes (any time) and the prerelease flag (drafts only: it decides 'latest')."""
    notes = normalise_newlines(notes)
    with as_release_error():
        notes_html = render_markdown(notes)
    with transaction.atomic():
        current = locked(version)
        if prerelease != current.prerelease and not current.is_draft:
            raise ReleaseError(
                f"{current.model.slug} {current.version} is {current.status}; its prerelease flag is fixed."
            )
        changed = (current.notes, current.prerelease) != (notes, prerelease)
        current.notes, current.notes_html, current.prerelease = notes, notes_html, prerelease
        current.save(update_fields=["notes", "notes_html", "prerelease", "updated_at"])
        if changed and not current.is_draft:
            record_change(current.model.slug, current)
    return current
