"""Public pages, stable download URLs and the local file server. Thin: selectors read, signing signs."""

from __future__ import annotations

import os
import shlex
import time
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from . import caching, health, http_ranges, observability, selectors
from .links import VersionLinks, download_base, site_url
from .models import File, Version
from .signing import LinkRefused, content_disposition, local_file_path, signer, verify_local_link
from .storage import release_store


@never_cache
@require_safe
def healthz(request):
    """Liveness: the process answers. No I/O, so a slow database never restarts healthy web workers."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request):
    """Readiness: the database, the broker, the object store answer and links can be signed.

    503 when one does not. Anyone learns which components fail; what failed and where
    (hosts, ports, paths) only the holder of METRICS_TOKEN does.
    """
    checks = {name: _probe(check) for name, check in health.CHECKS.items()}
    warnings = {name: warning for name, check in health.WARNINGS.items() if (warning := _probe(check)) != "ok"}
    down = {name: problem for name, problem in checks.items() if problem != "ok"}
    body = {"status": "unavailable" if down else "ok"}
    if down:
        body["failing"] = sorted(down)
    if warnings:
        body["warnings"] = sorted(warnings)
    if _has_metrics_token(request):
        body["checks"] = checks
        if warnings:
            body["warning_details"] = warnings
        if down:
            body["detail"] = "; ".join(f"{name}: {problem}" for name, problem in down.items())
    return JsonResponse(body, status=503 if down else 200)


def _has_metrics_token(request) -> bool:
    token = settings.METRICS_TOKEN
    offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and constant_time_compare(offered, token)


def _probe(check) -> str:
    try:
        warning = check()
    except Exception as error:  # any failure is the answer, not a 500
        return str(error) or type(error).__name__
    return warning or "ok"


# --- pages -----------------------------------------------------------------------


def _error_page(request, error: Exception):
    status = 410 if isinstance(error, selectors.Gone) else 404
    response = render(request, "releases/error.html", {"status": status, "message": str(error)}, status=status)
    return caching.uncacheable(response)


@require_safe
def index(request):
    models = selectors.models_for_index(request.user)
    response = render(request, "releases/index.html", {"models": models})
    return caching.cacheable(response, request, [caching.index_key()])


@require_safe
def model_page(request, model):
    try:
        found, versions, latest = selectors.model_with_versions(model, request.user)
    except selectors.NotFound as error:
        return _error_page(request, error)
    response = render(request, "releases/model.html", {"model": found, "versions": versions, "latest": latest})
    return caching.cacheable(response, request, [caching.model_key(model)])


@require_safe
def version_page(request, model, version):
    try:
        page = selectors.version_with_files(model, version, request.user)
    except (selectors.NotFound, selectors.Gone) as error:
        return _error_page(request, error)
    resolved = page.version
    links = VersionLinks(request, model, resolved.version)
    counter = observability.SigningCounter(signer())
    rows = _file_rows(page.files, links, download_base(request))
    counter.report()
    context = {
        "model": resolved.model,
        "version": resolved,
        "requested": version,
        "rows": rows,
        "curl_commands": "".join(f"curl -fL --create-dirs -o {shlex.quote(row['path'])} {row['stable_url']}\n" for row in rows),
        "notes_html": resolved.notes_html,  # rendered when the notes were written
        "links": links,
        "is_latest": version == selectors.LATEST or _is_latest(resolved),
        "total_size": sum(file.size for file in page.files),
    }
    response = render(request, "releases/version.html", context)
    return caching.cacheable(
        response, request, [caching.model_key(model), caching.version_key(model, resolved.version)]
    )


def _file_rows(files: list[selectors.FileInfo], links: VersionLinks, base_url: str) -> list[dict]:
    """Everything a row shows, formatted here: rows are many, template lookups are not free."""
    sign = signer().link
    return [
        {
            "path": file.path,
            "download_url": sign(file.key, file.name, base_url=base_url).url,
            "stable_url": links.file(file.path),
            "size": filesizeformat(file.size),
            "bytes": f"{file.size:,}" if file.size >= 1024 else "",  # small sizes already show bytes
            "sha256": file.sha256,
        }
        for file in files
    ]


def _is_latest(version: Version) -> bool:
    latest = Version.objects.latest_for(version.model_id)
    return latest is not None and latest.pk == version.pk


# --- stable URLs -------------------------------------------------------------------


def _plain_error(error: Exception):
    status = 410 if isinstance(error, selectors.Gone) else 404
    return caching.uncacheable(HttpResponse(f"{error}\n", status=status, content_type="text/plain; charset=utf-8"))


@require_safe
def download(request, model, version, path):
    """302 to a freshly signed link; GET and HEAD alike, never cached."""
    try:
        file = selectors.resolve_file(model, version, path, request.user)
    except (selectors.NotFound, selectors.Gone) as error:
        return _plain_error(error)
    counter = observability.SigningCounter(signer())
    link = counter.signer.link(file.key, file.name, base_url=download_base(request))
    counter.report(**{f"redirects:{file.version.model.slug}": 1})
    response = HttpResponseRedirect(link.url)
    response["X-Artifact-SHA256"] = file.sha256
    response["X-Artifact-Size"] = str(file.size)
    response["X-Artifact-Version"] = file.version.version
    response["X-Artifact-Expires"] = link.expires_at_iso
    return caching.uncacheable(response)


@never_cache
@require_safe
def metrics(request):
    """Prometheus text format, for the holder of METRICS_TOKEN only (and invisible without one)."""
    if not settings.METRICS_TOKEN:
        return HttpResponse(status=404)
    if not _has_metrics_token(request):
        response = HttpResponse("A valid bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(observability.prometheus_text(), content_type="text/plain; version=0.0.4; charset=utf-8")


# --- the start-script client ----------------------------------------------------------------

CLIENT_SOURCE = Path(__file__).resolve().parent / "client" / "fetch-model.sh"
SITE_PLACEHOLDER = "__MODEL_SITE__"


@lru_cache(maxsize=1)
def _client_source() -> str:
    return CLIENT_SOURCE.read_text()


@require_safe
def fetch_model_script(request):
    """The POSIX sh client, with this site's address rendered in (MODEL_SITE overrides it)."""
    site = site_url(request)
    if "'" in site or "\n" in site:  # never true for a valid host; the script quotes it in single quotes
        return HttpResponse("Invalid site address.\n", status=400, content_type="text/plain")
    response = HttpResponse(_client_source().replace(SITE_PLACEHOLDER, site), content_type="text/x-shellscript; charset=utf-8")
    response["Content-Disposition"] = 'inline; filename="fetch-model.sh"'
    return caching.cacheable(response, request, ["client"])


