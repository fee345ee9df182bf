"""Download counts on the request path: what counts, counted once per client and window, with no
database write; folded into daily rows later by download_fold.py (`rollup_downloads`).

What counts: a stable-URL GET that starts a download (no Range, or one whose first range starts at
byte 0; a Range the file server would ignore also starts one). HEAD, and the later segments of a
parallel or resumed download, do not. Query strings play no part.

Once per client: the same client asking for the same file again within DOWNLOAD_DEDUPE_SECONDS
counts once. The client is known only by a marker, an HMAC of the file id and its address
(client_address.py) under a salt derived from DJANGO_SECRET_KEY and the UTC day, so markers change
every day and the address is never kept. With Redis the marker is a key that expires with the
window; a Lua script sets it (SET NX EX) and adds the count (HINCRBY `<file id>:<day>` in
COUNTS_KEY) only if it was new, in the request's one round trip to Redis (observability.py).

Without Redis (the embedded default), each process appends `<file id>:<day>` lines to a log of its
own under DATA_DIR/downloads and keeps its markers in memory for the window.

When Redis cannot be reached (down, or stalled past the client's 0.5 s timeout), the count goes to
the local log instead, with its marker, and a WARNING says so (at most once a minute per process).
The first count that reaches Redis again sends this process's log to Redis through the same
script, so a count whose request did reach a stalled Redis is not counted twice; the fold sends
the logs of any other process on its host.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections import Counter, OrderedDict
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from . import observability
from .client_address import client_address, client_marker
from .download_records import (
    COUNTS_KEY,
    Unreadable,
    add_to_quarantine,
    log_dir,
    log_lines,
    parse_log_line,
    quarantine_entry,
    quarantine_location,
    report,
)
from .process_logs import Every, ProcessLog
from .record_folds import set_aside

logger = logging.getLogger(__name__)

SEEN_PREFIX = "model-releases:downloads:seen:"
MAX_LOCAL_MARKERS = 100_000  # markers a process keeps in memory; past it the oldest go first
_DIGITS = re.compile(r"[0-9]{1,19}")
REPLAY_CHUNK = 1000  # log lines sent to Redis per round trip

# KEYS: the marker, the counts hash. ARGV: the window in seconds, the field. Counts only a new marker.
COUNT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return 0
"""


def starts_download(method: str, range_header: str) -> bool:
    """Whether a request for a stable URL starts a download (see the module docstring)."""
    if method != "GET":
        return False
    unit, equals, ranges = range_header.strip().partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return True  # no Range, or one the file server ignores: the whole file
    start, dash, _ = ranges.split(",", 1)[0].strip().partition("-")
    start = start.strip()
    if not dash:
        return True  # unreadable: ignored, the whole file
    if not start:
        return False  # a suffix range: the end of the file
    return not _DIGITS.fullmatch(start) or int(start) == 0


def count_download(request, file_id: int) -> None:
    """Count one download of a file by this request's client, today (UTC). Never raises."""
    try:
        if not starts_download(request.method, request.headers.get("Range", "")):
            return
        day = timezone.now().date().isoformat()
        field = f"{file_id}:{day}"
        marker = _marker(file_id, client_address(request.META), day)
        if settings.REDIS_URL:
            observability.write_with_counts(_RedisCount(field, marker))
        elif _seen.first_time(marker):
            _log.append(f"{field}\n")
    except Exception:  # counting must not fail a download
        logger.exception("could not count a download of file %s", file_id)


def _marker(file_id: int, address: str, day: str) -> str:
    """The client's marker for a file and day."""
    return client_marker(address, "download-dedupe", day, str(file_id))


