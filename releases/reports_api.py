"""The run-report endpoint, `POST /api/v1/reports` (docs/run-reports.md), a router of the JSON API;
and the `report_url` that tells the clients whether, and where, to send.

The body is read here, not by django-ninja, so that every refusal is a 400 `{"detail": ...}` that
names the field (the document still describes the body: RunReport's JSON schema).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Router, Status

from . import run_reports
from .api_schemas import Error
from .links import absolute

router = Router(tags=["run reports"])

OFF = "this site does not accept run reports"
TOO_LARGE = f"a run report is at most {run_reports.MAX_BODY_BYTES} bytes"
TOO_MANY = "too many run reports from this address; try again in a minute"


def report_url(request) -> str | None:
    """Where clients send their run reports; None when the operator turned reports off."""
    return absolute(request, reverse("api-1:reports")) if settings.RUN_REPORTS else None


def with_report_url(request, response: HttpResponse, *, model: str | None = None) -> HttpResponse:
    """`response`, an error a run may end at (a 410, or a 404 naming `model`), with X-Report-URL when
    reports are on, so that such runs are counted too. A 404 gets it only when the endpoint takes
    reports naming that model: a run that asked for a made-up model has nothing it could report."""
    url = report_url(request)
    if url and (model is None or run_reports.reportable_model(model) is not None):
        response["X-Report-URL"] = url
    return response


@router.post(
    "/v1/reports",
    url_name="reports",
    summary="Report how a run of a served client ended",
    description=(
        "Sent once at the end of each run by `fetch-model.sh` and `fetch_model.py`, anonymous: no path, host or "
        "user name, and the site keeps no IP address. Clients send it only to the `report_url` of the version "
        "JSON (or the `X-Report-URL` header of sha256sums), and never with FETCH_MODEL_NO_REPORT=1 or "
        "DO_NOT_TRACK=1. At most 4096 bytes; every field is required and checked. See docs/run-reports.md."
    ),
    response={202: Error, 400: Error, 403: Error, 413: Error, 429: Error},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": run_reports.RunReport.model_json_schema()}},
        }
    },
)
def post_report(request: HttpRequest, response: HttpResponse):
    response["Cache-Control"] = "no-store"
    if not settings.RUN_REPORTS:
        return Status(403, {"detail": OFF})
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return Status(400, {"detail": "Content-Length must be a whole number"})
    if declared > run_reports.MAX_BODY_BYTES:
        return Status(413, {"detail": TOO_LARGE})
    body = request.read(run_reports.MAX_BODY_BYTES + 1)
    if len(body) > run_reports.MAX_BODY_BYTES:
        return Status(413, {"detail": TOO_LARGE})
    try:
        report, model, version = run_reports.read(body)
    except run_reports.Refused as refused:
        return Status(refused.status, {"detail": refused.detail})
    if not run_reports.count(request, report, model, version):
        return Status(429, {"detail": TOO_MANY})
    return Status(202, {"detail": "recorded"})
