"""The storage interface the services use, and what it returns and raises."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .hashing import CHUNK_SIZE, Observer, sha256_of_stream

Progress = Callable[[int], None]  # called with the number of bytes just transferred
# The header a part of a browser upload carries its base64 SHA-256 in (S3's name, used by both stores).
PART_CHECKSUM_HEADER = "x-amz-checksum-sha256"


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
    # S3's checksum of part checksums for multipart uploads (base64, no "-N"), and the part count:
    # SHA-256 for the admin's uploads from a browser, CRC32C for publish_release's.
    composite_sha256: str | None = None
    parts: int | None = None
    composite_crc32c: str | None = None

    def composite(self, algorithm: str) -> str | None:
        """The composite checksum of that algorithm ("SHA256", "CRC32C"), if the store gave one."""
        return {"SHA256": self.composite_sha256, "CRC32C": self.composite_crc32c}.get(algorithm)


@dataclass(frozen=True)
class StoredPart:
    """A part of an unfinished upload in parts, as storage holds it."""

    number: int
    size: int
    sha256: str | None = None  # base64, when the store lists it (S3 does; moto does not)
    etag: str | None = None


@dataclass(frozen=True)
class PartTarget:
    """Where a browser sends one part: a URL that expires, and headers to send with it. The local
    store has no URL of its own: its ``url`` is None, and the site receives the part itself."""

    url: str | None
    headers: dict


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
        observe: Observer | None = None,
    ) -> StoredObject:
        """Store the readable, seekable ``fileobj`` (from its current position) at ``key``; ``jobs``
        is how many parts of a large file a store may send at once. ``observe`` is shown every byte
        stored, once, in order, from the same reads that hash them (a store that must read the
        source again shows it a prefix only: the caller compares its count with the size)."""
        raise NotImplementedError

    def abort_stale_uploads(self, older_than, keep: frozenset = frozenset()) -> int:
        """Abort unfinished uploads started longer than ``older_than`` (a timedelta) ago, but those
        whose id is in ``keep``; how many."""
        return 0

    # --- uploads in parts that a browser sends (the admin's direct upload) -----------------------

    def part_origin(self) -> str | None:
        """The origin (scheme://host[:port]) a browser sends parts to, if not the site's own."""
        return None

    def start_parts_upload(self, key: str, content_type: str) -> str:
        """Begin an upload to ``key`` that arrives in numbered parts; its id."""
        raise NotImplementedError

    def stored_parts(self, key: str, upload_id: str) -> dict[int, StoredPart]:
        """The parts stored so far, by number. Raises MissingObject if the upload is gone."""
        raise NotImplementedError

    def part_target(self, key: str, upload_id: str, number: int, sha256: str, expires: int) -> PartTarget:
        """Where part ``number`` goes, accepted only with bytes whose base64 SHA-256 is ``sha256``."""
        raise NotImplementedError

    def complete_parts_upload(
        self, key: str, upload_id: str, parts: list[StoredPart], observe: Observer | None = None
    ) -> StoredObject:
        """Join the parts, in order, into the object at ``key``. A store that reads the bytes to join
        them (the local one) hashes them and shows them to ``observe`` on the way; S3 joins them
        itself, returns no full SHA-256 and never calls ``observe``."""
        raise NotImplementedError

    def abort_parts_upload(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts (nothing happens if it is already gone)."""
        raise NotImplementedError

    def receive_part(self, upload_id: str, number: int, read, length: int, sha256: str) -> StoredPart:
        """Store a part the site itself received (stores whose PartTarget has no URL): ``length``
        bytes from ``read(n)``, kept only if their base64 SHA-256 is ``sha256``."""
        raise StorageError(f"The {self.backend_name} store takes parts at its own URLs, not through the site.")

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

    def compute_sha256(
        self, key: str, progress: Progress | None = None, observe: Observer | None = None
    ) -> tuple[str, int]:
        """Stream the whole object and hash it: (hex digest, size); ``observe`` is shown every byte
        read, once, in order (the chunk manifest of a browser upload, or of the backfill)."""
        chunks = self.iter_bytes(key)
        if progress:
            chunks = _reporting(chunks, progress)
        return sha256_of_stream(chunks, observe)


def _reporting(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    for chunk in chunks:
        progress(len(chunk))
        yield chunk
