"""Read paths for run reports: per version or per model, over a window (the last 24 hours, the last
30 days, the last hour for alerts), how many runs, the first-run success rate, the outcomes that
failed, by client and OS. A constant number of queries, whatever the number of rows shown."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from .models import NOT_THE_SITES_DOING, OUTCOMES, SUCCESS, MLModel, RunOutcomeHour

DAY = timedelta(hours=24)
MONTH = timedelta(days=30)


@dataclass
class RunSummary:
    """Runs of one version or model in one window."""

    runs: int = 0
    first_runs: int = 0  # first runs that ended on their own (NOT_THE_SITES_DOING left out)
    first_ok: int = 0
    failing: Counter = field(default_factory=Counter)  # outcome name -> runs of any kind that ended so
    first_failing: Counter = field(default_factory=Counter)  # the same, first runs only
    by_client: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))  # name -> runs, first, ok
    by_os: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))

    def add(self, client: str, os: str, run_kind: str, outcome: int, runs: int) -> None:
        self.runs += runs
        first = run_kind == "first" and outcome not in NOT_THE_SITES_DOING
        ok = first and outcome == SUCCESS
        if outcome != SUCCESS:
            self.failing[OUTCOMES[outcome]] += runs
            if first:
                self.first_failing[OUTCOMES[outcome]] += runs
        self.first_runs += runs if first else 0
        self.first_ok += runs if ok else 0
        for breakdown, key in ((self.by_client, client), (self.by_os, os)):
            counts = breakdown[key]
            counts[0] += runs
            counts[1] += runs if first else 0
            counts[2] += runs if ok else 0

    @property
    def rate(self) -> float | None:
        """The first-run success rate in percent; None without first runs."""
        return 100 * self.first_ok / self.first_runs if self.first_runs else None

    @property
    def rate_text(self) -> str:
        return "–" if self.rate is None else f"{self.rate:.1f}%"

    def breakdown(self, which: str) -> list[dict]:
        """[{name, runs, first_runs, rate_text}] by "client" or "os", most runs first."""
        table = self.by_client if which == "client" else self.by_os
        return [
            {"name": name, "runs": runs, "first_runs": first, "rate_text": f"{100 * ok / first:.1f}%" if first else "–"}
            for name, (runs, first, ok) in sorted(table.items(), key=lambda item: -item[1][0])
        ]

    @property
    def by_client_rows(self) -> list[dict]:
        return self.breakdown("client")

    @property
    def by_os_rows(self) -> list[dict]:
        return self.breakdown("os")

    def failing_text(self) -> str:
        return ", ".join(f"{name} ({runs})" for name, runs in most_first(self.failing)) or "none"


def most_first(counts: Counter) -> list[tuple[str, int]]:
    """(name, count) by count, most first, then by name (the same order on every page)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def summaries(by: str, ids, since: datetime) -> dict[int, RunSummary]:
    """RunSummary per version id (`by="version"`) or model id (`by="model"`) since a moment; one query."""
    rows = (
        RunOutcomeHour.objects.filter(**{f"{by}_id__in": list(ids)}, hour__gte=_hour_of(since))
        .values_list(f"{by}_id", "client", "os", "run_kind", "outcome")
        .annotate(runs=Sum("count"))
        .order_by()
    )
    found: dict[int, RunSummary] = defaultdict(RunSummary)
    for owner, client, os, run_kind, outcome, runs in rows:
        found[owner].add(client, os, run_kind, outcome, runs)
    return {owner: found.get(owner, RunSummary()) for owner in ids}


def _hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def windows(by: str, owner_id: int, now: datetime | None = None) -> dict[str, RunSummary]:
    """The last 24 hours and the last 30 days of one version or model (two queries)."""
    now = now or timezone.now()
    return {
        "last_24_hours": summaries(by, [owner_id], now - DAY)[owner_id],
        "last_30_days": summaries(by, [owner_id], now - MONTH)[owner_id],
    }


def public_first_runs(owner) -> RunSummary | None:
    """For public pages: a version's (or a model's) last 30 days, when the operator shows them
    (RUN_REPORTS_PUBLIC) and there were first runs; else None. One query, none when not shown."""
    if not settings.RUN_REPORTS_PUBLIC:
        return None
    by = "model" if isinstance(owner, MLModel) else "version"
    summary = summaries(by, [owner.pk], timezone.now() - MONTH)[owner.pk]
    return summary if summary.first_runs else None
