"""Read paths for pages, the API and stable URLs.

Each selector runs a fixed number of queries, whatever the number of
versions and files. Visibility follows the querysets: drafts exist only for
staff, withdrawn versions are known but gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce

from . import chunking, downloads, search_terms
from .changes import Changes, FileState, compare
from .models import (
    DailyDownloads,
    File,
    MLModel,
    Version,
    user_sees_drafts,
    validate_model_slug,
    validate_version_string,
)
from .names import structure_problem

LATEST = "latest"


class NotFound(Exception):
    """Unknown model, version or file, or a draft seen by someone who is not staff (404)."""


class Gone(Exception):
    """A withdrawn version (410); `version` is its stored name when the URL named one version."""

    def __init__(self, message: str, version: str | None = None):
        super().__init__(message)
        self.version = version


def _latest_version_subquery():
    return Subquery(Version.objects.filter(model=OuterRef("pk")).latest_candidates().values("version")[:1])


INDEX_SORTS = {
    "name": ("slug",),
    "latest": (F("latest_published_at").desc(nulls_last=True), "slug"),
    "downloads": ("-downloads_total", "slug"),
}


def _model_annotations() -> dict:
    """What cards and lists show of each model, as subqueries (no joins that multiply rows)."""
    listed = Version.objects.filter(model=OuterRef("pk"), status__in=Version.Status.downloadable())
    return {
        "latest_version": _latest_version_subquery(),
        "latest_published_at": Subquery(listed.order_by("-published_at").values("published_at")[:1]),
        "downloads_total": _downloads_subquery(None),
        "downloads_recent": _downloads_subquery(RECENT_DAYS),
    }


SEARCH_LENGTH, TAG_LENGTH = 100, 50


def search_text(value: str, limit: int) -> str:
    """What a visitor typed, as the index searches it: without control characters (PostgreSQL's text
    cannot hold NUL; the others match nothing), spaces trimmed, at most ``limit`` characters."""
    kept = "".join(char for char in value[: limit * 4] if not _is_control(char))
    return kept.strip()[:limit]


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 32 or 127 <= code < 160 or 0xD800 <= code < 0xE000  # C0, DEL, C1, lone surrogates


def models_for_index(user, *, query: str = "", tag: str = "", sort: str = "name") -> list[MLModel]:
    """Models visible to `user`, found by `query` (name, description, tag) and `tag`, sorted by name,
    latest release or downloads; each with its latest version, downloads and tags. Two queries.
    Whatever the input: search terms pass through `search_text`, an unknown sort is by name."""
    query, tag = search_text(query, SEARCH_LENGTH), search_text(tag, TAG_LENGTH)
    models = MLModel.objects.visible_to(user)
    if query:
        models = search_terms.filter_models(models, query)
    if tag:
        models = models.filter(tags__name=tag.lower()).distinct()
    models = models.annotate(**_model_annotations()).order_by(*INDEX_SORTS.get(sort, INDEX_SORTS["name"]))
    return list(models.defer("description").prefetch_related("tags"))  # cards show the rendered card's start


def model_with_versions(slug: str, user) -> tuple[MLModel, list[Version], Version | None]:
    """A model with its card, downloads and tags, its versions newest first (each with `downloads`),
    and its latest version. Four queries."""
    if not _plausible(slug, LATEST):
        raise NotFound(f"There is no model {slug!r}.")
    model = (
        MLModel.objects.visible_to(user).filter(slug=slug).annotate(**_model_annotations())
        .prefetch_related("tags").first()
    )  # fmt: skip
    if model is None:
        raise NotFound(f"There is no model {slug!r}.")
    versions = list(Version.objects.visible_to(user).filter(model=model).natural_order())
    counts = downloads_by_version([version.pk for version in versions])
    for version in versions:
        version.downloads = counts.get(version.pk, Downloads())
    latest = next((v for v in versions if v.version == model.latest_version), None)
    return model, versions, latest


# --- download counts -------------------------------------------------------------------------------

RECENT_DAYS = 30


@dataclass(frozen=True, slots=True)
class Downloads:
    total: int = 0
    last_30_days: int = 0

    def as_json(self) -> dict:
        return {"total": self.total, "last_30_days": self.last_30_days}


def model_downloads(model: MLModel) -> Downloads:
    """From a model loaded by these selectors (its counts are annotated)."""
    return Downloads(model.downloads_total, model.downloads_recent)


def _downloads_subquery(days: int | None):
    rows = DailyDownloads.objects.filter(file__version__model=OuterRef("pk"))
    if days is not None:
        rows = rows.filter(day__gte=downloads.since(days))
    total = rows.values("file__version__model").annotate(sum=Sum("count")).values("sum")[:1]
    return Coalesce(Subquery(total), 0)


def downloads_by_version(version_ids: list[int]) -> dict[int, Downloads]:
    """Each version's downloads, all time and in the last 30 days. One query."""
    if not version_ids:
        return {}
    rows = (
        DailyDownloads.objects.filter(file__version_id__in=version_ids)
        .values("file__version_id")
        .annotate(total=Sum("count"), recent=Sum("count", filter=Q(day__gte=downloads.since(RECENT_DAYS))))
    )
    return {row["file__version_id"]: Downloads(row["total"], row["recent"] or 0) for row in rows}