# --- the local backend's file server ------------------------------------------------

@require_safe
def local_file(request, key):
    """Serve an object of the local backend to the holder of a valid signed link, with Range support."""
    try:
        verify_local_link(local_file_path(key), request.GET.get("expires"), request.GET.get("signature"))
    except LinkRefused as error:
        return caching.uncacheable(HttpResponse(f"{error}\n", status=403, content_type="text/plain; charset=utf-8"))
    file = File.objects.select_related("version__model").filter(key=key).first()
    if file is None:
        return _plain_error(selectors.NotFound("This file no longer exists."))
    if file.version.status == Version.Status.WITHDRAWN:
        return _plain_error(selectors.Gone("This version was withdrawn."))
    store = release_store()
    if store.backend_name != "local":
        return _plain_error(selectors.NotFound("Files are not served by this site."))
    try:
        handle = store.open(key)
    except OSError:
        return _plain_error(selectors.NotFound("The object is missing from storage."))
    return _ranged_file_response(request, handle, file)


def _ranged_file_response(request, handle, file: File):
    size = os.fstat(handle.fileno()).st_size
    etag = f'"{file.sha256}"'
    try:
        wanted = http_ranges.requested_range(
            request.method, request.headers.get("Range", ""), request.headers.get("If-Range", ""), etag, size
        )
    except http_ranges.Unsatisfiable:
        handle.close()
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return caching.uncacheable(response)
    status = 206 if wanted else 200
    start, end = (wanted.start, wanted.end) if wanted else (0, size - 1)
    handle.seek(start)
    length = end - start + 1
    if end == size - 1:
        # To the end of the file: a file response, which WSGI servers send with sendfile(2).
        response = FileResponse(handle, status=status, content_type=file.content_type)
        response.block_size = 1024 * 1024  # for servers without sendfile (runserver): fewer, larger reads
    else:
        response = StreamingHttpResponse(_limited(handle, length), status=status, content_type=file.content_type)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["Content-Disposition"] = content_disposition(file.name)
    response["ETag"] = etag
    response["X-Artifact-SHA256"] = file.sha256
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return caching.cacheable_bytes(response, file, int(request.GET["expires"]), int(time.time()))


def _limited(handle, length: int, chunk_size: int = 1024 * 1024):
    try:
        while length > 0:
            chunk = handle.read(min(chunk_size, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        handle.close()
