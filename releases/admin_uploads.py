"""The admin's page for large files: a draft's files uploaded from the browser, in parts, resumable.

The page (static/releases/upload.js) talks to the JSON views below; each checks, on every request,
that the user is staff (the admin site's own check) and follows the version's own permissions:
opening a version's page or upload needs the right to view versions (as its change page does),
uploading also the rights to add files and to change the version; an upload belongs to the user who
started it, and only those who may change versions see or abort someone else's. What a user may not
see is answered 404 with a sentence that names nothing. Parts go to the URLs that
`sign_part` hands out: S3's own (no file bytes pass through the site), or, for the local store,
`part_data` here, which accepts a part only with a token for that part that has not expired.
"""

from __future__ import annotations

import json
from functools import wraps

from django.conf import settings
from django.core import signing
from django.http import Http404, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import services
from .models import BrowserUpload, Version
from .services import browser_uploads
from .storage import PART_CHECKSUM_HEADER

PART_TOKEN_SALT = "releases.browser-upload-part"
ADD_FILE, VIEW_VERSION, CHANGE_VERSION = "releases.add_file", "releases.view_version", "releases.change_version"
NO_VERSION, NO_UPLOAD = "There is no such version.", "There is no such upload."


class Hidden(Exception):
    """Something the user may not see (or that does not exist): 404, and the sentence names nothing."""


class Refused(Exception):
    """Something the user sees but may not do: 403."""


def upload_urls(admin_site) -> list:
    """URLs under /admin/releases/version/ (VersionAdmin.get_urls puts them first)."""

    def view(function, name, **kwargs):
        return path(function.route, admin_site.admin_view(function), kwargs, name=f"releases_version_{name}")

    return [
        view(upload_page, "upload", admin_site=admin_site),
        view(start, "upload_start"),
        view(empty, "upload_empty"),
        view(status, "upload_status"),
        view(match, "upload_match"),
        view(sign, "upload_sign"),
        view(part_data, "upload_part"),
        view(complete, "upload_complete"),
        view(abort, "upload_abort"),
    ]


def route(pattern: str):
    def attach(function):
        function.route = pattern
        return function

    return attach


def _may_view_versions(user) -> bool:
    return user.has_perm(VIEW_VERSION) or user.has_perm(CHANGE_VERSION)  # the admin's rule: change implies view


