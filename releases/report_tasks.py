"""The run reports' beat job: fold the counters into hourly rows, then open or close alerts
(report_fold.py, run_alerts.py). For the light queue: it reads Redis and writes a few rows."""

from __future__ import annotations

from celery import shared_task

from . import report_fold, run_alerts
from .tasks import periodic


@shared_task(bind=True, acks_late=True, soft_time_limit=5 * 60, time_limit=6 * 60)
def rollup_run_reports(self):
    """Beat: fold the run-report counters, then check every published version's first runs."""
    return periodic("rollup-run-reports", lambda: {"runs": report_fold.fold(), **run_alerts.check()})
