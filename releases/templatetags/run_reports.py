"""`{% run_reports_panel owner %}`: the admin's panel of run reports for a version or a model
(templates/admin/releases/run_reports_panel.html), the last 24 hours and the last 30 days."""

from django import template
from django.conf import settings

from ..models import Version
from ..run_stats import windows

register = template.Library()


@register.inclusion_tag("admin/releases/run_reports_panel.html")
def run_reports_panel(owner):
    by = "version" if isinstance(owner, Version) else "model"
    found = windows(by, owner.pk)
    return {
        "owner_kind": by,
        "accepting": settings.RUN_REPORTS,
        "windows": [("Last 24 hours", found["last_24_hours"]), ("Last 30 days", found["last_30_days"])],
        "threshold": settings.RUN_ALERT_THRESHOLD,
    }
