"""The storage interface the services use, and what it returns and raises."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from .hashing import CHUNK_SIZE, sha256_of_stream

Progress = Callable[[int], None]  # called with the number of bytes just transferred


class StorageError(Exception):
    """Storage refused or could not be reached; the message says which object and why."""


class MissingObject(StorageError):
    """Storage answered that the object does not exist."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    # Hex SHA-256 of the whole object when known: computed while uploading, or
    # a full-object checksum kept by the store. None when the store has none.
    sha256: str | None = None
    content_type: str | None = None
    # S3's checksum of part checksums for multipart uploads (base64, no "-N"), and the part count.
    composite_sha256: str | None = None
    parts: int | None = None


class ReleaseStore:
    """What the services need from object storage."""

    backend_name = ""

    def upload(
        self,
        key: str,
        fileobj: BinaryIO,
        *,
        content_type: str,
        progress: Progress | None = None,
        jobs: int | None = None,
    ) -> StoredObject:
        """Store the readable, seekable ``fileobj`` (from its current position) at ``key``; ``jobs``
        is how many parts of a large file a store may send at once."""
        raise NotImplementedError

    def abort_stale_uploads(self, older_than) -> int:
        """Abort unfinished uploads started longer than ``older_than`` (a timedelta) ago; how many.
        A store whose failed uploads leave nothing behind has none."""
        return 0

    def stat(self, key: str) -> StoredObject | None:
        """Size and (when the store keeps one) full-object SHA-256; None if there is no object."""
        raise NotImplementedError

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise StorageError unless the store answers (for /readyz)."""
        raise NotImplementedError

    @contextmanager
    def local_copy(self, key: str) -> Iterator[str]:
        """A filesystem path with the object's bytes while the block runs, for work that needs a
        file (chunking memory-maps it). Read-only: it may be the object itself. Backends without
        files of their own copy the object into a temporary file (TMPDIR needs room for it),
        removed afterwards. Raises MissingObject or StorageError."""
        handle, path = tempfile.mkstemp(prefix="model-releases-copy-")
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in self.iter_bytes(key):
                    out.write(chunk)
            yield path
        finally:
            os.remove(path)

    def compute_sha256(self, key: str, progress: Progress | None = None) -> tuple[str, int]:
        """Stream the whole object and hash it: (hex digest, size)."""
        chunks = self.iter_bytes(key)
        if progress:
            chunks = _reporting(chunks, progress)
        return sha256_of_stream(chunks)


def _reporting(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for chunk in chunks:
        progress(len(chunk))
        yield chunk
