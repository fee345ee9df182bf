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
and the rest of its batch is folded.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from datetime import date
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F

from . import observability
from .download_records import (
    COUNTS_KEY,
    FOLDING_PREFIX,
    Unreadable,
    add_to_quarantine,
    log_dir,
    log_lines,
    parse_field,
    parse_log_line,
    parse_value,
    quarantine_entry,
    quarantine_location,
    quarantine_to_file,
    report,
)
from .downloads import send_log, set_aside
from .models import DailyDownloads, DownloadFold, File

logger = logging.getLogger(__name__)

LOG_SETTLE_SECONDS = 0.2  # how long a fold waits for a write into a log it just set aside
NOT_A_HASH_PREFIX = "model-releases:downloads:not-a-hash:"

Rows = Counter  # (file id, day) -> downloads


def fold() -> int:
    """Add every counter set aside or pending to the daily rows; the number of downloads folded."""
    logs = _logs_set_aside()
    if settings.REDIS_URL:
        for log in logs:
            _unless_taken(send_log, log)
        return _fold_redis()
    return sum(_unless_taken(_fold_log, log) for log in logs)


def _unless_taken(work, log: Path) -> int:
    """`work(log)`, or 0 when a process of this host took the log first (it sends its own logs)."""
    try:
        return work(log)
    except FileNotFoundError:
        return 0


def _logs_set_aside() -> list[Path]:
    """Every log of this host set aside (now, or by a fold or a sender that died)."""
    directory = log_dir()
    if not directory.is_dir():
        return []
    renamed = [set_aside(log) for log in directory.glob("*.log")]
    if renamed:
        time.sleep(LOG_SETTLE_SECONDS)
    return sorted(directory.glob("*.folding-*"))


# --- Redis ------------------------------------------------------------------------------------------


def _fold_redis() -> int:
    client = observability.redis_client()
    aside = f"{FOLDING_PREFIX}{uuid.uuid4().hex}"
    try:
        client.rename(COUNTS_KEY, aside)
    except Exception as error:  # redis-py's ResponseError "no such key": nothing counted since
        if "no such key" not in str(error).lower():
            raise
    folded = 0
    for key in sorted(client.scan_iter(match=f"{FOLDING_PREFIX}*")):
        name = key.decode("ascii", "backslashreplace")
        if client.type(key) != b"hash":
            _set_aside_key(client, key, name)
            continue
        rows, quarantined, reasons = Rows(), [], Counter()
        for field, value in client.hgetall(key).items():
            try:
                rows[parse_field(field)] += parse_value(value)
            except Unreadable as error:
                reasons[error.reason] += 1
                quarantined.append(quarantine_entry(name, field + b"=" + value, error.reason))
        folded_now, first_time = _record(name, rows)
        folded += folded_now
        if first_time:
            pipeline = client.pipeline(transaction=False)
            add_to_quarantine(pipeline, quarantined)
            pipeline.delete(key)
            pipeline.execute()
            report(name, reasons, quarantine_location())
        else:
            client.delete(key)
    return folded


def _set_aside_key(client, key: bytes, name: str) -> None:
    """A key in the folding namespace that is no hash (written by hand?): moved aside, whole."""
    moved = f"{NOT_A_HASH_PREFIX}{uuid.uuid4().hex}"
    client.rename(key, moved)
    pipeline = client.pipeline(transaction=False)
    add_to_quarantine(pipeline, [quarantine_entry(name, f"moved to {moved}".encode(), "not_a_hash")])
    pipeline.execute()
    report(name, Counter(not_a_hash=1), f"{quarantine_location()} (the key itself: {moved})")


# --- logs without Redis -------------------------------------------------------------------------------


def _fold_log(log: Path) -> int:
    rows, quarantined, reasons = Rows(), [], Counter()
    for raw in log_lines(log.read_bytes()):
        try:
            rows[parse_field(parse_log_line(raw).field.encode())] += 1
        except Unreadable as error:
            reasons[error.reason] += 1
            quarantined.append(quarantine_entry(log.name, raw, error.reason))
    folded, first_time = _record(log.name, rows)
    if first_time:
        quarantine_to_file(quarantined)
        report(log.name, reasons, quarantine_location())
    log.unlink()
    return folded


# --- both ---------------------------------------------------------------------------------------------


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
