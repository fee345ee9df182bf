"""Downloads: stable URLs (302 to a freshly signed link) and the local backend's file server."""

from __future__ import annotations

import os
import time

from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.views.decorators.http import require_safe

from .. import caching, http_ranges, observability, selectors
from ..downloads import count_download
from ..links import download_base
from ..models import File
from ..signing import LinkRefused, content_disposition, local_file_path, signer, verify_local_link
from ..storage import release_store
from .errors import plain_error


@require_safe
def download(request, model_slug, version, path):
    """302 to a freshly signed link; GET and HEAD alike, never cached."""
    try:
        file = selectors.resolve_file(model_slug, version, path, request.user)
    except (selectors.NotFound, selectors.Gone) as error:
        return plain_error(error)
    link = signer().link(file.key, file.name, base_url=download_base(request))
    observability.count(**{f"redirects:{file.version.model.slug}": 1})
    if request.method == "GET":  # a HEAD asks about the file; only a GET downloads it
        count_download(file.pk)
    response = HttpResponseRedirect(link.url)
    response["X-Artifact-SHA256"] = file.sha256
    response["X-Artifact-Size"] = str(file.size)
    response["X-Artifact-Version"] = file.version.version
    response["X-Artifact-Expires"] = link.expires_at_iso
    return caching.uncacheable(response)


@require_safe
def local_file(request, key):
    """Serve an object of the local backend to the holder of a valid signed link, with Range support."""
    try:
        verify_local_link(local_file_path(key), request.GET.get("expires"), request.GET.get("signature"))
    except LinkRefused as error:
        return caching.uncacheable(HttpResponse(f"{error}\n", status=403, content_type="text/plain; charset=utf-8"))
    try:
        file = selectors.file_by_key(key)
    except (selectors.NotFound, selectors.Gone) as error:
        return plain_error(error)
    store = release_store()
    if store.backend_name != "local":
        return plain_error(selectors.NotFound("Files are not served by this site."))
    try:
        handle = store.open(key)
    except OSError:
        return plain_error(selectors.NotFound("The object is missing from storage."))
    return file_response(request, handle, file)


def file_response(request, handle, file: File):
    """The bytes of `file` from an open handle: the whole file or the requested range (RFC 9110)."""
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