def _plausible(slug: str, version: str, path: str = "x") -> bool:
    """Whether the names could exist at all; anything else is answered without a query. Paths are
    held to the structure only: files published before the portable-name rule stay downloadable."""
    try:
        validate_model_slug(slug)
        if version != LATEST:
            validate_version_string(version)
    except ValidationError:
        return False
    return structure_problem(path) is None


def resolve_version(slug: str, version: str, user) -> Version:
    """The version named in a URL (`latest` resolves), with its model. One query.

    Raises NotFound for an unknown model or version (or a draft, unless staff)
    and Gone for a withdrawn version.
    """
    if not _plausible(slug, version):
        raise NotFound(f"There is no model {slug!r} with a version {version!r}.")
    versions = Version.objects.select_related("model").filter(model__slug=slug)
    if version == LATEST:
        found = versions.latest_candidates().first()
        if found is None:
            raise NotFound(
                f"{slug!r} has no published version."
                if _model_is_public(slug, user)
                else f"There is no model {slug!r}."
            )
        return found
    found = versions.filter(version=version).first()
    if found is None or (found.is_draft and not user_sees_drafts(user)):
        if not _model_is_public(slug, user):
            raise NotFound(f"There is no model {slug!r}.")
        raise NotFound(f"{slug} has no version {version!r}.")
    if found.status == Version.Status.WITHDRAWN:
        raise Gone(f"{slug} {found.version} was withdrawn; choose another version.", found.version)
    return found


def _model_is_public(slug: str, user) -> bool:
    """Only asked on the error path, to word the 404."""
    return MLModel.objects.visible_to(user).filter(slug=slug).exists()


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What pages and the API show of a file; plain values, cheap to load by the hundred."""

    path: str
    key: str
    size: int
    sha256: str
    chunks_size: int | None = None  # its chunk manifest's bytes; null or 0: none

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def files_of(version: Version) -> list[FileInfo]:
    """The version's files by path. One query, no model instances."""
    rows = File.objects.filter(version=version).order_by("path")
    return [FileInfo(*row) for row in rows.values_list("path", "key", "size", "sha256", "chunks_size")]


def resolve_file(slug: str, version: str, path: str, user) -> File:
    """A file of a downloadable version by its path. Two queries."""
    resolved = resolve_version(slug, version, user)
    file = File.objects.filter(version=resolved, path=path).first() if _plausible(slug, version, path) else None
    if file is None:
        raise NotFound(f"{slug} {resolved.version} has no file {path!r}.")
    file.version = resolved
    return file


def file_by_key(key: str) -> File:
    """The file whose object a signed local link names (the link is the permission). One query.

    Withdrawn is Gone; a draft's file is served to whoever holds a link to it (staff got it)."""
    file = File.objects.select_related("version__model").filter(key=key).first()
    if file is None:
        raise NotFound("This file no longer exists.")
    if file.version.status == Version.Status.WITHDRAWN:
        raise Gone("This version was withdrawn.")
    return file


def is_latest(version: Version) -> bool:
    """Whether `version` is its model's latest. One query."""
    latest = Version.objects.latest_for(version.model_id)
    return latest is not None and latest.pk == version.pk


