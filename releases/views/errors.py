"""What the site answers when something is not there: unknown (404), withdrawn (410), or broken
(500), for pages, stable URLs, the file server and every URL no route matches.

One rule for the form: a client whose `Accept` names `text/html` (every browser) gets a styled page
with ways on (closest model names, the model's versions, its latest); any other client (`curl`'s
`*/*`, `text/plain`, scripts) gets the same words as plain text. Under /api/ errors stay JSON
`{"detail": ...}` (the API's handlers and JsonApiErrorsMiddleware), with the same suggestions.

A version named in another case (`V23`) is the version whose name it is (`v23`): versions are
case-blind, as the admin's unique constraint treats them. Pages and stable URLs redirect to the
stored spelling; the API answers for it directly."""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template import loader
from django.urls import NoReverseMatch, reverse

from .. import caching, selectors, suggestions

HTML_TYPES = ("text/html", "application/xhtml+xml")


def status_of(error: Exception) -> int:
    return 410 if isinstance(error, selectors.Gone) else 404


def wants_html(request, *, page: bool = True) -> bool:
    """Whether `Accept` names HTML; a client that sends no `Accept` at all gets what the URL is
    (HTML for a page, plain text for a file)."""
    accept = request.headers.get("Accept", "")
    if not accept:
        return page
    return any(kind in accept for kind in HTML_TYPES)


def names_in(request) -> tuple[str | None, str | None]:
    """The model and version the URL named (pages use model_slug, the API model)."""
    kwargs = request.resolver_match.kwargs if request.resolver_match else {}
    return kwargs.get("model_slug") or kwargs.get("model"), kwargs.get("version")


def stored_spelling_url(request) -> str | None:
    """The same URL with the version as it is stored, when only its case differed; else None."""
    slug, version = names_in(request)
    spelled = suggestions.stored_spelling(slug, version, request.user) if slug and version else None
    if spelled is None:
        return None
    match = request.resolver_match
    try:
        path = reverse(f"{match.namespace}:{match.url_name}" if match.namespace else match.url_name,
                       kwargs={**match.kwargs, "version": spelled})  # fmt: skip
    except NoReverseMatch:
        return None
    query = request.META.get("QUERY_STRING", "")
    return path + (f"?{query}" if query else "")


def detail(request, error: Exception) -> str:
    """The error's sentence with what the visitor may have meant (the API's `detail`, too)."""
    slug, version = names_in(request)
    if isinstance(error, selectors.NotFound) and slug:
        extra = suggestions.for_missing(slug, version, request.user).sentence()
        if extra:
            return f"{error} {extra}"
    return str(error)


def answer(request, error: Exception, *, page: bool = True):
    """The response for a NotFound or Gone raised by a selector, in the form the client reads
    (`page`: whether the URL names a page rather than a file)."""
    if isinstance(error, selectors.NotFound):
        canonical = stored_spelling_url(request)
        if canonical:
            return caching.uncacheable(HttpResponseRedirect(canonical))
    if wants_html(request, page=page):
        return error_page(request, error)
    return plain_error(error, message=detail(request, error))


def error_page(request, error: Exception):
    status = status_of(error)
    slug, version = names_in(request)
    context = {"status": status, "message": str(error), "slug": slug, "version": version}
    if slug and isinstance(error, selectors.NotFound):
        context["suggested"] = suggestions.for_missing(slug, version, request.user)
    if isinstance(error, selectors.Gone) and slug:
        context["gone"] = suggestions.for_missing(slug, "", request.user)  # the model's other versions
        context["withdrawn_reason"] = suggestions.withdrawal_reason(slug, version or "")
    response = render(request, "releases/error.html", context, status=status)
    response["Vary"] = "Accept"
    return caching.uncacheable(response)


def plain_error(error: Exception, message: str | None = None):
    text = message if message is not None else str(error)
    response = HttpResponse(f"{text}\n", status=status_of(error), content_type="text/plain; charset=utf-8")
    response["Vary"] = "Accept"
    return caching.uncacheable(response)


# --- handlers for every URL (site_config.urls) ---------------------------------------------------


def not_found(request, exception=None):
    """No route matched (or a view raised Http404): styled for browsers, plain for others."""
    error = selectors.NotFound(f"There is nothing at {request.path}.")
    if request.path.startswith("/api/"):
        return plain_error(error)  # JsonApiErrorsMiddleware turns it into {"detail": ...}
    return answer(request, error)


def server_error(request):
    """A 500 that needs nothing that may be broken: no database, no session, no context processors."""
    body, content_type = "Something went wrong on our side; try again in a minute.\n", "text/plain; charset=utf-8"
    if not request.path.startswith("/api/") and wants_html(request, page=True):
        try:
            body, content_type = loader.get_template("releases/500.html").render(), "text/html; charset=utf-8"
        except Exception:  # noqa: BLE001 - whatever broke the page may break this too: the plain words stay
            pass
    return caching.uncacheable(HttpResponse(body, status=500, content_type=content_type))
