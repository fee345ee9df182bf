"""Publishing a set of local files as a version (the publish_release command, the demo)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from ..models import (
    File,
    MLModel,
    Version,
    canonical_path,
    default_object_key,
    validate_model_slug,
    validate_version_string,
)
from ..rendering import render_markdown
from ..storage import Progress, guess_content_type, sha256_of_file
from . import chunks
from .common import ReleaseError, as_release_error, version_lock
from .files import (
    check_file_names,
    check_unused,
    create_file_row,
    current_draft,
    locked_draft,
    removing_uploads_on_failure,
    upload,
)
from .versions import create_version, get_or_create_model, publish_version, update_version_details


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
    jobs: int | None = None,
) -> ReleaseOutcome:
    """Upload local files as a version and publish it (unless ``draft``).

    Idempotent: the same files for an already published version change nothing. The
    version's lock is held throughout, so a concurrent run is refused instead of
    overwriting; bytes go to storage outside any transaction and each file is recorded in a
    short one. A refusal undoes what this run made: no version, file or uploaded object.
    """
    files = [LocalFile(canonical_path(item.path), item.source) for item in files]
    with as_release_error():
        validate_model_slug(model_slug)
        validate_version_string(version_string)
        render_markdown(notes)  # refused notes are refused before the first byte is sent
    for item in files:
        check_file_names(model_slug, item.path, default_object_key(model_slug, version_string, item.path))
    _check_local_files(files)
    existing = (
        Version.objects.select_related("model").filter(model__slug=model_slug, version__iexact=version_string).first()
    )
    if existing and not existing.is_draft:
        return _compare_with_released(existing, files)
    model_existed = MLModel.objects.filter(slug=model_slug).exists()
    with removing_uploads_on_failure() as uploaded:
        version = existing or create_version(
            get_or_create_model(model_slug), version_string, notes=notes, prerelease=prerelease
        )
        recorded: list[int] = []
        manifests: list[str] = []  # contents whose chunk manifest this run stored
        try:
            with version_lock(version, wait=False):
                version = current_draft(version)
                kept = _identical_draft_files(version, files, manifests)
                new = [item for item in files if item.path not in kept]
                for item in new:  # every check before the first byte is sent
                    check_unused(version, item.path, default_object_key(model_slug, version.version, item.path))
                for item in new:
                    recorded.append(_upload_and_record(version, item, uploaded, progress_for, jobs, manifests).pk)
                if existing:
                    version = update_version_details(version, notes=notes or version.notes, prerelease=prerelease)
                if not draft:
                    version = publish_version(version)
        except KeyboardInterrupt:
            # Interrupted, not refused: the draft, the files it recorded and the unfinished upload in
            # storage stay, so the same command resumes (abandoned uploads are aborted by a beat job).
            raise
        except BaseException:
            _undo(version, recorded, created_version=existing is None, created_model=not model_existed)
            chunks.delete_unused_manifests(manifests)
            raise
    return ReleaseOutcome(version=version, uploaded=[item.path for item in new], kept=sorted(kept))


def _upload_and_record(version: Version, item: LocalFile, uploaded: list[str], progress_for, jobs, manifests) -> File:
    """Upload one file and record it with its chunk manifest, built from the bytes as they are read
    to be sent (one read of the local file; nothing is read back from storage)."""
    key = default_object_key(version.model.slug, version.version, item.path)  # checked by the caller
    content_type = guess_content_type(item.path)
    size = item.source.stat().st_size
    progress = progress_for(item, size) if progress_for else None
    builder = chunks.manifest_builder(size)
    with open(item.source, "rb") as source:
        observe = builder.update if builder else None
        stored = upload(key, source, content_type, progress, uploaded, jobs=jobs, observe=observe)  # no transaction
    chunks_size = chunks.store_built_manifest(builder, stored.sha256, stored.size)
    if chunks_size:
        manifests.append(stored.sha256)
    with transaction.atomic():
        return create_file_row(
            locked_draft(version),
            path=item.path,
            key=key,
            size=stored.size,
            sha256=stored.sha256,
            content_type=content_type,
            chunks_size=chunks_size,
        )


def _undo(version: Version, recorded: list[int], *, created_version: bool, created_model: bool) -> None:
    """Remove what a refused run made; the objects its rows owned are deleted after this."""
    with transaction.atomic():
        File.objects.filter(pk__in=recorded, version__status=Version.Status.DRAFT).delete()
        if created_version:
            Version.objects.filter(pk=version.pk, status=Version.Status.DRAFT).delete()
        if created_model:
            MLModel.objects.filter(slug=version.model.slug, versions__isnull=True).delete()


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


def _local_sha256(item: LocalFile, builder=None) -> str:
    with open(item.source, "rb") as source:
        return sha256_of_file(source, observe=builder.update if builder else None)[0]


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


def _identical_draft_files(version: Version, files: list[LocalFile], manifests: list[str]) -> set[str]:
    """Paths the draft already has with the same content; other content, or a file not named, is
    refused. A kept file that has no chunk manifest yet (uploaded before manifests were built while
    uploading) gets one from the same read of the local file that compares its SHA-256."""
    in_draft = {file.path: file for file in version.files.all()}
    unnamed = sorted(set(in_draft) - {item.path for item in files})
    if unnamed:
        raise ReleaseError(
            f"Draft {version.model.slug} {version.version} also has {', '.join(unnamed)}; name every file of the "
            "version, or remove the others from the draft."
        )
    kept = set()
    for item in files:
        held = in_draft.get(item.path)
        if held is None:
            continue
        lacking = held.chunks_size is None and chunks.recorded_manifest(held.sha256) is None
        builder = chunks.manifest_builder(held.size) if lacking else None
        if held.sha256 != _local_sha256(item, builder):
            raise ReleaseError(
                f"Draft {version.model.slug} {version.version} already has {item.path} with other content; "
                "remove it from the draft first."
            )
        if builder is not None and (size := chunks.store_built_manifest(builder, held.sha256, held.size)) is not None:
            chunks.record_manifest(held.sha256, size)
            manifests.append(held.sha256)
        kept.add(item.path)
    return kept