@dataclass(frozen=True)
class VersionPage:
    version: Version
    files: list[FileInfo]
    changes: Changes
    downloads: Downloads

    @property
    def total_size(self) -> int:
        return sum(file.size for file in self.files)


def version_with_files(slug: str, version: str, user) -> VersionPage:
    """A version, its files, what changed since the published version before it, its downloads."""
    resolved = resolve_version(slug, version, user)
    files = files_of(resolved)
    return VersionPage(
        version=resolved,
        files=files,
        changes=changes_since_previous(resolved, files),
        downloads=downloads_by_version([resolved.pk]).get(resolved.pk, Downloads()),
    )


def changes_since_previous(version: Version, files: list[FileInfo]) -> Changes:
    """Compared with the highest published version below this one. One query, whatever the history."""
    previous = (
        Version.objects.filter(
            model_id=version.model_id, status=Version.Status.PUBLISHED, sort_key__lt=version.sort_key
        )
        .order_by("-sort_key")
        .values("pk")[:1]
    )
    rows = list(
        File.objects.filter(version_id=Subquery(previous))
        .order_by("path")
        .values_list("version__version", "path", "size", "sha256")
    )
    if not rows:  # no published version before this one (a published version has files)
        return compare(None, [], [])
    return compare(
        rows[0][0],
        [FileState(*row[1:]) for row in rows],
        [FileState(file.path, file.size, file.sha256) for file in files],
    )


# --- chunk manifests --------------------------------------------------------------------------------


def chunk_manifest(sha256: str, user) -> str:
    """The object key of the chunk manifest of files with this SHA-256, when one of them is a file
    `user` may download (of a published or yanked version; of a draft, for staff). One query."""
    statuses = Version.Status.downloadable()
    if user_sees_drafts(user):
        statuses = [*statuses, Version.Status.DRAFT]
    if not chunking.is_sha256_hex(sha256) or not (
        File.objects.filter(sha256=sha256, chunks_size__gt=0, version__status__in=statuses).exists()
    ):
        raise NotFound("No file you may download has a chunk manifest with this SHA-256.")
    return chunking.manifest_key(sha256)


def manifest_is_public(key: str) -> bool:
    """Whether the chunk manifest a signed local link names belongs to a published or yanked file
    (shared caches may keep it) rather than only to drafts (the link is the permission). One query.

    Raises NotFound for any other key, Gone when only withdrawn versions have the file."""
    sha256 = chunking.sha256_of_key(key)
    rows = File.objects.filter(sha256=sha256, chunks_size__gt=0).order_by() if sha256 else File.objects.none()
    statuses = set(rows.values_list("version__status", flat=True).distinct())
    if not statuses:
        raise NotFound("This chunk manifest does not exist.")
    if statuses == {Version.Status.WITHDRAWN}:
        raise Gone("Every version with this file was withdrawn.")
    return bool(statuses & set(Version.Status.downloadable()))


# --- names ---------------------------------------------------------------------------------------


def downloadable_paths():
    """(model, version, path) of every file of a published or yanked version, by model, version
    and path; streamed, for a check over the whole catalogue. One query."""
    files = File.objects.filter(version__status__in=Version.Status.downloadable())
    rows = files.order_by("version__model__slug", "version__sort_key", "path")
    return rows.values_list("version__model__slug", "version__version", "path").iterator(chunk_size=2000)


# --- feeds ------------------------------------------------------------------------------------------


def model_for_feed(slug: str) -> MLModel:
    """A model anonymous visitors may see (feeds are public, whoever asks). One query."""
    found = MLModel.objects.public().filter(slug=slug).first() if _plausible(slug, LATEST) else None
    if found is None:
        raise NotFound(f"There is no model {slug!r}.")
    return found


def release_events(slug: str | None, limit: int) -> list[Version]:
    """The latest status changes of listed versions (published, yanked, withdrawn), newest first,
    site-wide or of one model. One query."""
    versions = Version.objects.listed().select_related("model").order_by("-updated_at", "-pk")
    if slug is not None:
        versions = versions.filter(model__slug=slug)
    return list(versions.defer("notes")[:limit])
