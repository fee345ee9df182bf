"""The fold of download counters into daily rows (`rollup_downloads`, a command and a beat job).

With Redis: the logs that processes of this host kept while Redis could not be reached are sent
to Redis first (downloads.send_log); then the hash COUNTS_KEY is RENAMEd to a name of its own
(atomic: later downloads start a new hash), its counts are added to the daily rows and a
DownloadFold row with that name is recorded in one transaction, and the renamed hash is deleted.
A fold that died part way is finished by the next one: a set-aside hash whose name is already
recorded is only deleted, any other is folded. What can be lost is what Redis held in memory when
it restarted without persistence: the downloads since the last fold, at most one fold interval.

Without Redis (the embedded default), each process's log under DATA_DIR/downloads is renamed
aside in the same way; the fold waits a moment for a write that opened the log before the rename,
and records the log's name with its counts.

No record stops a fold: what cannot be read is set aside in the quarantine (download_records.py)
and the rest of its batch is folded. The setting aside and folding of batches is record_folds.py's,
shared with the run reports.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F

from .download_records import COUNTS_KEY, FOLDING_PREFIX, QUARANTINE, log_dir, parse_field, parse_log_line, parse_value
from .downloads import send_log
from .models import DailyDownloads, DownloadFold, File
from .record_folds import Rows, fold_log, fold_redis_hashes, logs_set_aside

logger = logging.getLogger(__name__)

NOT_A_HASH_PREFIX = "model-releases:downloads:not-a-hash:"


def fold() -> int:
    """Add every counter set aside or pending to the daily rows; the number of downloads folded."""
    logs = logs_set_aside(log_dir())
    if settings.REDIS_URL:
        for log in logs:
            _unless_taken(send_log, log)
        return fold_redis_hashes(COUNTS_KEY, FOLDING_PREFIX, NOT_A_HASH_PREFIX, QUARANTINE, _parse_counter, _record)
    return sum(_unless_taken(_fold_log, log) for log in logs)


def _unless_taken(work, log: Path) -> int:
    """`work(log)`, or 0 when a process of this host took the log first (it sends its own logs)."""
    try:
        return work(log)
    except FileNotFoundError:
        return 0


def _parse_counter(field: bytes, value: bytes) -> tuple[tuple[int, date], int]:
    return parse_field(field), parse_value(value)


def _fold_log(log: Path) -> int:
    return fold_log(log, QUARANTINE, lambda raw: parse_field(parse_log_line(raw).field.encode()), _record)


def _record(name: str, rows: Rows) -> tuple[int, bool]:
    """Add `rows` to the daily rows once, under the batch's `name`: (downloads added, whether this
    is the first time the batch is recorded). Files deleted since (a draft's) are left out."""
    with transaction.atomic():
        if DownloadFold.objects.filter(name=name[:200]).exists():
            return 0, False  # folded by a run that died before it could delete the batch
        existing = set(File.objects.filter(pk__in={file_id for file_id, _ in rows}).values_list("pk", flat=True))
        kept: dict[tuple[int, date], int] = {key: value for key, value in rows.items() if key[0] in existing}
        for (file_id, day), value in kept.items():
            updated = DailyDownloads.objects.filter(file_id=file_id, day=day).update(count=F("count") + value)
            if not updated:
                DailyDownloads.objects.create(file_id=file_id, day=day, count=value)
        DownloadFold.objects.create(name=name[:200], downloads=sum(kept.values()))
    return sum(kept.values()), True
