"""The records of run counts, as Redis and the local logs hold them, read strictly; and their quarantine.

A counter is the field `<model id>:<version id or 0>:<UTC hour, YYYY-MM-DDTHH>:<client>:<os>:<run
kind>:<outcome>` of the Redis hash COUNTS_KEY with a positive whole number as its value, or a log
line holding that field, which counts one. Anything else is Unreadable: the fold sets it aside in
the quarantine (record_quarantine.py: the Redis list QUARANTINE_KEY, or
DATA_DIR/run-reports/quarantine.jsonl), counted in /metrics, and folds the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from .models import CLIENTS, OUTCOMES, RUN_KINDS, SYSTEMS
from .record_quarantine import MAX_BIGINT, Quarantine, Unreadable

COUNTS_KEY = "model-releases:run-reports"
FOLDING_PREFIX = "model-releases:run-reports:folding:"
NOT_A_HASH_PREFIX = "model-releases:run-reports:not-a-hash:"
QUARANTINE_KEY = "model-releases:run-reports:quarantine"
RATE_PREFIX = "model-releases:run-reports:rate:"
QUARANTINED_METRIC = "run_reports_quarantined:"

_FIELD = re.compile(
    rb"([0-9]{1,19}):([0-9]{1,19}):([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}):(%s):(%s):(%s):([0-9]{1,3})"
    % tuple(b"|".join(re.escape(name.encode()) for name in names) for names in (CLIENTS, SYSTEMS, RUN_KINDS))
)


@dataclass(frozen=True)
class RunCount:
    """What one counter counts (its row in RunOutcomeHour)."""

    model_id: int
    version_id: int | None
    hour: datetime
    client: str
    os: str
    run_kind: str
    outcome: int


def log_dir() -> Path:
    return Path(settings.DATA_DIR) / "run-reports"


QUARANTINE = Quarantine("run report", QUARANTINE_KEY, log_dir, QUARANTINED_METRIC)


def field_for(model_id: int, version_id: int, moment: datetime, client: str, os: str, run_kind: str, outcome: int) -> str:  # fmt: skip
    return f"{model_id}:{version_id}:{moment.astimezone(UTC):%Y-%m-%dT%H}:{client}:{os}:{run_kind}:{outcome}"


def parse_field(raw: bytes) -> RunCount:
    """A counter's field as a RunCount, or Unreadable."""
    if not raw.isascii():
        raise Unreadable("not_ascii")
    match = _FIELD.fullmatch(raw)
    if not match:
        raise Unreadable("bad_field")
    model_id, version_id, outcome = int(match[1]), int(match[2]), int(match[7])
    if not 1 <= model_id <= MAX_BIGINT or version_id > MAX_BIGINT:
        raise Unreadable("id_out_of_range")
    if outcome not in OUTCOMES:
        raise Unreadable("bad_outcome")
    try:
        hour = datetime.strptime(match[3].decode(), "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError:
        raise Unreadable("bad_hour") from None
    client, os, run_kind = (part.decode() for part in match.group(4, 5, 6))
    return RunCount(model_id, version_id or None, hour, client, os, run_kind, outcome)
