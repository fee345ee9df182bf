"""Keep the API's promise: every error under /api/ is JSON {"detail": ...}, never an HTML page;
a link that cannot be signed right now is a 503 that says so, never a 500; and the probes
answer whatever address a load balancer or orchestrator uses to reach a node."""

import json
import logging
from http import HTTPStatus

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import resolve, reverse

from . import caching
from .aws import CredentialsUnavailable

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
PROBES = ("releases:healthz", "releases:readyz")


class ProbesOnAnyHostMiddleware:
    """/healthz and /readyz answer on any Host header; every other path keeps Django's host check.

    Docker's HEALTHCHECK, a load balancer's target check or a kubelet reach a node by its own
    address (127.0.0.1:8000, 10.0.0.5:8000), which DJANGO_ALLOWED_HOSTS rightly does not list,
    and Django would answer 400. The probes build no URL from the host, so they are answered
    here, ahead of the middleware that validates it (CommonMiddleware, SecurityMiddleware).
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.paths: frozenset[str] | None = None  # reversed on the first request, once URLs load

    def __call__(self, request):
        if self.paths is None:
            self.paths = frozenset(reverse(name) for name in PROBES)
        if request.path_info in self.paths:
            match = resolve(request.path_info)
            return match.func(request, *match.args, **match.kwargs)
        return self.get_response(request)


class JsonApiErrorsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path.startswith(API_PREFIX)
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return self.as_json(response)
        return response

    @staticmethod
    def as_json(response):
        status = response.status_code
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        detail = {404: "Not found.", 405: "Method not allowed."}.get(status, f"{reason}.")
        response.content = json.dumps({"detail": detail}).encode()
        response["Content-Type"] = "application/json"
        response["Content-Length"] = str(len(response.content))
        return response


class ContentSecurityPolicyMiddleware:
    """Send settings.CONTENT_SECURITY_POLICY on every response that does not set its own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY:
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class SigningUnavailableMiddleware:
    """No valid credentials to sign download links (the provider has been failing): 503, retry soon."""

    RETRY_AFTER = 30

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, CredentialsUnavailable):
            return None
        logger.error("Could not sign download links: %s", exception)
        detail = "Download links cannot be signed right now; try again in a minute."
        if request.path.startswith(API_PREFIX):
            response = JsonResponse({"detail": detail}, status=503)
        else:
            response = HttpResponse(detail + "\n", status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(self.RETRY_AFTER)
        return caching.uncacheable(response)
