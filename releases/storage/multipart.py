"""Resumable multipart uploads to S3 for large local files (publish_release).

Parts go up `jobs` at a time, each with its CRC32C checksum (S3 checks it on arrival). The file is
read once, in order: the whole file's SHA-256, which the site records, and whatever the caller
builds from the bytes (the chunk manifest) are computed from the same reads that feed the parts. The upload is not aborted
when the run stops: the next upload of the same key finds it (S3 lists the uploads in progress by
key), keeps every stored part whose size and CRC32C (or MD5 ETag, where the store lists no CRC32C)
match the local part, and sends only the rest. Abandoned uploads are aborted by the
`abort-stale-uploads` beat job once they are older than STALE_UPLOAD_HOURS.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import queue
import stat
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .hashing import Composite, crc32c

logger = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_PARTS = 10_000
# awscli's part size. Under glibc's 32 MiB mmap threshold, a part's buffer (here, and in a server
# written in Python) reuses freed heap memory instead of faulting fresh pages in, one by one, for
# every part: with 64 MiB parts moto took seconds longer to complete a 1 GiB upload. plan() makes
# parts larger for files of more than 10,000 of them (78 GiB).
PART_SIZE = 8 * 1024 * 1024
# The parts' checksum, as S3 names it. CRC32C rather than SHA-256 or awscli's CRC32: it guards a
# part's bytes on the way as well, and with the CPU's CRC32 instruction it costs a ninth of SHA-256
# and a sixth of zlib's CRC32 here, both for us and for S3 (moto, on the same two cores), which
# recomputes every part's checksum. A publish has the whole file's SHA-256, the chunk hashes and
# FastCDC to pay for beside it.
PART_CHECKSUM = "CRC32C"
PART_CHECKSUM_FIELD = f"Checksum{PART_CHECKSUM}"  # as S3's requests and answers name the value
# Parts read at once, ahead of the hashing. One read at a time waits out the disk's latency for each
# part: on a busy (virtual) disk that held a publish to 190 MiB/s, where awscli, which reads its
# parts on all its threads, kept up with the server.
READ_AHEAD = 4


class Stopped(Exception):
    """A part not sent because the upload stopped (another part failed, or Ctrl-C)."""


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    offset: int
    length: int


@dataclass
class UploadReport:
    parts: int = 0
    reused_parts: int = 0
    sent_bytes: int = 0


def is_a_file(fileobj) -> bool:
    """A file on disk, whose parts threads can read at their offsets (os.pread)."""
    try:
        return stat.S_ISREG(os.fstat(fileobj.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # BytesIO, a Django upload in memory
        return False


def plan(size: int, part_size: int) -> list[Part]:
    part_size = max(part_size, MIN_PART, -(-size // MAX_PARTS))
    return [Part(n + 1, offset, min(part_size, size - offset)) for n, offset in enumerate(range(0, size, part_size))]


class ResumableUpload:
    """One file to one key, resumed if S3 holds an unfinished upload of that key."""

    def __init__(self, client, part_client, bucket: str, key: str, fd: int, size: int, *, part_size: int, jobs: int):
        self.client, self.bucket, self.key, self.fd, self.size = client, bucket, key, fd, size
        self.part_client = part_client  # sends the parts, whose CRC32C checksums protect their bytes
        self.part_size, self.jobs = part_size, max(1, jobs)
        self.report = UploadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set by the first failure or interruption: no new part starts

    def run(self, content_type: str, progress=None, observe=None) -> tuple[str, Composite]:
        """Upload and complete. Returns the whole file's SHA-256 and S3's composite checksum of the
        parts, to compare with what S3 reports.

        The file is read once: parts are read READ_AHEAD at a time on threads of their own, then
        taken in order on this thread, which hashes each into the whole file's SHA-256 (on a thread
        of its own, one part behind: hashlib releases the GIL) and shows it to `observe` (which sees
        every byte once, in order: the chunk manifest is built there), then hands it to the pool,
        whose `jobs` threads each send one part at a time. The parts are read into jobs + 1 +
        READ_AHEAD buffers, reused: memory stays at that many parts.

        Stopped part way (Ctrl-C, a failure), it waits for the parts in flight, cancels the rest and
        leaves the upload in S3 for the next run to resume."""
        upload_id, stored = self._resume_or_start(content_type)
        parts = plan(self.size, self._stored_part_size(stored) or self.part_size)
        if stored and not self._fits(stored, parts):
            self._abort(upload_id)  # cut with another part size: start again
            upload_id, stored = self._start(content_type), {}
        self.report.parts = len(parts)
        buffers = _Buffers(self.jobs + 1 + READ_AHEAD, parts[0].length)
        whole, pool, futures = _Digest(observe), ThreadPoolExecutor(self.jobs, thread_name_prefix="part"), []
        try:
            for part, data, buffer in self._read_in_order(parts, buffers):
                if self._stop.is_set():
                    buffers.give(buffer)
                    break
                hashed = whole.update(data)
                futures.append(
                    pool.submit(
                        self._part, upload_id, part, data, stored.get(part.number), progress, (buffers, buffer, hashed)
                    )
                )
            digest = whole.hexdigest()
            wait(futures, return_when=FIRST_EXCEPTION)
            answers = [future.result() for future in futures]  # raises the first failure
        except BaseException:
            self._stop.set()
            raise
        finally:
            whole.close()
            pool.shutdown(wait=True)  # parts not started yet stop at once and give their buffers back
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [dict(PartNumber=p.number, **answer) for p, answer in zip(parts, answers)]},
        )
        checksums = [base64.b64decode(answer[PART_CHECKSUM_FIELD]) for answer in answers]
        return digest, Composite.of(PART_CHECKSUM, checksums)

    def _read_in_order(self, parts: list[Part], buffers: _Buffers) -> Iterator[tuple[Part, bytearray, bytearray]]:
        """Each part with its bytes and the buffer that holds them (to give back once sent and
        hashed), in order, read READ_AHEAD at a time on threads of their own."""
        readers, ahead = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="read"), deque()
        try:
            for part in parts:
                ahead.append((part, readers.submit(self._read, part, buffers)))
                if len(ahead) >= READ_AHEAD:
                    first, read = ahead.popleft()
                    yield first, *read.result()
            while ahead:
                first, read = ahead.popleft()
                yield first, *read.result()
        finally:
            readers.shutdown(wait=True, cancel_futures=True)

    def _read(self, part: Part, buffers: _Buffers) -> tuple[bytearray, bytearray]:
        buffer = buffers.take(self._stop)
        try:
            with memoryview(buffer)[: part.length] as view:
                if os.preadv(self.fd, [view], part.offset) != part.length:
                    raise OSError(f"the file shrank while it was being uploaded (part {part.number})")
                # S3 takes a body of bytes or a bytearray, not a view: the last, shorter part is copied.
                return (buffer if part.length == len(buffer) else bytearray(view)), buffer
        except BaseException:
            buffers.give(buffer)
            raise

    # --- finding what is there ---------------------------------------------------------------

    def _resume_or_start(self, content_type: str) -> tuple[str, dict]:
        found = self._unfinished_upload()
        if found is None:
            return self._start(content_type), {}
        if found.get("ChecksumAlgorithm") not in (None, PART_CHECKSUM):
            # Begun by an earlier release (SHA-256 or CRC32 parts): S3 takes parts only with their
            # upload's algorithm, so it starts over.
            self._abort(found["UploadId"])
            return self._start(content_type), {}
        stored = self._stored_parts(found["UploadId"])
        logger.info("resuming the upload of %s: %d parts already stored", self.key, len(stored))
        return found["UploadId"], stored

    def _unfinished_upload(self) -> dict | None:
        listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.key)
        mine = [upload for upload in listing.get("Uploads", []) if upload["Key"] == self.key]
        return max(mine, key=lambda upload: upload["Initiated"]) if mine else None

    def _stored_parts(self, upload_id: str) -> dict[int, dict]:
        return {part["PartNumber"]: part for part in listed_parts(self.client, self.bucket, self.key, upload_id)}

    @staticmethod
    def _stored_part_size(stored: dict) -> int | None:
        return stored[min(stored)]["Size"] if stored and min(stored) < max(stored) else None

    @staticmethod
    def _fits(stored: dict, parts: list[Part]) -> bool:
        lengths = {part.number: part.length for part in parts}
        return all(lengths.get(number) == part["Size"] for number, part in stored.items())

    def _start(self, content_type: str) -> str:
        created = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key, ContentType=content_type, ChecksumAlgorithm=PART_CHECKSUM
        )
        return created["UploadId"]

    def _abort(self, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)

    # --- one part --------------------------------------------------------------------------------

    def _part(self, upload_id: str, part: Part, data, stored: dict | None, progress, held) -> dict:
        buffers, buffer, hashed = held
        try:
            if self._stop.is_set():
                raise Stopped(f"part {part.number} not started: the upload stopped")
            return self._send_part(upload_id, part, data, stored, progress)
        except BaseException:
            self._stop.set()
            raise
        finally:
            wait([hashed])  # its bytes are in the whole file's SHA-256 too: the buffer may be reused
            buffers.give(buffer)

    def _send_part(self, upload_id: str, part: Part, data: bytes, stored: dict | None, progress) -> dict:
        checksum = base64.b64encode(crc32c(data)).decode()
        if stored is not None and self._same(stored, data, checksum):
            with self._lock:
                self.report.reused_parts += 1
            if progress:
                progress(part.length)
            return {"ETag": stored["ETag"], PART_CHECKSUM_FIELD: checksum}
        answer = self.part_client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=part.number,
            Body=data,
            ChecksumAlgorithm=PART_CHECKSUM,
            **{PART_CHECKSUM_FIELD: checksum},
        )
        with self._lock:
            self.report.sent_bytes += part.length
        if progress:
            progress(part.length)
        return {"ETag": answer["ETag"], PART_CHECKSUM_FIELD: answer.get(PART_CHECKSUM_FIELD) or checksum}

    @staticmethod
    def _same(stored: dict, data: bytes, checksum: str) -> bool:
        """A stored part is this part when its size and checksum (CRC32C if listed, else the MD5 ETag) match."""
        if stored.get("Size") != len(data):
            return False
        if stored.get(PART_CHECKSUM_FIELD):
            return stored[PART_CHECKSUM_FIELD] == checksum
        return stored.get("ETag", "").strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()


class _Buffers:
    """The buffers parts are read into, reused from part to part: the memory a publish holds is fixed
    (so many parts), and no part needs fresh pages from the kernel. take() waits for one to be
    given back, and gives up once the upload stopped."""

    def __init__(self, count: int, size: int):
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(count):
            self.free.put(bytearray(size))

    def take(self, stop: threading.Event) -> bytearray:
        while not stop.is_set():
            try:
                return self.free.get(timeout=0.2)
            except queue.Empty:
                continue
        raise Stopped("no part is read once the upload stopped")

    def give(self, buffer: bytearray) -> None:
        self.free.put(buffer)


class _Digest:
    """The whole file's SHA-256, computed on a thread of its own one part behind (hashlib releases
    the GIL, so it runs beside `observe`, which sees each part on the caller's thread)."""

    def __init__(self, observe):
        self.sha256, self.observe = hashlib.sha256(), observe
        self.thread, self.last = ThreadPoolExecutor(1, thread_name_prefix="sha256"), None

    def update(self, data) -> Future:
        """Hash `data` (a future that is done once it is) and show it to `observe`."""
        if self.last is not None:
            self.last.result()  # one part at a time in the queue
        self.last = self.thread.submit(self.sha256.update, data)
        if self.observe is not None:
            self.observe(data)
        return self.last

    def hexdigest(self) -> str:
        if self.last is not None:
            self.last.result()
        return self.sha256.hexdigest()

    def close(self) -> None:
        self.thread.shutdown(wait=True, cancel_futures=True)


def listed_parts(client, bucket: str, key: str, upload_id: str) -> Iterator[dict]:
    """Every part S3 lists for an unfinished upload (ListParts, page by page)."""
    marker = 0
    while True:
        page = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
        yield from page.get("Parts", [])
        if not page.get("IsTruncated"):
            return
        marker = page["NextPartNumberMarker"]


def abort_stale_uploads(client, bucket: str, older_than: timedelta, keep=frozenset()) -> int:
    """Abort the unfinished multipart uploads started more than `older_than` ago, but those in `keep`."""
    cutoff, aborted = datetime.now(UTC) - older_than, 0
    listing: dict = {"IsTruncated": True}
    markers: dict = {}
    while listing.get("IsTruncated"):
        listing = client.list_multipart_uploads(Bucket=bucket, **markers)
        for upload in listing.get("Uploads", []):
            if upload["Initiated"] <= cutoff and upload["UploadId"] not in keep:
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                logger.info("aborted the abandoned upload of %s (started %s)", upload["Key"], upload["Initiated"])
                aborted += 1
        markers = {
            "KeyMarker": listing.get("NextKeyMarker", ""),
            "UploadIdMarker": listing.get("NextUploadIdMarker", ""),
        }
    return aborted