def json_view(*, permissions: tuple[str, ...] = (ADD_FILE,)):
    """A JSON view open to a user with any of ``permissions`` (403 otherwise, checked on every
    request), whose refusals are JSON: bad input 400, not allowed 403, not visible 404."""

    def decorate(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not any(request.user.has_perm(permission) for permission in permissions):
                return JsonResponse({"error": "You do not have permission to add files."}, status=403)
            try:
                return view(request, *args, **kwargs)
            except services.ReleaseError as error:
                return JsonResponse({"error": str(error)}, status=400)
            except Refused as error:
                return JsonResponse({"error": str(error)}, status=403)
            except Hidden as error:
                return JsonResponse({"error": str(error)}, status=404)

        return checked

    return decorate


def _version(user, object_id, *, to_upload: bool) -> Version:
    version = Version.objects.select_related("model").filter(pk=object_id).first()
    if version is None or not _may_view_versions(user):
        raise Hidden(NO_VERSION)
    if to_upload:
        _require_upload_rights(user)
    return version


def _upload(user, upload_id, *, to_upload: bool = False) -> BrowserUpload:
    """The upload, for its starter or someone who may change versions; to send parts, for someone
    who may change versions and add files."""
    upload = BrowserUpload.objects.select_related("version__model").filter(pk=upload_id).first()
    if upload is None or not _may_view_versions(user):
        raise Hidden(NO_UPLOAD)
    if upload.started_by_id != user.pk and not user.has_perm(CHANGE_VERSION):
        raise Hidden(NO_UPLOAD)
    if to_upload:
        _require_upload_rights(user)
    return upload


def _require_upload_rights(user) -> None:
    if not (user.has_perm(ADD_FILE) and user.has_perm(CHANGE_VERSION)):
        raise Refused("Uploading needs the permissions to add files and to change versions.")


def _payload(request) -> dict:
    try:
        data = json.loads(request.body or b"{}")
    except RecursionError as error:  # json's decoder recurses once per level of nesting
        raise services.ReleaseError("The request nests too deeply to be read; send a flat JSON object.") from error
    except ValueError as error:
        raise services.ReleaseError(f"The request is not JSON: {error}.") from error
    if not isinstance(data, dict):
        raise services.ReleaseError("The request is not a JSON object.")
    return data


def _path_and_sha256(request) -> tuple[dict, str, str]:
    """The request's JSON with the file's path and its expected SHA-256 ("" when not given)."""
    data = _payload(request)
    if not isinstance(data.get("path"), str) or not isinstance(data.get("sha256", ""), str):
        raise services.ReleaseError("path (and sha256, if given) are strings.")
    return data, data["path"], data.get("sha256", "")


def _number(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise services.ReleaseError(f"{what} is a whole number.")
    return value


def describe(upload: BrowserUpload) -> dict:
    file = upload.file
    return {
        "id": str(upload.id),
        "path": upload.path,
        "size": upload.size,
        "part_size": upload.part_size,
        "part_count": upload.part_count,
        "state": upload.state,
        "state_label": upload.get_state_display(),
        "detail": upload.detail,
        "file": {"path": file.path, "size": file.size, "sha256": file.sha256} if file else None,
        "links": {
            "status": reverse("admin:releases_version_upload_status", args=[upload.id]),
            "match": reverse("admin:releases_version_upload_match", args=[upload.id]),
            "sign": reverse("admin:releases_version_upload_sign", args=[upload.id, 0]).removesuffix("0/sign/"),
            "complete": reverse("admin:releases_version_upload_complete", args=[upload.id]),
            "abort": reverse("admin:releases_version_upload_abort", args=[upload.id]),
        },
    }


@route("<int:object_id>/upload/")
@require_GET
def upload_page(request, object_id, admin_site):
    version = Version.objects.select_related("model").filter(pk=object_id).first()
    if version is None or not request.user.has_perm(ADD_FILE) or not _may_view_versions(request.user):
        raise Http404(NO_VERSION)
    recent = version.browser_uploads.select_related("file").order_by("-created_at")
    if not request.user.has_perm(CHANGE_VERSION):
        recent = recent.filter(started_by=request.user)  # others' uploads are theirs
    context = {
        **admin_site.each_context(request),
        "title": f"Upload files to {version.model.slug} {version.version}",
        "opts": Version._meta,
        "version": version,
        "uploads": [describe(upload) for upload in recent[:20]],
        "start_url": reverse("admin:releases_version_upload_start", args=[version.pk]),
        "empty_url": reverse("admin:releases_version_upload_empty", args=[version.pk]),
        "parallel_parts": 4,
    }
    response = TemplateResponse(request, "admin/releases/version/upload.html", context)
    origin = browser_uploads.part_upload_origin()
    if origin and settings.CONTENT_SECURITY_POLICY:  # the page's parts go to the bucket itself
        response["Content-Security-Policy"] = f"{settings.CONTENT_SECURITY_POLICY}; connect-src 'self' {origin}"
    return response


@route("<int:object_id>/upload/start/")
@require_POST
@json_view()
def start(request, object_id):
    version = _version(request.user, object_id, to_upload=True)
    data, path, expected_sha256 = _path_and_sha256(request)
    upload = browser_uploads.start_upload(
        version, path, _number(data.get("size"), "size"), expected_sha256=expected_sha256, user=request.user
    )
    return JsonResponse(_with_stored_parts(upload))


@route("<int:object_id>/upload/empty/")
@require_POST
@json_view()
def empty(request, object_id):
    """An empty file (a folder's `.gitkeep`): no parts to send, stored by this one request."""
    version = _version(request.user, object_id, to_upload=True)
    _, path, expected_sha256 = _path_and_sha256(request)
    file = browser_uploads.add_empty_file(version, path, expected_sha256=expected_sha256)
    return JsonResponse({"path": file.path, "size": file.size, "sha256": file.sha256})


def _with_stored_parts(upload: BrowserUpload) -> dict:
    stored = browser_uploads.stored_parts(upload)
    return {**describe(upload), "stored": [{"number": p.number, "size": p.size, "sha256": p.sha256} for p in stored]}


@route("uploads/<uuid:upload_id>/match/")
@require_POST
@json_view()
def match(request, upload_id):
    """The page's checksums of its file's parts at the numbers storage holds: the upload to go on
    with (this one, or a new one when the bytes differ), with the parts it holds."""
    upload = _upload(request.user, upload_id, to_upload=True)
    data = _payload(request)
    expected = data.get("sha256", "")
    if not isinstance(expected, str):
        raise services.ReleaseError("sha256 (the expected SHA-256, if given) is a string.")
    kept = browser_uploads.resume_if_same(upload, _part_checksums(data), expected_sha256=expected, user=request.user)
    return JsonResponse({**_with_stored_parts(kept), "kept": kept.pk == upload.pk})


def _part_checksums(data: dict) -> dict[int, str]:
    parts = data.get("parts")
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        raise services.ReleaseError("parts is a list of {number, sha256}.")
    return {_number(part.get("number"), "A part number"): part.get("sha256") for part in parts}


@route("uploads/<uuid:upload_id>/")
@require_GET
@json_view(permissions=(ADD_FILE, CHANGE_VERSION))
def status(request, upload_id):
    return JsonResponse(describe(_upload(request.user, upload_id)))


@route("uploads/<uuid:upload_id>/parts/<int:number>/sign/")
@require_POST
@json_view()
def sign(request, upload_id, number):
    upload = _upload(request.user, upload_id, to_upload=True)
    sha256 = _payload(request).get("sha256")
    if not isinstance(sha256, str):
        raise services.ReleaseError("sha256 is the part's base64 SHA-256, a string.")
    target = browser_uploads.sign_part(upload, number, sha256)
    url = target.url or _own_part_url(request, upload, number, sha256)
    return JsonResponse({"url": url, "method": "PUT", "headers": target.headers})


def _own_part_url(request, upload: BrowserUpload, number: int, sha256: str) -> str:
    """For the local store: this site's part URL, with a token for this part and checksum that
    expires like S3's presigned URLs."""
    token = signing.dumps({"upload": str(upload.id), "part": number, "sha256": sha256}, salt=PART_TOKEN_SALT)
    return reverse("admin:releases_version_upload_part", args=[upload.id, number]) + f"?token={token}"


@route("uploads/<uuid:upload_id>/parts/<int:number>/")
@require_http_methods(["PUT"])
@json_view()
def part_data(request, upload_id, number):
    upload = _upload(request.user, upload_id, to_upload=True)
    try:
        claim = signing.loads(
            request.GET.get("token", ""), salt=PART_TOKEN_SALT, max_age=settings.UPLOAD_PART_URL_SECONDS
        )
    except signing.SignatureExpired:
        return JsonResponse({"error": "This part URL has expired; ask for a new one."}, status=403)
    except signing.BadSignature:
        return JsonResponse({"error": "This part URL is not valid."}, status=403)
    sha256 = request.headers.get(PART_CHECKSUM_HEADER, "")
    if claim != {"upload": str(upload_id), "part": number, "sha256": sha256}:
        return JsonResponse({"error": "This part URL is for another part or checksum."}, status=403)
    try:
        length = int(request.headers.get("Content-Length", ""))
    except ValueError:
        return JsonResponse({"error": "A part needs its Content-Length."}, status=411)
    part = browser_uploads.receive_part(upload, number, request.read, length, sha256)
    return JsonResponse({"number": part.number, "size": part.size, "sha256": part.sha256})


@route("uploads/<uuid:upload_id>/complete/")
@require_POST
@json_view()
def complete(request, upload_id):
    upload = _upload(request.user, upload_id, to_upload=True)
    upload = browser_uploads.complete_upload(upload, _part_checksums(_payload(request)))
    return JsonResponse(describe(upload))


@route("uploads/<uuid:upload_id>/abort/")
@require_POST
@json_view(permissions=(ADD_FILE, CHANGE_VERSION))
def abort(request, upload_id):
    return JsonResponse(describe(browser_uploads.abort_upload(_upload(request.user, upload_id))))
