"""Content-defined chunk manifests (format version 1): what a client needs to update a file it holds
an older version of by fetching only the byte ranges that changed. Pure code: no database, no storage.

A manifest lists a file's FastCDC chunks (the `fastcdc` package, with the fixed parameters below) with
each chunk's offset, length and SHA-256. Boundaries depend on the content around them, not on
offsets, so bytes inserted or removed near the start of a file move only the chunks they touch.
docs/chunk-manifests.md describes the format for client authors; all integers are big-endian:

    magic        8 bytes   b"MRCHUNK1"
    min_size     u32       16384
    avg_size     u32       65536
    max_size     u32       262144
    file_size    u64
    file_sha256  32 bytes  raw digest of the whole file
    count        u32
    count records of 44 bytes: offset u64, length u32, sha256 (32 bytes, raw digest of the chunk)

Chunks are contiguous, in order, and cover the file exactly. Files under MIN_FILE_SIZE get no
manifest: a plain download costs little, and the manifest could not stay under 0.1% of the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass

MAGIC = b"MRCHUNK1"
MIN_SIZE, AVG_SIZE, MAX_SIZE = 16 * 1024, 64 * 1024, 256 * 1024
MIN_FILE_SIZE = 1024 * 1024
# A manifest is kept only while it is smaller than this share of its file (0.1%).
MAX_SHARE = 1 / 1000

HEADER = struct.Struct(">8sIIIQ32sI")  # 64 bytes
RECORD = struct.Struct(">QI32s")  # 44 bytes

# Manifests are content-addressed in the release storage: one object per distinct file content.
# Model slugs never start with ".", so no file's key (always "<model>/...") can be one of these.
KEY_PREFIX = ".chunks/"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

assert HEADER.size == 64 and RECORD.size == 44


class ManifestError(ValueError):
    """Bytes that are not a valid chunk manifest, or a file that gets none; str() says which."""


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    length: int
    sha256: bytes  # raw digest


@dataclass(frozen=True, slots=True)
class Manifest:
    file_size: int
    file_sha256: bytes  # raw digest
    chunks: tuple[Chunk, ...]
    min_size: int = MIN_SIZE
    avg_size: int = AVG_SIZE
    max_size: int = MAX_SIZE

    def encode(self) -> bytes:
        header = HEADER.pack(
            MAGIC, self.min_size, self.avg_size, self.max_size, self.file_size, self.file_sha256, len(self.chunks)
        )
        return header + b"".join(RECORD.pack(c.offset, c.length, c.sha256) for c in self.chunks)


def is_sha256_hex(value: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(value))


def manifest_key(sha256_hex: str) -> str:
    """The object key of the manifest of every file whose content has this SHA-256."""
    if not is_sha256_hex(sha256_hex):
        raise ValueError(f"{sha256_hex!r} is not a SHA-256 in lower-case hex.")
    return KEY_PREFIX + sha256_hex


def sha256_of_key(key: str) -> str | None:
    """The SHA-256 a manifest's object key names, or None for any other key."""
    sha = key.removeprefix(KEY_PREFIX)
    return sha if key.startswith(KEY_PREFIX) and is_sha256_hex(sha) else None


def gets_manifest(file_size: int) -> bool:
    return file_size >= MIN_FILE_SIZE


def small_enough(manifest_size: int, file_size: int) -> bool:
    """Whether a manifest stays under 0.1% of its file (it does for any content that is not highly
    repetitive: FastCDC's chunks average about 64 KiB, one 44-byte record each)."""
    return manifest_size < file_size * MAX_SHARE


