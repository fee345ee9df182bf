"""A lock per version that holds across network I/O without holding a database transaction.

Adding files uploads gigabytes, and publishing asks storage about every object; neither may
run while a row lock keeps a transaction open (PostgreSQL would show the connection "idle in
transaction" for the whole upload). PostgreSQL's session-level advisory locks are taken and
released outside any transaction, and die with the connection if the process does.
SQLite (the embedded default, one process) gets a lock of this process instead.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager

from django.db import connection

NAMESPACE = 0x4D52 << 48  # "MR" in the high bits: keeps our keys apart from other advisory locks
# Both kinds are re-entrant: publishing inside release_local_files takes the lock it already holds.
_local_locks: defaultdict[int, threading.RLock] = defaultdict(threading.RLock)


class Busy(Exception):
    """Someone else holds the lock and the caller asked not to wait."""


@contextmanager
def version_lock(version_id: int, *, wait: bool = True):
    """Hold the version's lock for the block: file changes and publishing take turns."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            if wait:
                cursor.execute("SELECT pg_advisory_lock(%s)", [NAMESPACE + version_id])
            else:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [NAMESPACE + version_id])
                if not cursor.fetchone()[0]:
                    raise Busy
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [NAMESPACE + version_id])
        return
    lock = _local_locks[version_id]
    if not lock.acquire(blocking=wait):
        raise Busy
    try:
        yield
    finally:
        lock.release()
