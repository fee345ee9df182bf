"""The fold of run-report counters into hourly rows (RunOutcomeHour), by the beat job
`rollup_run_reports` (report_tasks.py), in the same way as the download counts (record_folds.py):
batches set aside, read strictly, unreadable records quarantined, each batch recorded once
(RunReportFold) in the transaction that adds its counts.

The logs under DATA_DIR/run-reports (no Redis, or Redis unreachable when the report came) are
folded straight into the rows; then, with Redis, the hash. A process's log is folded by a fold on
its own host (DATA_DIR is the host's).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import F

from .models import MLModel, RunOutcomeHour, RunReportFold, Version
from .record_folds import Rows, fold_log, fold_redis_hashes, logs_set_aside
from .record_quarantine import parse_count
from .report_records import COUNTS_KEY, FOLDING_PREFIX, NOT_A_HASH_PREFIX, QUARANTINE, RunCount, log_dir, parse_field


def fold() -> int:
    """Add every run counter set aside or pending to the hourly rows; the number of runs folded."""
    folded = 0
    for log in logs_set_aside(log_dir()):
        try:
            folded += fold_log(log, QUARANTINE, parse_field, _record)
        except FileNotFoundError:
            pass  # another fold on this host took it first
    if settings.REDIS_URL:
        parse = lambda field, value: (parse_field(field), parse_count(value))  # noqa: E731
        folded += fold_redis_hashes(COUNTS_KEY, FOLDING_PREFIX, NOT_A_HASH_PREFIX, QUARANTINE, parse, _record)
    return folded


def _record(name: str, rows: Rows) -> tuple[int, bool]:
    """Add `rows` once, under the batch's `name`: (runs added, whether this is the first time).
    Counts of models or versions deleted since are left out."""
    with transaction.atomic():
        if RunReportFold.objects.filter(name=name[:200]).exists():
            return 0, False  # folded by a run that died before it could delete the batch
        models = set(MLModel.objects.filter(pk__in={row.model_id for row in rows}).values_list("pk", flat=True))
        versions = set(
            Version.objects.filter(pk__in={row.version_id for row in rows if row.version_id}).values_list(
                "pk", flat=True
            )
        )
        kept = {
            row: runs
            for row, runs in rows.items()
            if row.model_id in models and (row.version_id is None or row.version_id in versions)
        }
        for row, runs in kept.items():
            _add(row, runs)
        RunReportFold.objects.create(name=name[:200], runs=sum(kept.values()))
    return sum(kept.values()), True


def _add(row: RunCount, runs: int) -> None:
    same = RunOutcomeHour.objects.filter(
        model_id=row.model_id,
        version_id=row.version_id,  # None matches IS NULL
        hour=row.hour,
        client=row.client,
        os=row.os,
        run_kind=row.run_kind,
        outcome=row.outcome,
    )
    if not same.update(count=F("count") + runs):
        RunOutcomeHour.objects.create(
            model_id=row.model_id, version_id=row.version_id, hour=row.hour, client=row.client, os=row.os,
            run_kind=row.run_kind, outcome=row.outcome, count=runs,
        )  # fmt: skip
