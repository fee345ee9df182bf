"""Alerts on first runs that fail: run by the beat job after each fold (report_tasks.py).

A published version whose first-run success rate over the last hour (by whole hours: the current
clock hour and the one before) is below RUN_ALERT_THRESHOLD, with at least RUN_ALERT_MIN_RUNS first
runs, opens an incident (a RunAlert row): ADMINS get one mail naming the failing outcomes, and a
WARNING is logged. While it is open nothing more is sent; when the rate is back at or above the
threshold, again with at least RUN_ALERT_MIN_RUNS first runs, the incident is closed and ADMINS
get one recovery mail. An incident of a version that is no longer published is closed quietly.
The state lives in the database, so restarts and several workers send each mail once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import RunAlert, RunOutcomeHour, Version
from .run_stats import RunSummary, most_first, summaries

logger = logging.getLogger(__name__)

WINDOW = timedelta(hours=1)


def check(now: datetime | None = None) -> dict:
    """Open and close incidents for the last hour as of `now`; what changed."""
    now = now or timezone.now()
    since = now - WINDOW
    open_alerts = {alert.version_id: alert for alert in RunAlert.objects.filter(closed_at__isnull=True)}
    recent = set(
        RunOutcomeHour.objects.filter(hour__gte=since.replace(minute=0, second=0, microsecond=0), run_kind="first")
        .exclude(version=None)
        .values_list("version_id", flat=True)
    )
    published = Version.objects.filter(pk__in=recent | set(open_alerts), status=Version.Status.PUBLISHED)
    versions = {version.pk: version for version in published.select_related("model")}
    found = summaries("version", list(versions), since)
    opened, recovered = [], []
    for version_id, summary in found.items():
        alert, version = open_alerts.get(version_id), versions[version_id]
        enough = summary.first_runs >= settings.RUN_ALERT_MIN_RUNS
        failing = enough and summary.rate < settings.RUN_ALERT_THRESHOLD
        if alert is None and failing and _open(version, summary, now):
            opened.append(str(version))
        elif alert is not None and enough and not failing and _close(alert, version, summary, now):
            recovered.append(str(version))
    for version_id in set(open_alerts) - set(versions):  # yanked or withdrawn since: nothing to watch
        RunAlert.objects.filter(pk=open_alerts[version_id].pk).update(closed_at=now)
    return {"alerts_opened": opened, "alerts_recovered": recovered}


def _open(version: Version, summary: RunSummary, now: datetime) -> bool:
    try:
        with transaction.atomic():
            if RunAlert.objects.filter(version=version, closed_at__isnull=True).exists():
                return False  # another run opened it
            RunAlert.objects.create(
                version=version,
                opened_at=now,
                first_runs=summary.first_runs,
                succeeded=summary.first_ok,
                failing=dict(summary.first_failing),
            )
    except IntegrityError:  # one open alert per version: a concurrent check opened it first
        return False
    outcomes = ", ".join(f"{name}: {runs}" for name, runs in most_first(summary.first_failing))
    message = (
        f"First runs of {version.model.slug} {version.version} are failing: {summary.rate_text} of "
        f"{summary.first_runs} first runs in the last hour succeeded (threshold {settings.RUN_ALERT_THRESHOLD}%). "
        f"Failing outcomes: {outcomes}."
    )
    logger.warning("%s", message)
    _mail(f"First runs of {version.model.slug} {version.version} are failing ({summary.rate_text})", message)
    return True


def _close(alert: RunAlert, version: Version, summary: RunSummary, now: datetime) -> bool:
    if not RunAlert.objects.filter(pk=alert.pk, closed_at__isnull=True).update(closed_at=now):
        return False  # another run closed it
    message = (
        f"First runs of {version.model.slug} {version.version} succeed again: {summary.rate_text} of "
        f"{summary.first_runs} first runs in the last hour (failing since {alert.opened_at:%Y-%m-%d %H:%M} UTC)."
    )
    logger.info("%s", message)
    _mail(f"First runs of {version.model.slug} {version.version} recovered ({summary.rate_text})", message)
    return True


def _mail(subject: str, message: str) -> None:
    try:
        mail_admins(subject, message + "\n\nRun reports: docs/run-reports.md\n", fail_silently=False)
    except Exception as error:  # the incident is recorded either way; the mail server is the operator's
        logger.error("could not mail ADMINS about run reports: %s", error)


def open_incidents() -> list[dict]:
    """The open incidents, for /readyz (to the holder of the metrics token)."""
    alerts = RunAlert.objects.filter(closed_at__isnull=True).select_related("version__model").order_by("opened_at")
    return [
        {
            "model": alert.version.model.slug,
            "version": alert.version.version,
            "since": alert.opened_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "first_runs": alert.first_runs,
            "succeeded": alert.succeeded,
            "failing": alert.failing,
        }
        for alert in alerts
    ]
