"""How a job folds counter batches into database rows, shared by the download counts
(download_fold.py) and the run reports (report_fold.py).

A batch is set aside under a name of its own before it is read, so later writes start a new one:
a Redis hash is RENAMEd into the job's folding namespace (atomic), a process's log file is
renamed to `<stem>.folding-<uuid>`. Each batch is read strictly (its `parse` raises Unreadable
for a record it cannot read: that record goes to the job's quarantine, the rest is folded) and
handed to the job's `record(name, rows)`, which adds the rows and records the batch's name in one
transaction and says whether this was the first time. A batch is deleted only after that, so a
fold that died part way is finished by the next one, and never counted twice.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from . import observability
from .record_quarantine import Quarantine, Unreadable, log_lines

LOG_SETTLE_SECONDS = 0.2  # how long a fold waits for a write into a log it just set aside

Rows = Counter  # the job's row key -> amount
Record = Callable[[str, Rows], tuple[int, bool]]  # (name, rows) -> (amount added, first time)


def set_aside(log: Path) -> Path:
    """Rename a log to a name of its own: later writes start a new log."""
    return log.rename(log.with_name(f"{log.stem}.folding-{uuid.uuid4().hex}"))


def logs_set_aside(directory: Path) -> list[Path]:
    """Every log in `directory` set aside (now, or by a fold or a sender that died)."""
    if not directory.is_dir():
        return []
    renamed = []
    for log in directory.glob("*.log"):
        try:
            renamed.append(set_aside(log))
        except FileNotFoundError:
            pass  # another process took it first
    if renamed:
        time.sleep(LOG_SETTLE_SECONDS)  # a write that opened the log just before the rename
    return sorted(directory.glob("*.folding-*"))


def fold_redis_hashes(
    counts_key: str,
    folding_prefix: str,
    not_a_hash_prefix: str,
    quarantine: Quarantine,
    parse: Callable[[bytes, bytes], tuple[object, int]],
    record: Record,
) -> int:
    """Set the hash `counts_key` aside and fold every hash set aside under `folding_prefix`;
    `parse(field, value)` gives (row key, amount). The amount folded."""
    client = observability.redis_client()
    try:
        client.rename(counts_key, f"{folding_prefix}{uuid.uuid4().hex}")
    except Exception as error:  # redis-py's ResponseError "no such key": nothing counted since
        if "no such key" not in str(error).lower():
            raise
    folded = 0
    for key in sorted(client.scan_iter(match=f"{folding_prefix}*")):
        name = key.decode("ascii", "backslashreplace")
        if client.type(key) != b"hash":
            _set_aside_key(client, key, name, not_a_hash_prefix, quarantine)
            continue
        rows, quarantined, reasons = Rows(), [], Counter()
        for field, value in client.hgetall(key).items():
            try:
                row, amount = parse(field, value)
                rows[row] += amount
            except Unreadable as error:
                reasons[error.reason] += 1
                quarantined.append(quarantine.entry(name, field + b"=" + value, error.reason))
        folded_now, first_time = record(name, rows)
        folded += folded_now
        if first_time:
            pipeline = client.pipeline(transaction=False)
            quarantine.add(pipeline, quarantined)
            pipeline.delete(key)
            pipeline.execute()
            quarantine.report(name, reasons)
        else:
            client.delete(key)
    return folded


def _set_aside_key(client, key: bytes, name: str, not_a_hash_prefix: str, quarantine: Quarantine) -> None:
    """A key in the folding namespace that is no hash (written by hand?): moved aside, whole."""
    moved = f"{not_a_hash_prefix}{uuid.uuid4().hex}"
    client.rename(key, moved)
    pipeline = client.pipeline(transaction=False)
    quarantine.add(pipeline, [quarantine.entry(name, f"moved to {moved}".encode(), "not_a_hash")])
    pipeline.execute()
    quarantine.report(name, Counter(not_a_hash=1), f"{quarantine.location()} (the key itself: {moved})")


def fold_log(log: Path, quarantine: Quarantine, parse: Callable[[bytes], object], record: Record) -> int:
    """Fold a set-aside log whose every line counts one of `parse(line)`; delete it. The amount folded."""
    rows, quarantined, reasons = Rows(), [], Counter()
    for raw in log_lines(log.read_bytes()):
        try:
            rows[parse(raw)] += 1
        except Unreadable as error:
            reasons[error.reason] += 1
            quarantined.append(quarantine.entry(log.name, raw, error.reason))
    folded, first_time = record(log.name, rows)
    if first_time:
        quarantine.to_file(quarantined)
        quarantine.report(log.name, reasons)
    log.unlink()
    return folded
