"""The quarantine for counter records a fold cannot read, shared by every job that folds records
(download counts, run reports).

A record that cannot be read raises Unreadable with a short reason; the job sets it aside here,
with its batch and the reason, and folds the rest. A quarantine is a capped Redis list (newest
first) with Redis, else a JSON-lines file in the job's folder under DATA_DIR; each set-aside
record adds to a counter shown in /metrics (`<metric prefix><reason>`).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from . import observability

logger = logging.getLogger(__name__)

QUARANTINE_KEEP = 1000  # records kept in a Redis list; older ones are dropped (the counter keeps counting)
QUARANTINE_FILE_BYTES = 1024 * 1024  # a local file is moved to `.1` past this size
MAX_BIGINT = 2**63 - 1
_COUNT = re.compile(rb"[0-9]{1,19}")


class Unreadable(ValueError):
    """A record that cannot be folded; `reason` is a short label (also the metric's)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_count(raw: bytes) -> int:
    """A counter's value: a whole number from 1 to PostgreSQL bigint's maximum, or Unreadable."""
    if not _COUNT.fullmatch(raw) or not 1 <= int(raw) <= MAX_BIGINT:
        raise Unreadable("bad_count")
    return int(raw)


def log_lines(data: bytes) -> list[bytes]:
    """The non-empty lines of a log's bytes (a line cut short by a crash is one of them)."""
    return [line.strip(b"\r") for line in data.split(b"\n") if line.strip(b"\r \t")]


@dataclass(frozen=True)
class Quarantine:
    """Where one kind of record is set aside: `what` names it in log lines ("download")."""

    what: str
    redis_key: str
    directory: Callable[[], Path]  # the job's folder under DATA_DIR (read when used: tests move it)
    metric_prefix: str

    def entry(self, batch: str, record: bytes, reason: str) -> str:
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

    def add(self, pipeline, entries: list[str]) -> None:
        """Queue the Redis commands that keep `entries` in the capped list."""
        if entries:
            pipeline.lpush(self.redis_key, *entries)
            pipeline.ltrim(self.redis_key, 0, QUARANTINE_KEEP - 1)

    def file(self) -> Path:
        return self.directory() / "quarantine.jsonl"

    def to_file(self, entries: list[str]) -> None:
        """Without Redis: append `entries` to the folder's quarantine.jsonl (and its one `.1`)."""
        if not entries:
            return
        path = self.file()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > QUARANTINE_FILE_BYTES:
            path.replace(path.with_name("quarantine.jsonl.1"))
        with open(path, "a", encoding="ascii") as file:
            file.writelines(f"{entry}\n" for entry in entries)

    def report(self, batch: str, reasons: Counter, where: str | None = None) -> None:
        """Say at WARNING what a batch had set aside, and count it for /metrics."""
        if not reasons:
            return
        total = sum(reasons.values())
        logger.warning(
            "set aside %d unreadable %s record%s of %s (%s) in %s; the rest is counted",
            total,
            self.what,
            "" if total == 1 else "s",
            batch,
            ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items())),
            where or self.location(),
        )
        observability.count(**{f"{self.metric_prefix}{reason}": n for reason, n in reasons.items()})

    def location(self) -> str:
        return f"Redis list {self.redis_key}" if settings.REDIS_URL else str(self.file())

    def metrics(self, values: dict[str, int]) -> dict[str, int]:
        """This quarantine's counters among the shared ones: reason -> records set aside."""
        prefix = self.metric_prefix
        return {name.removeprefix(prefix): value for name, value in values.items() if name.startswith(prefix)}
