"""Public HTTP views. Thin: they call selectors and services."""

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe


@never_cache
@require_safe
def healthz(request):
    """Liveness: the process answers. No I/O, so a slow database never restarts healthy web workers."""
    return JsonResponse({"status": "ok"})
