"""Hashing while bytes move, and the content type a download is served with."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

import crc32c as _crc32c

CHUNK_SIZE = 1024 * 1024
# Shown every byte of an object once, in order, by the pass that stores or reads it (the chunk
# manifest is built so, services/chunks.py). The view is valid only during the call.
Observer = Callable[[memoryview], None]


# Python's own table only: the host's mime.types must not decide what a
# download is (Debian maps .pt to a SNES format).
_MIME_TYPES = mimetypes.MimeTypes(filenames=())
_MODEL_TYPES = {
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".md": "text/markdown",
    ".pt": "application/octet-stream",
    ".pth": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".ckpt": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".gguf": "application/octet-stream",
}


def guess_content_type(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension in _MODEL_TYPES:
        return _MODEL_TYPES[extension]
    content_type, encoding = _MIME_TYPES.guess_type(path, strict=True)
    if encoding or not content_type:
        return "application/octet-stream"
    return content_type


class Composite(NamedTuple):
    """S3's checksum of a multipart upload: its algorithm over the parts' binary checksums, joined."""

    algorithm: str  # as S3 names it: "SHA256", "CRC32C"
    value: str  # base64, without S3's "-N" suffix
    parts: int

    @classmethod
    def of(cls, algorithm: str, part_checksums: list[bytes]) -> Composite:
        joined = b"".join(part_checksums)
        digest = crc32c(joined) if algorithm == "CRC32C" else hashlib.sha256(joined).digest()
        return cls(algorithm, base64.b64encode(digest).decode(), len(part_checksums))


def crc32c(data) -> bytes:
    """CRC32C as S3 takes it (4 bytes, big-endian): a part's integrity check on its way. The `crc32c`
    package computes it with the CPU's CRC32 instruction at about 13 GB/s here, six times zlib's
    CRC32 (and nine times SHA-256), without the GIL; S3 (and moto, given the same package)
    recomputes it the cheaper for it."""
    return _crc32c.crc32c(data).to_bytes(4, "big")


class HashingReader:
    """Wraps a readable file and hashes the bytes read, exactly once each.

    Uploaders may seek back and read again (retries, payload signing); only
    bytes beyond the furthest point already hashed are fed to the hash. If a
    reader ever skips ahead, the digest is marked incomplete and the caller
    re-hashes the source.

    With a ``part_size`` it also hashes each part, giving the checksum of
    checksums that S3 keeps for a multipart upload (its COMPOSITE SHA-256).
    """

    def __init__(self, fileobj: BinaryIO, part_size: int | None = None, observe: Observer | None = None):
        self._file = fileobj
        self._observe = observe  # sees the bytes the hash sees; with a gap, a prefix only
        self._hash = hashlib.sha256()
        self._hashed = fileobj.tell()
        self._start = self._hashed
        self._gap = False
        self._part_size = part_size
        self._part_hash, self._part_filled, self._part_digests = hashlib.sha256(), 0, []

    def read(self, size: int = -1) -> bytes:
        position = self._file.tell()
        data = self._file.read(size)
        end = position + len(data)
        if position > self._hashed:
            self._gap = True
        elif end > self._hashed:
            self._update(memoryview(data)[self._hashed - position :])
            self._hashed = end
        return data

    def _update(self, data: memoryview) -> None:
        self._hash.update(data)
        if self._observe is not None:
            self._observe(data)
        while self._part_size and data:
            take = min(len(data), self._part_size - self._part_filled)
            self._part_hash.update(data[:take])
            self._part_filled += take
            data = data[take:]
            if self._part_filled == self._part_size:
                self._part_digests.append(self._part_hash.digest())
                self._part_hash, self._part_filled = hashlib.sha256(), 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Uploaders close what they read; the caller owns the file, so leave it open."""

    def hexdigest_for(self, size: int) -> str | None:
        if self._gap or self._hashed - self._start != size:
            return None
        return self._hash.hexdigest()

    def composite_for(self, size: int) -> Composite | None:
        """The SHA-256 of the part digests, as S3 computes it for multipart uploads."""
        if not self._part_size or self.hexdigest_for(size) is None:
            return None
        digests = self._part_digests + ([self._part_hash.digest()] if self._part_filled else [])
        return Composite.of("SHA256", digests)


def sha256_of_stream(chunks: Iterator[bytes], observe: Observer | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        if observe is not None:
            observe(memoryview(chunk))
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_of_file(
    fileobj: BinaryIO, progress: Callable[[int], None] | None = None, observe: Observer | None = None
) -> tuple[str, int]:
    def chunks():
        while chunk := fileobj.read(CHUNK_SIZE):
            if progress:
                progress(len(chunk))
            yield chunk

    return sha256_of_stream(chunks(), observe)
