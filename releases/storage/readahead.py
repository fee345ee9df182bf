"""Hashing an HTTP response as it arrives: one thread reads into a ring of reused buffers while
the caller's thread hashes the full ones. Socket reads and SHA-256 both release the GIL, so the
two overlap; the bytes go from the socket straight into the buffers, never into new objects."""

from __future__ import annotations

import hashlib
import queue
import threading

from .base import Progress, StorageError

# A re-hash reads ahead into a ring of READ_AHEAD buffers of READ_BUFFER bytes (12 MiB per thread).
READ_BUFFER, READ_AHEAD = 4 * 1024 * 1024, 3
_rings = threading.local()


def _read_ring() -> list[bytearray]:
    """This thread's read-ahead buffers, kept for every object it reads while it lives.

    Fresh 12 MiB for each object cost page faults on every read (about a tenth of verify's
    throughput); verify's threads end with its run, and their buffers with them.
    """
    ring = getattr(_rings, "buffers", None)
    if ring is None or len(ring[0]) != READ_BUFFER:
        ring = _rings.buffers = [bytearray(READ_BUFFER) for _ in range(READ_AHEAD)]
    return ring


def sha256_of_response(source, key: str, progress: Progress | None = None, observe=None) -> tuple[str, int]:
    """(hex SHA-256, size) of an http.client response's body, the object at ``key``, each buffer
    also shown to ``observe`` (hashing.Observer); the caller closes the response. A body shorter
    than its Content-Length raises StorageError."""
    expected = source.length
    free, full = queue.Queue(), queue.Queue()
    for buffer in _read_ring():
        free.put(buffer)

    def read_ahead():
        total = 0
        try:
            while (buffer := free.get()) is not None:
                view, filled = memoryview(buffer), 0
                while filled < READ_BUFFER and (count := source.readinto(view[filled:])):
                    filled += count
                full.put((buffer, filled))
                total += filled
                if filled < READ_BUFFER:
                    break
            if expected is not None and total < expected:
                cut = f"the connection closed after {total:,} of {expected:,} bytes"
                raise StorageError(f"Could not read object {key!r}: {cut}.")
        except StorageError as error:
            full.put(error)
        except Exception as error:  # a socket error or timeout, raised again in the hashing thread
            full.put(StorageError(f"Could not read object {key!r}: {error}."))
        finally:
            full.put(None)

    reader = threading.Thread(target=read_ahead, daemon=True)
    reader.start()
    digest, size = hashlib.sha256(), 0
    try:
        while (item := full.get()) is not None:
            if isinstance(item, StorageError):
                raise item
            buffer, filled = item
            with memoryview(buffer)[:filled] as view:
                digest.update(view)
                if observe is not None:
                    observe(view)
            size += filled
            if progress:
                progress(filled)
            free.put(buffer)
    finally:
        free.put(None)
        reader.join(timeout=5)
        if reader.is_alive():  # still stuck in a read into one of the buffers: never hand them out again
            _rings.buffers = None
    return digest.hexdigest(), size
