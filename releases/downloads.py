"""Download counts: one per stable-URL GET that redirects, counted with no database write on the
request path, folded into daily rows by `rollup_downloads` (a command and a beat job).

With Redis, a download is a HINCRBY of field `<file id>:<day>` in the hash `COUNTS_KEY`, in the
request's one write of counters. A fold first RENAMEs the hash to a name of its own (atomic: later
downloads start a new hash), then adds its counts to the daily rows and records a DownloadFold row
with that name in one transaction, then deletes the renamed hash. A fold that died part way is
finished by the next one: a set-aside hash whose name is already recorded is only deleted, any
other is folded. What can be lost is what Redis held in memory when it restarted without
persistence: the downloads since the last fold, at most one fold interval.

Without Redis (the embedded default), each process appends `<file id> <day>` lines to a log of its
own under DATA_DIR/downloads; a fold renames each log aside in the same way, waits a moment for a
write that opened the log before the rename, and records the log's name with its counts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import observability
from .models import DailyDownloads, DownloadFold, File

logger = logging.getLogger(__name__)

COUNTS_KEY = "model-releases:downloads"
FOLDING_PREFIX = "model-releases:downloads:folding:"
LOG_SETTLE_SECONDS = 0.2  # how long a fold waits for a write into a log it just set aside


def count_download(file_id: int) -> None:
    """Count one download of a file, today (UTC). Never raises: counting must not fail a download."""
    field = f"{file_id}:{timezone.now().date().isoformat()}"
    if settings.REDIS_URL:
        observability.count_in(COUNTS_KEY, {field: 1})
        return
    try:
        _log_dir().mkdir(parents=True, exist_ok=True)
        with open(_log_dir() / f"{socket.gethostname()}-{os.getpid()}.log", "a", encoding="ascii") as log:
            log.write(f"{field}\n")
    except OSError as error:
        logger.warning("could not count a download of file %s: %s", file_id, error)


def fold() -> int:
    """Add every counter set aside or pending to the daily rows; the number of downloads folded."""
    if settings.REDIS_URL:
        return _fold_redis()
    return _fold_logs()


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
    for name in sorted(key.decode() for key in client.scan_iter(match=f"{FOLDING_PREFIX}*")):
        counts = Counter({field.decode(): int(value) for field, value in client.hgetall(name).items()})
        folded += _record(name, counts)
        client.delete(name)
    return folded


# --- logs without Redis -------------------------------------------------------------------------------


def _log_dir() -> Path:
    return Path(settings.DATA_DIR) / "downloads"


def _fold_logs() -> int:
    directory = _log_dir()
    if not directory.is_dir():
        return 0
    for log in directory.glob("*.log"):
        log.rename(log.with_name(f"{log.stem}.folding-{uuid.uuid4().hex}"))
    time.sleep(LOG_SETTLE_SECONDS)
    folded = 0
    for aside in sorted(directory.glob("*.folding-*")):
        counts = Counter(line.strip() for line in aside.read_text(encoding="ascii").splitlines() if line.strip())
        folded += _record(aside.name, counts)
        aside.unlink()
    return folded


# --- both ---------------------------------------------------------------------------------------------


def _record(name: str, counts: Counter) -> int:
    """Add `counts` ({"<file id>:<day>": n}) to the daily rows once, under the batch's `name`."""
    rows: Counter = Counter()
    for field, value in counts.items():
        try:
            file_id, day = field.split(":", 1)
            rows[(int(file_id), date.fromisoformat(day))] += value
        except ValueError:
            logger.warning("ignoring a malformed download counter %r in %s", field, name)
    with transaction.atomic():
        if DownloadFold.objects.filter(name=name).exists():
            return 0  # folded by a run that died before it could delete the batch
        existing = set(File.objects.filter(pk__in={file_id for file_id, _ in rows}).values_list("pk", flat=True))
        kept = {key: value for key, value in rows.items() if key[0] in existing}  # deleted drafts' files
        for (file_id, day), value in kept.items():
            updated = DailyDownloads.objects.filter(file_id=file_id, day=day).update(count=F("count") + value)
            if not updated:
                DailyDownloads.objects.create(file_id=file_id, day=day, count=value)
        DownloadFold.objects.create(name=name, downloads=sum(kept.values()))
    return sum(kept.values())


def since(days: int) -> date:
    """The first day of the last `days` days, today (UTC) included."""
    return timezone.now().date() - timedelta(days=days - 1)