class _SeenMarkers:
    """The markers this process counted within the window (no Redis, or Redis unreachable)."""

    def __init__(self):
        self._until: OrderedDict[str, float] = OrderedDict()  # in expiry order: the window is fixed
        self._lock = threading.Lock()

    def first_time(self, marker: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._until and next(iter(self._until.values())) <= now:
                self._until.popitem(last=False)
            if marker in self._until:
                return False
            if len(self._until) >= MAX_LOCAL_MARKERS:
                self._until.popitem(last=False)  # the oldest: memory stays bounded under a flood
            self._until[marker] = now + settings.DOWNLOAD_DEDUPE_SECONDS
            return True


_seen = _SeenMarkers()


class _RedisCount:
    """One download, counted in the request's round trip to Redis or, failing that, in the log."""

    def __init__(self, field: str, marker: str):
        self.field, self.marker = field, marker

    def add_to(self, pipeline) -> None:
        keys_and_args = (SEEN_PREFIX + self.marker, COUNTS_KEY, settings.DOWNLOAD_DEDUPE_SECONDS, self.field)
        pipeline.eval(COUNT_ONCE, 2, *keys_and_args)

    def written(self) -> None:
        _fallback.send_pending()

    def not_written(self, error: Exception) -> None:
        _fallback.keep(self.field, self.marker, error)


# --- the local log -----------------------------------------------------------------------------------

_log = ProcessLog(log_dir, "download count")
own_log = _log.path


class _Fallback:
    """Counts kept in this process's log while Redis cannot be reached, and sent once it can."""

    def __init__(self):
        self.pending = False  # this process's log holds counts not yet sent to Redis
        self.orphans_looked_for = False  # once per process, and after each of its own fallbacks
        self.unsent: list[Path] = []  # logs set aside whose sending failed
        self.warning = Every()
        self.lock = threading.Lock()

    def keep(self, field: str, marker: str, error: Exception) -> None:
        if not _seen.first_time(marker) or not _log.append(f"{field} {marker}\n"):
            return
        with self.lock:
            self.pending = True
        if kept := self.warning.due():
            logger.warning(
                "Redis cannot be reached (%s): download counts go to %s until it answers (%d since the last warning)",
                error,
                own_log(),
                kept,
            )

    def send_pending(self) -> None:
        if not self.pending and not self.unsent and self.orphans_looked_for:
            return
        with self.lock:
            if not self.pending and not self.unsent and self.orphans_looked_for:
                return
            look_for_orphans = self.pending or not self.orphans_looked_for
            logs, self.unsent, self.pending, self.orphans_looked_for = self.unsent, [], False, True
            with _log.lock:
                if own_log().exists():
                    logs.append(set_aside(own_log()))
        if look_for_orphans:
            logs += _orphaned_logs()
        for log in logs:
            try:
                sent = send_log(log)
            except Exception as error:  # Redis failed again: keep the log for the next success
                logger.warning("could not send %s to Redis yet: %s", log, error)
                with self.lock:
                    self.unsent.append(log)
                continue
            logger.info("Redis answers again: sent %d download counts kept in %s", sent, log.name)


_fallback = _Fallback()


def _orphaned_logs() -> list[Path]:
    """Set aside the logs of processes of this host that died with counts in them (a web worker
    recycled while Redis was down): no one writes to them any more."""
    found = []
    for log in log_dir().glob("*.log"):
        host, _, pid = log.stem.rpartition("-")
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            found.append(set_aside(log))
        except FileNotFoundError:
            pass  # another process of this host took it first
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def send_log(log: Path) -> int:
    """Send a set-aside log's counts to Redis through COUNT_ONCE (a marker already counted by a
    stalled request is not counted again), set its unreadable lines aside, delete it. The counts sent."""
    client = observability.redis_client()
    lines = log_lines(log.read_bytes())
    reasons: Counter = Counter()
    sent = 0
    for start in range(0, len(lines), REPLAY_CHUNK):
        pipeline = client.pipeline(transaction=False)
        quarantined = []
        for raw in lines[start : start + REPLAY_CHUNK]:
            try:
                line = parse_log_line(raw)
            except Unreadable as error:
                reasons[error.reason] += 1
                quarantined.append(quarantine_entry(log.name, raw, error.reason))
                continue
            if line.marker:
                pipeline.eval(COUNT_ONCE, 2, SEEN_PREFIX + line.marker, COUNTS_KEY, settings.DOWNLOAD_DEDUPE_SECONDS, line.field)  # fmt: skip
            else:  # written without Redis: counted once when written
                pipeline.hincrby(COUNTS_KEY, line.field, 1)
        add_to_quarantine(pipeline, quarantined)
        results = pipeline.execute()
        sent += sum(1 for result in results[: len(results) - (2 if quarantined else 0)] if result)
    log.unlink(missing_ok=True)  # (a fold on this host may have sent the same log: markers count it once)
    report(log.name, reasons, quarantine_location())
    return sent


def since(days: int):
    """The first day of the last `days` days, today (UTC) included."""
    return timezone.now().date() - timedelta(days=days - 1)
