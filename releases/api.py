"""The JSON API for start scripts (django-ninja; the OpenAPI document is generated from this code)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from ninja import NinjaAPI

from . import caching, selectors, suggestions
from .api_schemas import Error, ModelList, ModelOut, VersionOut
from .links import VersionLinks, absolute, file_links
from .reports_api import report_url, with_report_url
from .reports_api import router as reports_router
from .views import errors

api = NinjaAPI(
    title="Model Releases API",
    version="1",
    description=(
        "Stable metadata and freshly signed download links for model versions. Wherever `{version}` "
        "appears it may be `latest`: the highest published, non-prerelease version. Signed links are valid "
        "for at least SIGNED_URL_TTL seconds (`expires_at`); the `stable_url` of a file never expires."
    ),
    urls_namespace="api-1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


ERRORS = {404: Error, 410: Error}


def header(description: str) -> dict:
    return {"description": description, "schema": {"type": "string"}}


ARTIFACT_VERSION = header("The version's stored name, whatever was asked (`latest`, another case).")
REPORT_URL = header("Where the served clients send their run report; absent when the site takes none.")
# What a run that ends at an error learns from it: the clients report such runs too.
VERSION_ERRORS = {
    404: {
        "description": "No such model or version (`detail` names the closest ones); X-Report-URL when the model "
        "exists, so that a run asking for a version it lacks is counted.",
        "headers": {"X-Report-URL": REPORT_URL},
    },
    410: {
        "description": "A withdrawn version.",
        "headers": {"X-Artifact-Version": ARTIFACT_VERSION, "X-Report-URL": REPORT_URL},
    },
}


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


@api.exception_handler(selectors.NotFound)
def not_found(request, error):
    """With what was meant (closest models, the model's versions), which both clients print. A version
    named in another case is answered as the stored one (`V23` is `v23`: versions are case-blind)."""
    slug, version = errors.names_in(request)
    spelled = suggestions.stored_spelling(slug, version, request.user) if slug and version else None
    if spelled is not None:
        return request.resolver_match.func(request, **{**request.resolver_match.kwargs, "version": spelled})
    response = api.create_response(request, {"detail": errors.detail(request, error)}, status=404)
    if slug and version:  # a known model asked for a version it lacks (a typo in a README): reported
        with_report_url(request, response, model=slug)
    return caching.uncacheable(response)


@api.exception_handler(selectors.Gone)
def gone(request, error):
    """A withdrawn version: with its stored name and where to report, so a run that ends here is counted."""
    response = api.create_response(request, {"detail": str(error)}, status=410)
    if error.version:
        response["X-Artifact-Version"] = error.version
    return caching.uncacheable(with_report_url(request, response))


def model_api_url(request, slug: str) -> str:
    return absolute(request, reverse("api-1:model", kwargs={"model": slug}))


@api.get("/v1/models", response=ModelList, url_name="models", summary="List models")
def list_models(request: HttpRequest, response: HttpResponse):
    models = selectors.models_for_index(request.user)
    caching.cacheable(response, request, [caching.index_key()])
    return {
        "models": [
            {
                "model": model.slug,
                "name": model.name,
                "summary": model.summary,
                "latest": model.latest_version,
                "url": model_api_url(request, model.slug),
                "license": model.license or None,
                "tags": [tag.name for tag in model.tags.all()],
                "downloads": selectors.model_downloads(model).as_json(),
            }
            for model in models
        ]
    }


@api.get("/v1/models/{model}", response={200: ModelOut, **ERRORS}, url_name="model", summary="A model and its versions")
def get_model(request: HttpRequest, response: HttpResponse, model: str):
    found, versions, latest = selectors.model_with_versions(model, request.user)
    base = model_api_url(request, found.slug)
    caching.cacheable(response, request, [caching.model_key(found.slug)])
    return {
        "model": found.slug,
        "name": found.name,
        "summary": found.summary,
        "description": found.description,
        "latest": latest.version if latest else None,
        "url": base,
        "versions": [
            {
                "version": version.version,
                "status": version.status,
                "prerelease": version.prerelease,
                "published_at": iso(version.published_at),
                "yanked_reason": version.yanked_reason,
                "url": f"{base}/versions/{version.version}",
                "downloads": version.downloads.as_json(),
            }
            for version in versions
        ],
        "license": found.license or None,
        "tags": [tag.name for tag in found.tags.all()],
        "links": {
            "homepage": found.homepage_url or None,
            "source": found.source_url or None,
            "paper": found.paper_url or None,
        },  # fmt: skip
        "downloads": selectors.model_downloads(found).as_json(),
    }


@api.get(
    "/v1/models/{model}/versions/{version}",
    response={200: VersionOut, **ERRORS},
    url_name="version",
    summary="A version with signed download links",
    openapi_extra={"responses": {200: {"headers": {"X-Artifact-Version": ARTIFACT_VERSION}}, **VERSION_ERRORS}},
)
def get_version(request: HttpRequest, model: str, version: str):
    page = selectors.version_with_files(model, version, request.user)
    resolved = page.version
    files = [row.as_json() for row in file_links(request, page.files, VersionLinks(request, model, resolved.version))]
    body = {
        "model": resolved.model.slug,
        "version": resolved.version,
        "status": resolved.status,
        "prerelease": resolved.prerelease,
        "published_at": iso(resolved.published_at),
        "notes": resolved.notes,
        "yanked_reason": resolved.yanked_reason,
        "files": files,
        "total_size": page.total_size,
        "changes": page.changes.as_json(),
        "downloads": page.downloads.as_json(),
        "report_url": report_url(request),
    }
    # Built from plain values that match VersionOut (the tests hold it to the OpenAPI schema), so
    # serialised directly: validating every file object again would cost more than signing it.
    json_response = JsonResponse(body, json_dumps_params={"separators": (",", ":")})
    json_response["X-Artifact-Version"] = resolved.version
    return caching.cacheable(
        json_response, request, [caching.model_key(model), caching.version_key(model, resolved.version)]
    )


@api.get(
    "/v1/models/{model}/versions/{version}/sha256sums",
    url_name="sha256sums",
    summary="Checksums for sha256sum -c",
    response={200: str, **ERRORS},
    openapi_extra={
        "responses": {
            200: {
                "description": "One `<sha256>  <path>` line per file, for `sha256sum -c`.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "headers": {
                    "X-Artifact-Version": ARTIFACT_VERSION,
                    "X-Artifact-Status": header("The version's status: published or yanked."),
                    "X-Artifact-Yanked-Reason": header("Why it was yanked, percent-encoded UTF-8 (yanked only)."),
                    "X-Report-URL": REPORT_URL,
                },
            },
            **VERSION_ERRORS,
        }
    },
)
def get_sha256sums(request: HttpRequest, model: str, version: str):
    resolved = selectors.resolve_version(model, version, request.user)
    body = "".join(f"{file.sha256}  {file.path}\n" for file in selectors.files_of(resolved))
    response = HttpResponse(body, content_type="text/plain; charset=utf-8")
    response["X-Artifact-Version"] = resolved.version
    if url := report_url(request):
        response["X-Report-URL"] = url
    # The shell client reads no JSON: it learns here that a version is yanked, and why.
    response["X-Artifact-Status"] = resolved.status
    if resolved.yanked_reason and resolved.status == resolved.Status.YANKED:
        response["X-Artifact-Yanked-Reason"] = quote(resolved.yanked_reason, safe="")
    return caching.cacheable(
        response, request, [caching.model_key(model), caching.version_key(model, resolved.version)]
    )


api.add_router("", reports_router)  # POST /api/v1/reports (reports_api.py)
