"""Run reports on the request path (docs/run-reports.md): what a report must hold, how many one
client address may send per minute, and how each is counted, with no database write.

With Redis, one Lua script in the request's one round trip adds to the address's counter for this
minute (a key named by a salted marker of the address, client_address.client_marker, that expires
after RATE_WINDOW_SECONDS), and, when under RUN_REPORTS_PER_MINUTE, adds the report to the hash
COUNTS_KEY (`<model id>:<version id or 0>:<UTC hour>:<client>:<os>:<run kind>:<outcome>`, see
report_records.py) and to the /metrics counter `runs:<model>:<version>:<client>:<outcome name>`.
No address is stored. Without Redis, or when it cannot be reached, the limit is this process's and
the report is a line of this process's log under DATA_DIR/run-reports; report_fold.py folds both.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from typing import Literal

from django.conf import settings
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import observability
from .client_address import client_address, client_marker
from .models import OUTCOMES, MLModel, Version
from .process_logs import Every, ProcessLog
from .report_records import COUNTS_KEY, RATE_PREFIX, field_for, log_dir

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
MAX_BYTES = 2**53  # beyond what a double holds exactly: no real run moves that much
RATE_WINDOW_SECONDS = 120  # a minute's counter outlives its minute, then goes
MAX_LOCAL_ADDRESSES = 10_000  # per-process rate counters kept; past it the oldest go first
MODEL_PATTERN = r"^[a-z0-9-]{1,100}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"

# KEYS: the address's counter for this minute, the counts hash, the metrics hash.
# ARGV: the limit, the window, the counts field, the metrics field. 1 when counted, 0 when limited.
COUNT_UNLESS_LIMITED = """
local sent = redis.call('INCR', KEYS[1])
if sent == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if sent > tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return 1
"""


class RunReport(BaseModel):
    """One run's report, exactly as the clients send it (strict: no coercion, no unknown fields)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="RunReport")

    model: str = Field(pattern=MODEL_PATTERN, description="The model slug asked for.")
    requested: str = Field(pattern=VERSION_PATTERN, description="The version asked for, or `latest`.")
    version: str | None = Field(pattern=VERSION_PATTERN, description="The resolved version; null before resolving.")
    client: Literal["fetch-model.sh", "fetch_model.py"]
    client_version: str = Field(pattern=r"^[A-Za-z0-9._+-]{1,32}$")
    outcome: Literal[0, 1, 2, 3, 4, 5, 6, 130, 143] = Field(description="The exit code.")
    outcome_name: Literal["ok", "usage", "missing_tool", "not_found", "network", "wrong_content", "dest_dir",
                          "interrupted", "terminated"]  # fmt: skip
    run_kind: Literal["first", "update", "later", "offline"]
    tries: int = Field(ge=0, le=10_000)
    fresh_links: int = Field(ge=0, le=10_000)
    bytes_downloaded: int = Field(ge=0, le=MAX_BYTES)
    bytes_reused: int = Field(ge=0, le=MAX_BYTES)
    bytes_delta: int = Field(ge=0, le=MAX_BYTES)
    duration_ms: int = Field(ge=0, le=7 * 86400 * 1000)
    os: Literal["linux", "darwin", "windows", "other"]
    resumed: bool

    @field_validator("outcome", mode="before")
    @classmethod
    def _no_boolean(cls, value):
        if isinstance(value, bool):  # true == 1 would match Literal[1]
            raise ValueError("Input should be a valid integer")
        return value


class Refused(Exception):
    """A report the site does not take; `status` and a sentence for `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def read(body: bytes) -> tuple[RunReport, MLModel, Version | None]:
    """The report in a request body, checked against the schema and the catalogue, or Refused (400)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(400, "the body must be a JSON object (docs/run-reports.md)") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object (docs/run-reports.md)")
    try:
        report = RunReport.model_validate(data)
    except ValidationError as error:
        raise Refused(400, _first_problem(error)) from None
    if OUTCOMES[report.outcome] != report.outcome_name:
        raise Refused(400, f"outcome_name: outcome {report.outcome} is {OUTCOMES[report.outcome]!r}")
    return report, *_known(report)


def _first_problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    if problem["type"] == "extra_forbidden":
        return f"{where}: not a field of a run report"
    if problem["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {problem['msg']}"


def _known(report: RunReport) -> tuple[MLModel, Version | None]:
    """The model and version named, as anyone may see them (drafts are unknown), or Refused."""
    visible = Version.objects.exclude(status=Version.Status.DRAFT)
    model = reportable_model(report.model)
    if model is None:
        raise Refused(400, f"model: no model {report.model!r} here")
    if report.version is None:
        return model, None
    version = visible.filter(model=model, version=report.version).first()
    if version is None:
        raise Refused(400, f"version: {report.model} has no version {report.version!r}")
    return model, version


def reportable_model(slug: str) -> MLModel | None:
    """The model a report may name: one anyone may see (with a version that is not a draft)."""
    if not re.fullmatch(MODEL_PATTERN, slug):  # anything a URL held, a NUL byte too: no query for it
        return None
    visible = Version.objects.exclude(status=Version.Status.DRAFT)
    return MLModel.objects.filter(slug=slug, versions__in=visible).distinct().first()


def count(request, report: RunReport, model: MLModel, version: Version | None) -> bool:
    """Count a checked report unless its address sent too many this minute (False then)."""
    now = clock()
    minute = now.strftime("%Y-%m-%dT%H:%M")
    marker = client_marker(client_address(request.META), "run-report-rate", now.date().isoformat(), minute)
    field = field_for(model.pk, version.pk if version else 0, now, report.client, report.os, report.run_kind,
                      report.outcome)  # fmt: skip
    metric = f"runs:{model.slug}:{version.version if version else ''}:{report.client}:{report.outcome_name}"
    if settings.REDIS_URL and not observability.redis_resting():
        try:
            keys = (f"{RATE_PREFIX}{minute}:{marker}", COUNTS_KEY, observability.KEY)
            args = (settings.RUN_REPORTS_PER_MINUTE, RATE_WINDOW_SECONDS, field, metric)
            return bool(observability.redis_client().eval(COUNT_UNLESS_LIMITED, 3, *keys, *args))
        except Exception as error:  # Redis down: this process limits and keeps the report itself
            observability.redis_failed()
            if _redis_warning.due():  # once a minute at most: an outage must not flood the log
                logger.warning("Redis cannot be reached (%s): run reports go to %s until it answers", error, own_log())
    if not _local_limit.allows(f"{minute}:{marker}"):
        return False
    _log.append(f"{field}\n")
    observability.count(**{metric: 1})
    return True


_redis_warning = Every()


def clock():
    """When a report arrives (its hour is the one it counts in)."""
    return timezone.now()


class _LocalLimit:
    """Reports per address and minute in this process (no Redis, or Redis unreachable)."""

    def __init__(self):
        self._sent: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def allows(self, key: str) -> bool:
        with self._lock:
            sent = self._sent.pop(key, 0) + 1
            self._sent[key] = sent
            while len(self._sent) > MAX_LOCAL_ADDRESSES:
                self._sent.popitem(last=False)
            return sent <= settings.RUN_REPORTS_PER_MINUTE


_local_limit = _LocalLimit()
_log = ProcessLog(log_dir, "run report")
own_log = _log.path