class ManifestBuilder:
    """A manifest built from a file's bytes as they stream past, in order, exactly once each: the
    pass that uploads or hashes them feeds `update`, and `finish` gives the manifest. Its chunks are
    exactly those FastCDC finds over the whole file (tests compare with build_manifest).

    FastCDC cuts a chunk where a rolling hash of the bytes before the cut matches, looking at most
    MAX_SIZE bytes past the chunk's start. A cut found short of the end of what has arrived is
    therefore final; a chunk that runs to the end of it may not be, so those bytes (under MAX_SIZE)
    wait for the next piece. Only they are copied: every other byte is cut and hashed where it lies.
    The caller's buffers may be reused once `update` returns: nothing keeps a view of them.
    """

    _GATHER = 4 * MAX_SIZE  # small pieces (a socket's reads) are gathered up to this before cutting

    def __init__(self) -> None:
        from fastcdc import fastcdc  # the package's compiled (Cython) chunker

        self._fastcdc = fastcdc
        self._held = b""  # the bytes since the last final cut
        self._held_at = 0  # their offset in the file
        self._chunks: list[Chunk] = []
        self.size = 0

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        if self._held:
            if len(view) < MAX_SIZE:  # too little to finish the held chunk: gather
                self._held += view
                if len(self._held) >= self._GATHER:
                    self._cut_held()
                return
            # Every chunk that starts in the held bytes ends within MAX_SIZE of its start.
            held, seam = len(self._held), self._held + view[:MAX_SIZE]
            start = self._cut(memoryview(seam), self._held_at, stop_at=held)
            view = view[start - held :]
            self._held, self._held_at = b"", self._held_at + start
        used = self._cut(view, self._held_at)
        self._held, self._held_at = bytes(view[used:]), self._held_at + used

    def finish(self, file_sha256: bytes) -> bytes:
        """The manifest (encoded) of the bytes seen, whose whole SHA-256 is `file_sha256` (raw)."""
        if self._held:
            self._cut(memoryview(self._held), self._held_at, final=True)
            self._held = b""
        return Manifest(file_size=self.size, file_sha256=file_sha256, chunks=tuple(self._chunks)).encode()

    def _cut_held(self) -> None:
        used = self._cut(memoryview(self._held), self._held_at)
        self._held, self._held_at = self._held[used:], self._held_at + used

    def _cut(self, view: memoryview, base: int, *, stop_at: int | None = None, final: bool = False) -> int:
        """Record the final chunks of `view` (at file offset `base`); where the first chunk it could
        not finish starts (or the first that starts at `stop_at` or later)."""
        found = self._fastcdc(view, MIN_SIZE, AVG_SIZE, MAX_SIZE, fat=False, hf=None)
        end, sha256, chunks = len(view), hashlib.sha256, self._chunks
        try:
            for chunk in found:
                offset, length = chunk.offset, chunk.length
                if (stop_at is not None and offset >= stop_at) or (offset + length == end and not final):
                    return offset
                with view[offset : offset + length] as piece:
                    chunks.append(Chunk(base + offset, length, sha256(piece).digest()))
        finally:
            found.close()
        return end


def build_manifest(path: str | os.PathLike) -> bytes:
    """The manifest of the file at `path`, read once through a memory map (no copies).

    The whole file's SHA-256 is computed on a second thread while this one finds boundaries and
    hashes chunks: hashlib releases the GIL, so the two overlap on two cores.
    """
    from fastcdc import fastcdc

    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        if not gets_manifest(size):
            raise ManifestError(f"{os.fspath(path)} has {size:,} bytes; files under {MIN_FILE_SIZE:,} get no manifest.")
        mapped = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        chunks, file_digest = _chunk_and_hash(mapped, fastcdc)
    finally:
        mapped.close()  # every view of it is released by now
    return Manifest(file_size=size, file_sha256=file_digest, chunks=chunks).encode()


def _chunk_and_hash(mapped: mmap.mmap, fastcdc) -> tuple[tuple[Chunk, ...], bytes]:
    whole, chunks = hashlib.sha256(), []
    view = memoryview(mapped)
    hasher = threading.Thread(target=whole.update, args=(view,), name="manifest-sha256")
    hasher.start()
    boundaries = fastcdc(view, MIN_SIZE, AVG_SIZE, MAX_SIZE, fat=False, hf=None)
    try:
        for found in boundaries:
            with view[found.offset : found.offset + found.length] as piece:
                chunks.append(Chunk(found.offset, found.length, hashlib.sha256(piece).digest()))
    finally:
        boundaries.close()
        del boundaries  # fastcdc's generator holds slices of the map until it is gone
        hasher.join()
        view.release()
    return tuple(chunks), whole.digest()


def parse_manifest(data: bytes) -> Manifest:
    """A manifest from its bytes, checked: ManifestError names the first thing that is wrong."""
    data = memoryview(data)
    if len(data) < HEADER.size:
        raise ManifestError(f"Truncated manifest: {len(data)} bytes, a header alone has {HEADER.size}.")
    magic, min_size, avg_size, max_size, file_size, file_sha256, count = HEADER.unpack_from(data)
    if magic != MAGIC:
        what = "an unsupported manifest version" if magic[:7] == MAGIC[:7] else "not a chunk manifest"
        raise ManifestError(f"Wrong magic {magic!r}: {what} (expected {MAGIC!r}).")
    if not 0 < min_size <= avg_size <= max_size:
        raise ManifestError(f"Impossible chunk sizes: min {min_size}, average {avg_size}, max {max_size}.")
    expected = HEADER.size + count * RECORD.size
    if len(data) != expected:
        kind = "Truncated manifest" if len(data) < expected else "Trailing bytes after the manifest"
        raise ManifestError(f"{kind}: its count of {count} chunks needs {expected} bytes, it has {len(data)}.")
    chunks, end = [], 0
    for index, (offset, length, digest) in enumerate(RECORD.iter_unpack(data[HEADER.size :])):
        if offset != end:
            raise ManifestError(f"Chunk {index} starts at {offset}, expected {end}: chunks are not contiguous.")
        if not 0 < length <= max_size:
            raise ManifestError(f"Chunk {index} has length {length}, outside 1..{max_size}.")
        chunks.append(Chunk(offset, length, digest))
        end = offset + length
    if end != file_size:
        raise ManifestError(f"The chunks cover {end} bytes, but the file has {file_size}.")
    return Manifest(file_size, file_sha256, tuple(chunks), min_size, avg_size, max_size)
