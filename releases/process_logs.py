"""This process's own append-only log under DATA_DIR, for what is counted without Redis (download
counts, run reports), and WARNINGs rationed so that an outage cannot flood the log.

Each process of each host appends to `<host>-<pid>.log` in its kind's directory: no two writers
share a file, so lines are never interleaved, and a fold knows from the name whether the writer
is still alive (record_folds.py sets logs aside before reading them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 60.0


class Every:
    """At most one log line per `seconds`, with the number of occasions since the last one."""

    def __init__(self, seconds: float = WARN_EVERY_SECONDS):
        self.seconds, self.last, self.since = seconds, float("-inf"), 0
        self.lock = threading.Lock()

    def due(self) -> int:
        """0 when not due yet; else the occasions this line speaks for (this one included)."""
        with self.lock:
            self.since += 1
            if time.monotonic() - self.last < self.seconds:
                return 0
            occasions, self.since, self.last = self.since, 0, time.monotonic()
            return occasions


class ProcessLog:
    """This process's log in `directory()`. `lock` guards its writes and the renames that set it aside."""

    def __init__(self, directory: Callable[[], Path], line_is: str):
        self._directory, self._line_is = directory, line_is  # what a line holds, e.g. "download count"
        self.lock = threading.Lock()
        self.unwritable = Every()

    def path(self) -> Path:
        return self._directory() / f"{socket.gethostname()}-{os.getpid()}.log"

    def append(self, line: str) -> bool:
        """Add a line; False, with a rationed WARNING, when the disk refuses (the caller's request
        must not fail for it)."""
        try:
            with self.lock:
                self.path().parent.mkdir(parents=True, exist_ok=True)
                with open(self.path(), "a", encoding="ascii") as log:
                    log.write(line)
            return True
        except OSError as error:
            if lost := self.unwritable.due():
                what = f"{lost} {self._line_is}{'' if lost == 1 else 's'}"
                logger.warning("could not keep %s in %s: %s", what, self.path(), error)
            return False
