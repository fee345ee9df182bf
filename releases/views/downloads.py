"""Downloads: stable URLs (302 to a freshly signed link), chunk manifests' stable URLs, and the local
backend's file server (files, and manifests at `.chunks/<sha256>`)."""

from __future__ import annotations

import os
import time

from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.views.decorators.http import require_safe

from .. import caching, chunking, http_ranges, observability, selectors
from ..downloads import count_download
from ..links import download_base
from ..models import File
from ..reports_api import with_report_url
from ..signing import LinkRefused, content_disposition, local_file_path, signer, verify_local_link
from ..storage import release_store
from .errors import answer, plain_error


@require_safe
def download(request, model_slug, version, path):
    """302 to a freshly signed link; GET and HEAD alike, never cached."""
    try:
        file = selectors.resolve_file(model_slug, version, path, request.user)
    except selectors.NotFound as error:
        return answer(request, error, page=False)
    except selectors.Gone as error:  # where to report, as the API's 410 says, for a run that starts here
        gone = answer(request, error, page=False)
        if error.version:
            gone["X-Artifact-Version"] = error.version
        return with_report_url(request, gone)
    link = signer().link(file.key, file.name, base_url=download_base(request))
    observability.count(**{f"redirects:{file.version.model.slug}": 1})
    count_download(request, file.pk)  # a GET that starts a download; never a HEAD or a later segment
    response = HttpResponseRedirect(link.url)
    response["X-Artifact-SHA256"] = file.sha256
    response["X-Artifact-Size"] = str(file.size)
    response["X-Artifact-Version"] = file.version.version
    response["X-Artifact-Expires"] = link.expires_at_iso
    return caching.uncacheable(response)


@require_safe
def chunks(request, sha256):
    """302 to a freshly signed link to the chunk manifest of the files with this SHA-256; GET and HEAD
    alike, never cached. 404 unless one of them is a file the requester may download."""
    try:
        key = selectors.chunk_manifest(sha256, request.user)
    except selectors.NotFound as error:
        return plain_error(error)
    link = signer().link(key, f"{sha256}.chunks", base_url=download_base(request))
    response = HttpResponseRedirect(link.url)
    response["X-Artifact-Expires"] = link.expires_at_iso
    return caching.uncacheable(response)


@require_safe
def local_file(request, key):
    """Serve an object of the local backend to the holder of a valid signed link, with Range support."""
    try:
        verify_local_link(local_file_path(key), request.GET.get("expires"), request.GET.get("signature"))
    except LinkRefused as error:
        return caching.uncacheable(HttpResponse(f"{error}\n", status=403, content_type="text/plain; charset=utf-8"))
    manifest = key.startswith(chunking.KEY_PREFIX)  # no file's key starts so: it starts with a model slug
    try:
        found = selectors.manifest_is_public(key) if manifest else selectors.file_by_key(key)
    except (selectors.NotFound, selectors.Gone) as error:
        return answer(request, error, page=False)  # a withdrawn file opened in a browser gets a page, not bare text
    store = release_store()
    if store.backend_name != "local":
        return plain_error(selectors.NotFound("Files are not served by this site."))
    try:
        handle = store.open(key)
    except OSError:
        return plain_error(selectors.NotFound("The object is missing from storage."))
    if manifest:
        return manifest_response(request, handle, key, public=found)
    return file_response(request, handle, found)


def file_response(request, handle, file: File):
    """The bytes of `file` from an open handle: the whole file or the requested range (RFC 9110)."""
    response = ranged_response(request, handle, file.content_type, file.name, etag=f'"{file.sha256}"')
    if response.status_code == 416:
        return response
    response["X-Artifact-SHA256"] = file.sha256
    return caching.cacheable_bytes(response, file, int(request.GET["expires"]), int(time.time()))


def manifest_response(request, handle, key: str, *, public: bool):
    """A chunk manifest's bytes: content-addressed, so they never change (shared caches may keep a
    published file's until the link expires; a draft's are for the staff member who asked)."""
    sha256 = chunking.sha256_of_key(key)
    response = ranged_response(
        request, handle, "application/octet-stream", f"{sha256}.chunks", etag=f'"chunks1-{sha256}"'
    )
    if response.status_code == 416:
        return response
    return caching.cacheable_manifest(response, public, int(request.GET["expires"]), int(time.time()))


def ranged_response(request, handle, content_type: str, filename: str, *, etag: str):
    """The bytes from an open handle: the whole object or the requested range (RFC 9110)."""
    size = os.fstat(handle.fileno()).st_size
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
        response = FileResponse(handle, status=status, content_type=content_type)
        response.block_size = 1024 * 1024  # for servers without sendfile (runserver): fewer, larger reads
    else:
        response = StreamingHttpResponse(_limited(handle, length), status=status, content_type=content_type)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["Content-Disposition"] = content_disposition(filename)
    response["ETag"] = etag
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response


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
