"""Request ids that follow a request into the tasks it queues, JSON log lines, and counters.

Counters live in Redis when REDIS_URL is set (shared by every web process and
worker), in this process otherwise. Counting never breaks a request: a
failure to count is logged and forgotten (download counts, which join the same
one write, fall back to their own log). metrics.py turns them into /metrics.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
logger = logging.getLogger(__name__)


def new_request_id(offered: str | None) -> str:
    """Keep a sane X-Request-ID from the proxy in front, or make one."""
    return offered if offered and _VALID_ID.match(offered) else uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = request_id_var.set(new_request_id(request.headers.get("X-Request-ID")))
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id_var.get()
            return response
        finally:
            request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the exception)."""

    def format(self, record):
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


JsonFormatter.converter = __import__("time").gmtime


# --- Celery: the request id travels in the task's headers -------------------------------------


def connect_celery_signals() -> None:
    from celery.signals import before_task_publish, task_postrun, task_prerun

    @before_task_publish.connect(weak=False)
    def add_request_id(headers=None, **kwargs):
        if headers is not None and request_id_var.get():
            headers["request_id"] = request_id_var.get()

    tokens = {}

    @task_prerun.connect(weak=False)
    def take_request_id(task_id=None, task=None, **kwargs):
        headers = getattr(task.request, "headers", None) or {}
        offered = getattr(task.request, "request_id", None) or headers.get("request_id") or request_id_var.get()
        tokens[task_id] = request_id_var.set(offered or f"task-{task_id}")

    @task_postrun.connect(weak=False)
    def drop_request_id(task_id=None, **kwargs):
        token = tokens.pop(task_id, None)
        if token is not None:
            request_id_var.reset(token)


# --- metrics ------------------------------------------------------------------------------------

_local: dict[str, Counter] = {}  # hash key -> its counters, when there is no Redis
_local_lock = threading.Lock()
_redis = None
KEY = "model-releases:metrics"
# After a failed write, the next ones skip Redis for this long: a stalled Redis costs one request
# its socket timeout, not every request.
REDIS_RETRY_SECONDS = 5.0
_unreachable_until: dict[str, float] = {}  # REDIS_URL -> when to try it again


def redis_client():
    """The Redis that holds the counters (REDIS_URL), with short timeouts and no retries (said
    explicitly: a pipeline sent again to a stalled Redis would run twice once it resumes, and
    redis-py's defaults about retrying have changed between versions): counting never waits long."""
    global _redis
    if _redis is None or _redis.url != settings.REDIS_URL:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        _redis = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        _redis.url = settings.REDIS_URL
    return _redis


def redis_resting() -> bool:
    """Whether Redis failed less than REDIS_RETRY_SECONDS ago (writes that must answer now skip it)."""
    return time.monotonic() < _unreachable_until.get(settings.REDIS_URL, 0.0)


def redis_failed() -> None:
    """Redis just failed a write: the next ones skip it for REDIS_RETRY_SECONDS."""
    _unreachable_until[settings.REDIS_URL] = time.monotonic() + REDIS_RETRY_SECONDS


class RedisWrite(Protocol):
    """A write that joins a request's one round trip to Redis (downloads.py's counts). It adds
    exactly one command; it hears whether that command was carried out, or why not."""

    def add_to(self, pipeline) -> None: ...
    def written(self) -> None: ...
    def not_written(self, error: Exception) -> None: ...


@dataclass
class _Batch:
    counts: Counter = field(default_factory=Counter)  # (hash key, field) -> amount
    writes: list[RedisWrite] = field(default_factory=list)


_batch: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar("metrics_batch", default=None)


def count(**fields: int) -> None:
    """Add to named counters, e.g. count(**{"redirects:index-tts": 1, "signing_hits": 1})."""
    count_in(KEY, fields)


def count_in(key: str, fields: dict[str, int]) -> None:
    """Add to counters in the Redis hash `key` (or this process's, without Redis).

    Inside a request the counts wait in the request's batch (see CountsMiddleware), so a page
    that signs fifty links costs one Redis round trip, not fifty.
    """
    entries = Counter({(key, name): value for name, value in fields.items()})
    batch = _batch.get()
    if batch is not None:
        batch.counts.update(entries)
        return
    _write(_Batch(entries))


def write_with_counts(write: RedisWrite) -> None:
    """Send `write` in the request's one round trip (now, outside a request). Only with REDIS_URL."""
    batch = _batch.get()
    if batch is not None:
        batch.writes.append(write)
        return
    _write(_Batch(writes=[write]))


class RedisSkipped(Exception):
    """Redis failed a moment ago (REDIS_RETRY_SECONDS): not tried again yet."""


def _write(batch: _Batch) -> None:
    entries = {where: value for where, value in batch.counts.items() if value}
    if not entries and not batch.writes:
        return
    if not settings.REDIS_URL:
        with _local_lock:
            for (key, name), value in entries.items():
                _local.setdefault(key, Counter())[name] += value
        return
    try:
        if redis_resting():
            raise RedisSkipped("Redis failed less than REDIS_RETRY_SECONDS ago")
        pipeline = redis_client().pipeline(transaction=False)
        for (key, name), value in entries.items():
            pipeline.hincrby(key, name, value)
        for write in batch.writes:
            write.add_to(pipeline)
        # Errors per command, so that a write refused on its own falls back without the others.
        results = pipeline.execute(raise_on_error=False)
    except Exception as error:  # metrics must never fail a download
        if not isinstance(error, RedisSkipped):
            redis_failed()
        logger.debug("could not count metrics: %s", error)
        for write in batch.writes:
            write.not_written(error)
        return
    for write, result in zip(batch.writes, results[len(entries) :]):
        if isinstance(result, Exception):
            write.not_written(result)
        else:
            write.written()


class CountsMiddleware:
    """Collects what a request counts and writes it once, after the response is made."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        batch = _Batch()
        token = _batch.set(batch)
        try:
            return self.get_response(request)
        finally:
            _batch.reset(token)
            _write(batch)


def counters() -> dict[str, int]:
    if not settings.REDIS_URL:
        with _local_lock:
            return dict(_local.get(KEY, {}))
    raw = redis_client().hgetall(KEY)
    return {name.decode(): int(value) for name, value in raw.items()}
