"""Public pages: the index, a model's versions, a version's files. Thin: selectors read, signing signs."""

from __future__ import annotations

import shlex

from django.shortcuts import render
from django.views.decorators.http import require_safe

from .. import caching, licenses, run_stats, selectors, use_box
from ..links import FileLinks, VersionLinks, file_links
from ..sizes import binary_size as filesizeformat
from .errors import answer

SORT_LABELS = {"name": "Name", "latest": "Latest release", "downloads": "Downloads"}


@require_safe
def index(request):
    """Every model, or those a search (`q`: name, description, tag) or a `tag` finds, in a chosen order."""
    # Any query string is answered: control characters are dropped, an unknown sort is by name.
    query = selectors.search_text(request.GET.get("q", ""), selectors.SEARCH_LENGTH)
    tag = selectors.search_text(request.GET.get("tag", ""), selectors.TAG_LENGTH)
    sort = request.GET.get("sort", "name")
    sort = sort if sort in SORT_LABELS else "name"
    models = selectors.models_for_index(request.user, query=query, tag=tag, sort=sort)
    context = {
        "models": models,
        "query": query,
        "tag": tag,
        "sort": sort,
        "sorts": SORT_LABELS.items(),
        "searching": bool(query or tag),
    }
    response = render(request, "releases/index.html", context)
    return caching.cacheable(response, request, [caching.index_key()])


@require_safe
def model_page(request, model_slug):
    try:
        found, versions, latest = selectors.model_with_versions(model_slug, request.user)
    except selectors.NotFound as error:
        return answer(request, error)
    context = {
        "model": found,
        "versions": versions,
        "latest": latest,
        "downloads": selectors.model_downloads(found),
        "first_runs": run_stats.public_first_runs(found),  # None unless the operator shows it
        "license_name": licenses.name(found.license) if found.license else "",
        "license_url": licenses.url(found.license) if found.license else None,
        "links": [
            (label, url)
            for label, url in (
                ("Homepage", found.homepage_url),
                ("Source", found.source_url),
                ("Paper", found.paper_url),
            )
            if url
        ],  # fmt: skip
    }
    shown = _version_to_use(versions, latest)
    if shown is not None:
        links = VersionLinks(request, found.slug, shown.version)
        context["use"] = use_box.use_box(shown, links, use_box.main_file(shown, links))
    response = render(request, "releases/model.html", context)
    return caching.cacheable(response, request, [caching.model_key(model_slug)])


@require_safe
def version_page(request, model_slug, version):
    try:
        page = selectors.version_with_files(model_slug, version, request.user)
    except (selectors.NotFound, selectors.Gone) as error:
        return answer(request, error)
    resolved = page.version
    links = VersionLinks(request, model_slug, resolved.version)
    rows = _file_rows(file_links(request, page.files, links))
    context = {
        "model": resolved.model,
        "version": resolved,
        "requested": version,
        "rows": rows,
        "use": use_box.use_box(resolved, links, use_box.largest_of(page.files, links)),
        "curl_commands": "".join(
            f"curl -fL --create-dirs -o {shlex.quote(row['path'])} {row['stable_url']}\n" for row in rows
        ),
        "notes_html": resolved.notes_html,  # rendered when the notes were written
        "links": links,
        "is_latest": version == selectors.LATEST or selectors.is_latest(resolved),
        "total_size": page.total_size,
        "changes": page.changes,
        "downloads": page.downloads,
        "first_runs": run_stats.public_first_runs(resolved),
        "subset_pattern": shlex.quote(_subset_pattern(rows)),
        "changed_rows": _change_rows(page.changes),
    }
    response = render(request, "releases/version.html", context)
    return caching.cacheable(
        response, request, [caching.model_key(model_slug), caching.version_key(model_slug, resolved.version)]
    )


def _version_to_use(versions: list, latest):
    """What the model page's box offers: the latest, else the newest downloadable (a prerelease)."""
    if latest is not None:
        return latest
    return next((v for v in versions if v.status in ("published", "yanked")), None)


def _subset_pattern(rows: list[dict]) -> str:
    """An --include pattern for the example line: the first file type the version has (`*.yaml`),
    else the first file's path."""
    for row in rows:
        stem, dot, extension = row["name"].rpartition(".")
        if dot and stem:
            return f"*.{extension}"
    return rows[0]["path"] if rows else "*"


def _file_rows(files: list[FileLinks]) -> list[dict]:
    """Everything a row shows, formatted here: rows are many, template lookups are not free.

    Files come sorted by path, so a folder's files follow each other: a row that starts a folder
    carries the folder's name (the page shows it as a heading row), and each row its own name."""
    rows, folder = [], None
    for number, file in enumerate(files, start=1):
        parent, _, name = file.path.rpartition("/")
        rows.append(
            {
                "n": str(number),  # a string: Django localizes every integer it renders, four times a row
                "path": file.path,
                "name": name,
                "folder": f"{parent}/" if parent != folder and parent else "",
                "nested": bool(parent),
                "download_url": file.url,
                "stable_url": file.stable_url,
                "size": filesizeformat(file.size),
                "bytes": f"{file.size:,}" if file.size >= 1024 else "",  # small sizes already show bytes
                "sha256": file.sha256,
                "sha_short": f"{file.sha256[:12]}…{file.sha256[-4:]}",
            }
        )
        folder = parent
    return rows


def _change_rows(changes) -> list[dict]:
    """What changed, one row per path, with a signed size difference."""
    rows = [{"kind": "added", "path": f.path, "delta": f"+{filesizeformat(f.size)}"} for f in changes.added]
    rows += [{"kind": "removed", "path": f.path, "delta": f"−{filesizeformat(f.size)}"} for f in changes.removed]
    rows += [{"kind": "changed", "path": f.path, "delta": _signed_size(f.size_difference)} for f in changes.changed]
    return sorted(rows, key=lambda row: row["path"])


def _signed_size(difference: int) -> str:
    if difference == 0:
        return "same size"
    return ("+" if difference > 0 else "−") + filesizeformat(abs(difference))
