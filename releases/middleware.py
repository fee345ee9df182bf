"""Keep the API's promise: every error under /api/ is JSON {"detail": ...}, never an HTML page."""

import json
from http import HTTPStatus

from django.conf import settings

API_PREFIX = "/api/"


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
