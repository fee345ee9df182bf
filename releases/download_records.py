"""The records of download counts, as Redis and the local logs hold them, read strictly; and the
quarantine for the records that cannot be read.

A counter is the field `<file id>:<day>` of a Redis hash with a positive whole number as its
value, or a log line `<file id>:<day>[ <marker>]` that counts one (the marker: the hash that
de-duplicates it, see downloads.py). Anything else (bytes that are not ASCII, a file id beyond
PostgreSQL's bigint, a day that does not exist, a value like `abc`) is Unreadable: the job that
meets it sets it aside here, with its batch and the reason, and goes on with the rest. The
quarantine (record_quarantine.py, shared with the run reports) is the Redis list `QUARANTINE_KEY`
with Redis, else DATA_DIR/downloads/quarantine.jsonl; each set-aside record is counted in /metrics.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from django.conf import settings

from .record_quarantine import MAX_BIGINT, Quarantine, Unreadable, log_lines, parse_count

__all__ = ["Unreadable", "log_lines"]  # read by the jobs through this module

logger = logging.getLogger(__name__)

COUNTS_KEY = "model-releases:downloads"
FOLDING_PREFIX = "model-releases:downloads:folding:"
QUARANTINE_KEY = "model-releases:downloads:quarantine"
QUARANTINED_METRIC = "downloads_quarantined:"

_FIELD = re.compile(rb"([0-9]{1,19}):([0-9]{4}-[0-9]{2}-[0-9]{2})")
_MARKER = re.compile(rb"[0-9a-f]{32}")


@dataclass(frozen=True)
class LogLine:
    field: str  # "<file id>:<day>"
    marker: str  # "" when the line has none


def log_dir() -> Path:
    return Path(settings.DATA_DIR) / "downloads"


QUARANTINE = Quarantine("download", QUARANTINE_KEY, log_dir, QUARANTINED_METRIC)


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


parse_value = parse_count  # a counter's value: a whole number from 1 to bigint's maximum


def parse_log_line(raw: bytes) -> LogLine:
    """One line of a downloads log (without its line end), or Unreadable."""
    parts = raw.split(b" ")
    if len(parts) > 2 or (len(parts) == 2 and not _MARKER.fullmatch(parts[1])):
        raise Unreadable("bad_line" if raw.isascii() else "not_ascii")
    parse_field(parts[0])
    return LogLine(parts[0].decode(), parts[1].decode() if len(parts) == 2 else "")


def quarantine_entry(batch: str, record: bytes, reason: str) -> str:
    return QUARANTINE.entry(batch, record, reason)


def add_to_quarantine(pipeline, entries: list[str]) -> None:
    QUARANTINE.add(pipeline, entries)


def report(batch: str, reasons: Counter, where: str) -> None:
    QUARANTINE.report(batch, reasons, where)


def quarantine_location() -> str:
    return QUARANTINE.location()
