"""Write paths for releases: the only code that creates or changes models,
versions and files. The admin and the management commands call these.

Every refusal raises ReleaseError with one sentence a maintainer can act on,
and leaves nothing behind: no version without its files, no object that the
refused call uploaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import outbox
from .models import (
    File,
    Model,
    Version,
    canonical_path,
    default_object_key,
    validate_model_slug,
    validate_object_key,
    validate_relative_path,
    validate_version_string,
)
from .rendering import render_markdown
from .storage import Progress, StorageError, guess_content_type, release_store, sha256_of_file

logger = logging.getLogger(__name__)


class ReleaseError(Exception):
    """A refused release operation; str() is one clear line."""


def _message(error: ValidationError) -> str:
    return " ".join(error.messages)


@contextmanager
def _as_release_error():
    try:
        yield
    except ValidationError as error:
        raise ReleaseError(_message(error)) from error
    except StorageError as error:
        raise ReleaseError(str(error)) from error


# --- models and versions -------------------------------------------------


def get_or_create_model(slug: str, *, name: str = "", summary: str = "") -> Model:
    with _as_release_error():
        validate_model_slug(slug)
    model, _ = Model.objects.get_or_create(slug=slug, defaults={"name": name or slug, "summary": summary})
    return model


def create_version(model: Model, version: str, *, notes: str = "", prerelease: bool = False) -> Version:
    with _as_release_error():
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


def _locked(version: Version) -> Version:
    return Version.objects.select_for_update().select_related("model").get(pk=version.pk)


def _require_transition(version: Version, status: str) -> None:
    if not version.can_become(status):
        raise ReleaseError(
            f"{version.model.slug} {version.version} is {version.status} and cannot become {status}."
        )


def publish_version(version: Version) -> Version:
    """Draft (or yanked) -> published, once every file is complete and present in storage."""
    with transaction.atomic():
        version = _locked(version)
        _require_transition(version, Version.Status.PUBLISHED)
        if version.is_draft:
            _check_files_ready(version)
            version.published_at = timezone.now()
        first_time = version.is_draft
        version.status = Version.Status.PUBLISHED
        version.yanked_reason = ""
        version.save(update_fields=["status", "published_at", "yanked_reason", "updated_at"])
        outbox.record_change(version.model.slug, None if first_time else version.version)
        if first_time:
            outbox.record_warming(version)
    logger.info("published %s %s", version.model.slug, version.version)
    return version


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
        return withdraw_version(version)
    raise ReleaseError(f"Unknown status change {action!r}; use one of {', '.join(STATUS_ACTIONS)}.")


def _check_files_ready(version: Version) -> None:
    files = list(version.files.all())
    label = f"{version.model.slug} {version.version}"
    if not files:
        raise ReleaseError(f"{label} has no files; add at least one before publishing.")
    store = release_store()
    for file in files:
        if file.size is None or not file.sha256:
            raise ReleaseError(f"{label}: {file.path} has no size or checksum yet.")
        with _as_release_error():
            validate_object_key(file.key, version.model.slug)
        with _as_release_error():
            stored = store.stat(file.key)
        if stored is None:
            raise ReleaseError(f"{label}: the object for {file.path} ({file.key}) is missing from storage.")
        if stored.size != file.size:
            raise ReleaseError(
                f"{label}: the object for {file.path} has {stored.size} bytes in storage, expected {file.size}."
            )
        if stored.sha256 is not None and stored.sha256 != file.sha256:
            raise ReleaseError(f"{label}: the object for {file.path} has another SHA-256 in storage than recorded.")


def yank_version(version: Version, reason: str) -> Version:
    """Published -> yanked: still downloadable by exact version, never latest."""
    reason = (reason or "").strip()
    if not reason:
        raise ReleaseError("Yanking needs a reason; it is shown to everyone who finds the version.")
    with transaction.atomic():
        version = _locked(version)
        _require_transition(version, Version.Status.YANKED)
        version.status = Version.Status.YANKED
        version.yanked_reason = reason
        version.save(update_fields=["status", "yanked_reason", "updated_at"])
        outbox.record_change(version.model.slug, version.version)
    logger.info("yanked %s %s: %s", version.model.slug, version.version, reason)
    return version


def withdraw_version(version: Version) -> Version:
    """Published or yanked -> withdrawn: nothing is signed for it again (410 Gone)."""
    with transaction.atomic():
        version = _locked(version)
        _require_transition(version, Version.Status.WITHDRAWN)
        version.status = Version.Status.WITHDRAWN
        version.save(update_fields=["status", "updated_at"])
        outbox.record_change(version.model.slug, version.version)
    logger.info("withdrew %s %s", version.model.slug, version.version)
    return version


def delete_draft(version: Version) -> None:
    """Remove a draft with its file rows and the objects the site uploaded for it."""
    with transaction.atomic():
        version = _locked(version)
        if not version.is_draft:
            raise ReleaseError(f"{version.model.slug} {version.version} is {version.status}; only drafts can be deleted.")
        keys = list(version.files.filter(managed_object=True).values_list("key", flat=True))
        version.delete()
        # Nothing public showed a draft, but whatever a cache kept of it under its key goes too.
        outbox.record_change(version.model.slug, version.version)
    _delete_objects(keys)


# --- files ----------------------------------------------------------------


def _locked_draft(version: Version, *, nowait: bool = False) -> Version:
    """Lock a draft's row for the rest of the transaction, uploads included: publishing then waits
    for a file being added instead of publishing without it."""
    try:
        locked = Version.objects.select_for_update(nowait=nowait).select_related("model").get(pk=version.pk)
    except DatabaseError as error:
        raise ReleaseError(
            f"Another change to {version.model.slug} {version.version} is in progress; try again when it is done."
        ) from error
    if not locked.is_draft:
        raise ReleaseError(
            f"{locked.model.slug} {locked.version} is {locked.status}; files can only be added to a draft."
        )
    return locked


def _check_new_file(version: Version, path: str, key: str) -> None:
    with _as_release_error():
        validate_relative_path(path)
        validate_object_key(key, version.model.slug)
    if version.files.filter(path=path).exists():
        raise ReleaseError(f"{version.model.slug} {version.version} already has a file {path}.")
    if File.objects.filter(key=key).exists():
        raise ReleaseError(f"Object key {key} already belongs to another file.")


@contextmanager
def _removing_uploads_on_failure():
    """Collect the keys uploaded inside the block; if it fails, delete those no file row owns.

    Enter it *outside* the transaction, so that rows rolled back no longer own anything.
    """
    uploaded: list[str] = []
    try:
        yield uploaded
    except BaseException:
        owned = set(File.objects.filter(key__in=uploaded).values_list("key", flat=True))
        _delete_objects(key for key in uploaded if key not in owned)
        raise


def _upload(key: str, fileobj: BinaryIO, content_type: str, progress, uploaded: list[str]):
    uploaded.append(key)
    with _as_release_error():
        return release_store().upload(key, fileobj, content_type=content_type, progress=progress)


def _create_file_row(version: Version, **fields) -> File:
    try:
        with transaction.atomic():
            file = File(version=version, **fields)
            file.full_clean(exclude=["version"], validate_unique=False, validate_constraints=False)
            file.save()
            return file
    except ValidationError as error:
        raise ReleaseError(_message(error)) from error
    except IntegrityError as error:
        raise ReleaseError(f"{version.model.slug} {version.version} already has a file {fields['path']}.") from error


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
    with _removing_uploads_on_failure() as uploaded, transaction.atomic():
        version = _locked_draft(version)
        key = default_object_key(version.model.slug, version.version, path)
        _check_new_file(version, path, key)
        stored = _upload(key, fileobj, content_type, progress, uploaded)
        return _create_file_row(
            version, path=path, key=key, size=stored.size, sha256=stored.sha256, content_type=content_type
        )


def register_object(version: Version, path: str, key: str | None = None) -> File:
    """Attach an object already in storage; size and checksum come from storage."""
    path = canonical_path(path)
    with transaction.atomic():
        version = _locked_draft(version)
        key = key or default_object_key(version.model.slug, version.version, path)
        _check_new_file(version, path, key)
        store = release_store()
        with _as_release_error():
            stored = store.stat(key)
            if stored is None:
                raise ReleaseError(f"There is no object {key} in storage to register as {path}.")
            sha256 = stored.sha256
            if sha256 is None:  # storage keeps no full-object SHA-256: hash it by streaming
                sha256, size = store.compute_sha256(key)
                if size != stored.size:
                    raise ReleaseError(f"Object {key} changed while it was being hashed; try again.")
        return _create_file_row(
            version,
            path=path,
            key=key,
            size=stored.size,
            sha256=sha256,
            content_type=stored.content_type or guess_content_type(path),
            managed_object=False,
        )


def remove_file(file: File) -> None:
    """Remove a file from a draft (and its object, when the site uploaded it)."""
    with transaction.atomic():
        version = _locked(file.version)
        if not version.is_draft:
            raise ReleaseError(f"{file.path} belongs to {version.status} version {version.version}; it cannot be removed.")
        key, managed = file.key, file.managed_object
        File.objects.filter(pk=file.pk).delete()
    if managed:
        _delete_objects([key])


def _delete_objects(keys: Iterable[str]) -> None:
    store = release_store()
    for key in keys:
        try:
            store.delete(key)
        except StorageError:
            logger.warning("could not delete object %s; it is orphaned and safe to remove by hand", key)


# --- publishing a set of local files (the publish_release command) ----------


@dataclass
class LocalFile:
    path: str  # the file's path inside the version
    source: Path


@dataclass
class ReleaseOutcome:
    version: Version
    unchanged: bool = False  # the version was already published with exactly these files
    uploaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


ProgressFactory = Callable[[LocalFile, int], Progress | None]


def release_local_files(
    model_slug: str,
    version_string: str,
    files: list[LocalFile],
    *,
    notes: str = "",
    prerelease: bool = False,
    draft: bool = False,
    progress_for: ProgressFactory | None = None,
) -> ReleaseOutcome:
    """Upload local files as a version and publish it (unless ``draft``).

    Idempotent: the same files for an already published version change
    nothing. Everything happens in one transaction that holds the version's
    row while uploading, so a concurrent run waits or is refused instead of
    overwriting, and a refusal leaves no version, file or uploaded object.
    """
    files = [LocalFile(canonical_path(item.path), item.source) for item in files]
    with _as_release_error():
        validate_model_slug(model_slug)
        validate_version_string(version_string)
        for item in files:
            validate_relative_path(item.path)
    _check_local_files(files)
    existing = (
        Version.objects.select_related("model")
        .filter(model__slug=model_slug, version__iexact=version_string)
        .first()
    )
    if existing and not existing.is_draft:
        return _compare_with_released(existing, files)
    with _removing_uploads_on_failure() as uploaded, transaction.atomic():
        if existing:
            version = _locked_draft(existing, nowait=True)
            version = update_version_details(version, notes=notes or version.notes, prerelease=prerelease)
        else:
            version = create_version(get_or_create_model(model_slug), version_string, notes=notes, prerelease=prerelease)
        kept = _identical_draft_files(version, files)
        new = [item for item in files if item.path not in kept]
        keys = {item.path: default_object_key(model_slug, version.version, item.path) for item in new}
        for item in new:  # every check before the first byte is sent
            _check_new_file(version, item.path, keys[item.path])
        for item in new:
            content_type = guess_content_type(item.path)
            progress = progress_for(item, item.source.stat().st_size) if progress_for else None
            with open(item.source, "rb") as source:
                stored = _upload(keys[item.path], source, content_type, progress, uploaded)
            _create_file_row(
                version, path=item.path, key=stored.key, size=stored.size, sha256=stored.sha256, content_type=content_type
            )
        if not draft:
            version = publish_version(version)
    return ReleaseOutcome(version=version, uploaded=[item.path for item in new], kept=sorted(kept))


def _check_local_files(files: list[LocalFile]) -> None:
    if not files:
        raise ReleaseError("Name at least one file to publish.")
    seen: dict[str, Path] = {}
    for item in files:
        if not item.source.is_file():
            raise ReleaseError(f"{item.source}: no such file.")
        if item.path in seen:  # paths are NFC already: names that differ only in normalisation meet here
            raise ReleaseError(
                f"{seen[item.path]} and {item.source} would both be published as {item.path} "
                "(the same name once Unicode is normalised)."
            )
        seen[item.path] = item.source


def _local_sha256(item: LocalFile) -> str:
    with open(item.source, "rb") as source:
        return sha256_of_file(source)[0]


def _compare_with_released(version: Version, files: list[LocalFile]) -> ReleaseOutcome:
    released = {file.path: file.sha256 for file in version.files.all()}
    local = {item.path: _local_sha256(item) for item in files}
    if released != local:
        different = sorted(set(released.items()) ^ set(local.items()))
        first = different[0][0]
        raise ReleaseError(
            f"{version.model.slug} {version.version} is already {version.status} with other files "
            f"(first difference: {first}); publish a new version instead."
        )
    return ReleaseOutcome(version=version, unchanged=True)


def _identical_draft_files(version: Version, files: list[LocalFile]) -> set[str]:
    """Paths the draft already has with the same content; other content, or a file not named, is refused."""
    in_draft = {file.path: file.sha256 for file in version.files.all()}
    unnamed = sorted(set(in_draft) - {item.path for item in files})
    if unnamed:
        raise ReleaseError(
            f"Draft {version.model.slug} {version.version} also has {', '.join(unnamed)}; name every file of the "
            "version, or remove the others from the draft."
        )
    kept = set()
    for item in files:
        if item.path not in in_draft:
            continue
        if in_draft[item.path] != _local_sha256(item):
            raise ReleaseError(
                f"Draft {version.model.slug} {version.version} already has {item.path} with other content; "
                "remove it from the draft first."
            )
        kept.add(item.path)
    return kept


# --- metadata edits (admin) -------------------------------------------------


def save_model_details(model: Model) -> Model:
    """Create or update a model's name, summary and description."""
    with _as_release_error():
        model.full_clean()
    if model.pk and Model.objects.filter(pk=model.pk).exclude(slug=model.slug).exists():
        if File.objects.filter(version__model=model).exists():
            raise ReleaseError(
                f"{model.slug}: the slug is part of its files' object keys and URLs, so it cannot change once "
                "files were added."
            )
    with transaction.atomic():
        model.save()
        if model.versions.listed().exists():
            outbox.record_change(model.slug)
    return model


def update_version_details(version: Version, *, notes: str, prerelease: bool) -> Version:
    """Edit release notes (any time) and the prerelease flag (drafts only: it decides 'latest')."""
    with _as_release_error():
        notes_html = render_markdown(notes)
    with transaction.atomic():
        locked = _locked(version)
        if prerelease != locked.prerelease and not locked.is_draft:
            raise ReleaseError(f"{locked.model.slug} {locked.version} is {locked.status}; its prerelease flag is fixed.")
        changed = (locked.notes, locked.prerelease) != (notes, prerelease)
        locked.notes, locked.notes_html, locked.prerelease = notes, notes_html, prerelease
        locked.save(update_fields=["notes", "notes_html", "prerelease", "updated_at"])
        if changed and not locked.is_draft:
            outbox.record_change(locked.model.slug, locked.version)
    return locked
