"""Operations: liveness and readiness, Prometheus metrics, and the served start-script client."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .. import caching, health, run_alerts
from ..links import site_url
from ..metrics import prometheus_text


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
        if alerts := _open_run_alerts():  # versions whose first runs are failing
            body["run_alerts"] = alerts
        if warnings:
            body["warning_details"] = warnings
        if down:
            body["detail"] = "; ".join(f"{name}: {problem}" for name, problem in down.items())
    return JsonResponse(body, status=503 if down else 200)


def _has_metrics_token(request) -> bool:
    token = settings.METRICS_TOKEN
    offered = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and constant_time_compare(offered, token)


def _open_run_alerts() -> list[dict] | str:
    """Versions whose first runs are failing (run_alerts.py); a sentence when they cannot be read."""
    try:
        return run_alerts.open_incidents()
    except Exception as error:  # the database is down: the checks say so already
        return f"unknown ({type(error).__name__})"


def _probe(check) -> str:
    try:
        warning = check()
    except Exception as error:  # any failure is the answer, not a 500
        return str(error) or type(error).__name__
    return warning or "ok"


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
    return HttpResponse(prometheus_text(), content_type="text/plain; version=0.0.4; charset=utf-8")


CLIENTS = Path(__file__).resolve().parent.parent / "client"
CLIENT_SOURCE = CLIENTS / "fetch-model.sh"
PYTHON_CLIENT_SOURCE = CLIENTS / "fetch_model.py"

SITE_PLACEHOLDER = "__MODEL_SITE__"


@lru_cache(maxsize=2)
def _client_source(path: Path) -> str:
    return path.read_text()


def _served_client(request, path: Path, content_type: str):
    """A client with this site's address rendered in (MODEL_SITE overrides it)."""
    site = site_url(request)
    if "'" in site or "\n" in site:  # never true for a valid host; the clients quote it in single quotes
        return HttpResponse("Invalid site address.\n", status=400, content_type="text/plain")
    response = HttpResponse(_client_source(path).replace(SITE_PLACEHOLDER, site), content_type=content_type)
    response["Content-Disposition"] = f'inline; filename="{path.name}"'
    return caching.cacheable(response, request, ["client"])


@require_safe
def fetch_model_script(request):
    """The POSIX sh client."""
    return _served_client(request, CLIENT_SOURCE, "text/x-shellscript; charset=utf-8")


@require_safe
def fetch_model_python(request):
    """The Python client (standard library only; Linux, macOS and Windows)."""
    return _served_client(request, PYTHON_CLIENT_SOURCE, "text/x-python; charset=utf-8")
