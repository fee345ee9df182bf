"""The records of download counts, as Redis and the local logs hold them, read strictly; and the
quarantine for the records that cannot be read.

A counter is the field `<file id>:<day>` of a Redis hash with a positive whole number as its
value, or a log line `<file id>:<day>[ <marker>]` that counts one (the marker: the hash that
de-duplicates it, see downloads.py). Anything else (bytes that are not ASCII, a file id beyond
PostgreSQL's bigint, a day that does not exist, a value like `abc`) is Unreadable: the job that
meets it sets it aside here, with its batch and the reason, and goes on with the rest. The
quarantine is a capped Redis list with Redis (`QUARANTINE_KEY`, newest first), else a JSON-lines
file under DATA_DIR/downloads; each set-aside record adds to a counter shown in /metrics.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from . import observability

logger = logging.getLogger(__name__)

COUNTS_KEY = "model-releases:downloads"
FOLDING_PREFIX = "model-releases:downloads:folding:"
QUARANTINE_KEY = "model-releases:downloads:quarantine"
QUARANTINE_KEEP = 1000  # records kept in the Redis list; older ones are dropped (the counter keeps counting)
QUARANTINE_FILE_BYTES = 1024 * 1024  # the local file is moved to `.1` past this size
QUARANTINED_METRIC = "downloads_quarantined:"
MAX_BIGINT = 2**63 - 1

_FIELD = re.compile(rb"([0-9]{1,19}):([0-9]{4}-[0-9]{2}-[0-9]{2})")
_MARKER = re.compile(rb"[0-9a-f]{32}")
_VALUE = re.compile(rb"[0-9]{1,19}")


class Unreadable(ValueError):
    """A record that cannot be folded; `reason` is a short label (also the metric's)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LogLine:
    field: str  # "<file id>:<day>"
    marker: str  # "" when the line has none


def log_dir() -> Path:
    return Path(settings.DATA_DIR) / "downloads"


def parse_field(raw: bytes) -> tuple[int, date]:
    """`<file id>:<day>` as (file id, day), or Unreadable."""
    try:
        raw.decode("ascii")
    except UnicodeDecodeError:
        raise Unreadable("not_ascii") from None
    match = _FIELD.fullmatch(raw)
    if not match:
        raise Unreadable("bad_field")
    file_id = int(match[1])
    if not 1 <= file_id <= MAX_BIGINT:
        raise Unreadable("file_id_out_of_range")
    try:
        return file_id, date.fromisoformat(match[2].decode())
    except ValueError:
        raise Unreadable("bad_day") from None


def parse_value(raw: bytes) -> int:
    """A counter's value: a whole number from 1 to bigint's maximum, or Unreadable."""
    if not _VALUE.fullmatch(raw) or not 1 <= int(raw) <= MAX_BIGINT:
        raise Unreadable("bad_count")
    return int(raw)


def parse_log_line(raw: bytes) -> LogLine:
    """One line of a downloads log (without its line end), or Unreadable."""
    parts = raw.split(b" ")
    if len(parts) > 2 or (len(parts) == 2 and not _MARKER.fullmatch(parts[1])):
        raise Unreadable("bad_line" if raw.isascii() else "not_ascii")
    parse_field(parts[0])
    return LogLine(parts[0].decode(), parts[1].decode() if len(parts) == 2 else "")


def log_lines(data: bytes) -> list[bytes]:
    """The non-empty lines of a log's bytes (a line cut short by a crash is one of them)."""
    return [line.strip(b"\r") for line in data.split(b"\n") if line.strip(b"\r \t")]


def quarantine_entry(batch: str, record: bytes, reason: str) -> str:
    """One set-aside record as JSON: readable (`record`, non-ASCII bytes as \\xNN) and exact (`raw`)."""
    return json.dumps(
        {
            "at": timezone.now().isoformat(),
            "batch": batch,
            "reason": reason,
            "record": record.decode("ascii", "backslashreplace"),
            "raw": base64.b64encode(record).decode(),
        }
    )


def add_to_quarantine(pipeline, entries: list[str]) -> None:
    """Queue the Redis commands that keep `entries` in the capped quarantine list."""
    if entries:
        pipeline.lpush(QUARANTINE_KEY, *entries)
        pipeline.ltrim(QUARANTINE_KEY, 0, QUARANTINE_KEEP - 1)


def quarantine_to_file(entries: list[str]) -> None:
    """Without Redis: append `entries` to DATA_DIR/downloads/quarantine.jsonl (and its one `.1`)."""
    if not entries:
        return
    path = log_dir() / "quarantine.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > QUARANTINE_FILE_BYTES:
        path.replace(path.with_name("quarantine.jsonl.1"))
    with open(path, "a", encoding="ascii") as file:
        file.writelines(f"{entry}\n" for entry in entries)


def report(batch: str, reasons: Counter, where: str) -> None:
    """Say at WARNING what a batch had set aside, and count it for /metrics."""
    if not reasons:
        return
    total = sum(reasons.values())
    logger.warning(
        "set aside %d unreadable download record%s of %s (%s) in %s; the rest is counted",
        total,
        "" if total == 1 else "s",
        batch,
        ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())),
        where,
    )
    observability.count(**{f"{QUARANTINED_METRIC}{reason}": n for reason, n in reasons.items()})


def quarantine_location() -> str:
    return f"Redis list {QUARANTINE_KEY}" if settings.REDIS_URL else str(log_dir() / "quarantine.jsonl")
