"""The admin's view of run reports: a list across models (runs and first-run success, the last 24
hours and 30 days) whose page per model shows the panel with failing outcomes and breakdowns by
client and OS (the `run_reports_panel` template tag, also for the version's change page)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Q, Sum
from django.utils import timezone

from .models import NOT_THE_SITES_DOING, SUCCESS, RunReportsByModel
from .run_stats import DAY, MONTH


def _rate(ok: int | None, first: int | None) -> str:
    return f"{100 * ok / first:.1f}%" if first else "–"


@admin.register(RunReportsByModel)
class RunReportsAdmin(admin.ModelAdmin):
    list_display = ("slug", "runs_24h", "first_run_success_24h", "runs_30d", "first_run_success_30d", "failed_30d")
    search_fields = ("slug", "name")
    ordering = ("slug",)
    fields = ("slug", "name")
    readonly_fields = ("slug", "name")

    def get_queryset(self, request):
        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        annotations = {}
        for suffix, window in (("24h", DAY), ("30d", MONTH)):
            recent = Q(run_outcomes__hour__gte=now - window)
            first = recent & Q(run_outcomes__run_kind="first") & ~Q(run_outcomes__outcome__in=NOT_THE_SITES_DOING)
            annotations |= {
                f"runs_{suffix}_sum": Sum("run_outcomes__count", filter=recent),
                f"first_{suffix}_sum": Sum("run_outcomes__count", filter=first),
                f"ok_{suffix}_sum": Sum("run_outcomes__count", filter=first & Q(run_outcomes__outcome=SUCCESS)),
                f"failed_{suffix}_sum": Sum("run_outcomes__count", filter=recent & ~Q(run_outcomes__outcome=SUCCESS)),
            }
        return super().get_queryset(request).annotate(**annotations)

    @admin.display(description="runs (24 h)", ordering="runs_24h_sum")
    def runs_24h(self, obj):
        return obj.runs_24h_sum or 0

    @admin.display(description="first-run success (24 h)")
    def first_run_success_24h(self, obj):
        return _rate(obj.ok_24h_sum, obj.first_24h_sum)

    @admin.display(description="runs (30 days)", ordering="runs_30d_sum")
    def runs_30d(self, obj):
        return obj.runs_30d_sum or 0

    @admin.display(description="first-run success (30 days)")
    def first_run_success_30d(self, obj):
        return _rate(obj.ok_30d_sum, obj.first_30d_sum)

    @admin.display(description="failed runs (30 days)", ordering="failed_30d_sum")
    def failed_30d(self, obj):
        return obj.failed_30d_sum or 0

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
