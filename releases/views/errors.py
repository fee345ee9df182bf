"""What the site answers when a model or version is unknown (404) or withdrawn (410): one mapping
for pages, stable URLs and the file server (the API has its own JSON handlers for the same errors)."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render

from .. import caching, selectors


def status_of(error: Exception) -> int:
    return 410 if isinstance(error, selectors.Gone) else 404


def error_page(request, error: Exception):
    status = status_of(error)
    response = render(request, "releases/error.html", {"status": status, "message": str(error)}, status=status)
    return caching.uncacheable(response)


def plain_error(error: Exception):
    return caching.uncacheable(
        HttpResponse(f"{error}\n", status=status_of(error), content_type="text/plain; charset=utf-8")
    )
