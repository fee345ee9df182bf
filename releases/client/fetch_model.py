#!/usr/bin/env python3
"""fetch_model.py: download a model version from Model Releases, verified.

    python fetch_model.py MODEL VERSION DEST_DIR [--from OLD_DIR ...] [--connections N]

or, from an application (Python 3.8+, standard library only, Linux, macOS, Windows):

    from fetch_model import ensure_model
    path = ensure_model("index-tts", "v23", "checkpoints/index-tts/v23")

VERSION may be "latest"; the version it resolves to is reported. Files land at
DEST_DIR/<path>. For each file of the version it:
  - keeps DEST_DIR/<path> when it is already there with the published SHA-256;
  - reuses a verified copy from --from OLD_DIR or a sibling folder of DEST_DIR
    (e.g. models/index-tts/v22 beside v23): hard-linked or copied, never downloaded;
  - else, when the site publishes chunk manifests and an older copy of the file is
    at hand, fetches only the chunks that changed (a delta update);
  - else downloads it through its stable URL, in several Range segments over
    separate connections for a large file and several files at once, each segment
    resumable (DEST_DIR/<dir>/.<name>.part and .<name>.part.segments);
  - asks the stable URL again for a fresh link after a 403, an expired link, a
    stall, or a body that is not the file; checks the SHA-256 and moves the file
    into place atomically. A partial or wrong file never appears at DEST_DIR/<path>.
Two runs on one DEST_DIR take turns (DEST_DIR/.fetch-model.lock, shared with fetch-model.sh).

Environment: MODEL_SITE (the site's address), FETCH_MODEL_RETRIES (default 5: tries
per file or segment without progress), FETCH_MODEL_CONNECTIONS (default 4),
FETCH_MODEL_TIMEOUT (default 60: seconds without a byte before a connection counts
as stalled).

Exit codes: 0 done; 1 usage; 3 unknown model or version (404), or withdrawn (410);
4 the site or a download failed after every retry; 5 every try of a file gave
something other than the published file, or the site named an unsafe path;
6 DEST_DIR cannot be written or locked.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

SITE = "__MODEL_SITE__"
BLOCK = 1024 * 1024
# A file is fetched in segments of this size (more for huge files: at most MAX_SEGMENTS), handed
# out in order to the connections, so the bytes on disk grow from the front and the SHA-256,
# taken behind them, is nearly done when the last segment lands.
SEGMENT_SIZE = 8 * BLOCK
MAX_SEGMENTS = 2048
STATE_EVERY = 0.5  # seconds: how often a segment's progress is saved (what a kill -9 can lose)
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{name}{digit}" for name in ("COM", "LPT") for digit in "123456789"
}


class FetchError(Exception):
    """A run that could not finish; exit_code is the CLI's exit status for it."""

    exit_code = 4


class NotFound(FetchError):
    exit_code = 3


class WrongContent(FetchError):
    exit_code = 5


class DestinationError(FetchError):
    exit_code = 6


class WrongBody(Exception):
    """One response that is not (part of) the file: retried with a fresh link."""


class Transient(Exception):
    """One failed request (a 403 from an expired link, a 5xx): retried with a fresh link."""


# --- paths ---------------------------------------------------------------------------------


def safe_relative_path(path: str) -> str:
    """The site's path, if it is safe to write on every platform; else WrongContent."""
    problem = None
    if not path or path.startswith("/") or "\\" in path or ":" in path:
        problem = "is absolute, has a drive letter or a backslash"
    elif any(ord(char) < 32 for char in path):
        problem = "contains a control character"
    else:
        for part in path.split("/"):
            if part in ("", ".", ".."):
                problem = "has an empty, '.' or '..' segment"
            elif part.rstrip(" .") != part:
                problem = "has a name ending in a dot or space"
            elif part.split(".")[0].upper() in WINDOWS_RESERVED:
                problem = f"uses the name {part!r}, which Windows reserves"
            if problem:
                break
    if problem:
        raise WrongContent(f"refusing the unsafe path {path!r} from the site: it {problem}")
    return path


def part_paths(target: Path) -> tuple[Path, Path]:
    part = target.with_name(f".{target.name}.part")
    return part, part.with_name(part.name + ".segments")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# --- HTTP ------------------------------------------------------------------------------------


class Http:
    """GET with redirects followed by hand, over one keep-alive connection per host and thread."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.local = threading.local()

    def connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool = self.local.__dict__.setdefault("pool", {})
        if (scheme, netloc) not in pool:
            kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            pool[(scheme, netloc)] = kind(netloc, timeout=self.timeout)
        return pool[(scheme, netloc)]

    def drop(self, scheme: str, netloc: str) -> None:
        connection = self.local.__dict__.get("pool", {}).pop((scheme, netloc), None)
        if connection is not None:
            connection.close()

    def send(self, parts, target: str, headers: dict) -> http.client.HTTPResponse:
        """One request; a kept-alive connection the server has closed meanwhile is replaced at once."""
        for attempt in (1, 2):
            connection = self.connection(parts.scheme, parts.netloc)
            reused = connection.sock is not None
            try:
                connection.request("GET", target, headers=headers)
                return connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.drop(parts.scheme, parts.netloc)
                if not reused or attempt == 2:
                    raise
            except Exception:
                self.drop(parts.scheme, parts.netloc)
                raise
        raise AssertionError("unreachable")

    def get(self, url: str, headers: dict | None = None) -> tuple[http.client.HTTPResponse, dict]:
        """The final response (unread) and the headers of the first one (the site's X-Artifact-*)."""
        first = None
        for _ in range(10):
            parts = urlsplit(url)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            response = self.send(parts, target, {"User-Agent": "fetch_model.py", **(headers or {})})
            first = first if first is not None else {k.lower(): v for k, v in response.getheaders()}
            if response.status not in (301, 302, 303, 307, 308):
                response.drop = lambda p=parts: self.drop(p.scheme, p.netloc)  # type: ignore[attr-defined]
                return response, first
            response.read()
            url = urljoin(url, response.getheader("Location", ""))
        raise Transient(f"too many redirects from {url}")


def read_json(web: Http, url: str, retries: int) -> tuple[dict, dict]:
    problem = ""
    for attempt in range(1, retries + 1):
        try:
            response, _ = web.get(url, {"Accept": "application/json"})
            body = response.read()
            if response.status in (404, 410):
                try:
                    detail = json.loads(body).get("detail")
                except ValueError:
                    detail = None
                raise NotFound(detail or f"{url}: not found ({response.status})")
            if response.status == 200:
                return json.loads(body), {k.lower(): v for k, v in response.getheaders()}
            problem = f"{url} answered HTTP {response.status}"
        except (OSError, http.client.HTTPException, Transient) as error:
            problem = f"cannot reach {url}: {error}"
        except ValueError:
            problem = f"{url} did not answer with JSON (is it a Model Releases site?)"
        if attempt < retries:
            time.sleep(attempt)
    raise FetchError(problem)


# --- progress ------------------------------------------------------------------------------


class Reporter:
    """One line per file, or a progress bar on a terminal; all output on stderr."""

    def __init__(self, quiet: bool = False, bar: bool | None = None):
        self.quiet = quiet
        self.bar = (not quiet) and (sys.stderr.isatty() if bar is None else bar)
        self.lock = threading.Lock()
        self.total = self.done = 0
        self.started = time.monotonic()
        self.shown = 0.0

    def say(self, message: str) -> None:
        if self.quiet:
            return
        with self.lock:
            sys.stderr.write(("\r\x1b[K" if self.bar else "") + f"fetch-model: {message}\n")
            sys.stderr.flush()

    def expect(self, size: int) -> None:
        with self.lock:
            self.total += size

    def advance(self, count: int) -> None:
        with self.lock:
            self.done += count
            now = time.monotonic()
            if not self.bar or now - self.shown < 0.2:
                return
            self.shown = now
            share = self.done / self.total if self.total else 1.0
            rate = self.done / max(now - self.started, 1e-6) / 1e6
            filled = int(share * 30)
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} "
                f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB {rate:,.1f} MB/s"
            )
            sys.stderr.flush()


# --- one file, in segments -----------------------------------------------------------------


class Segments:
    """Which byte ranges of a part file hold the file's bytes, saved beside it to resume."""

    def __init__(self, state: Path, size: int, sha256: str, ranges: list[list[int]]):
        self.state, self.size, self.sha256, self.ranges = state, size, sha256, ranges  # [start, next, end+1]
        self.lock = threading.Condition()

    @classmethod
    def load_or_plan(cls, part: Path, state: Path, size: int, sha256: str) -> Segments:
        try:
            saved = json.loads(state.read_text())
            if saved["size"] == size and saved["sha256"] == sha256 and part.exists():
                return cls(state, size, sha256, [list(map(int, r)) for r in saved["ranges"]])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        # No state: a part file is a prefix (as fetch-model.sh leaves it), or nothing.
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if not part.exists():
            part.touch()
        rest = size - have
        step = max(SEGMENT_SIZE, -(-rest // MAX_SEGMENTS))
        bounds = list(range(have, size, step)) + [size] if rest else [have, have]
        ranges = [[0, have, have]] if have else []
        ranges += [[bounds[i], bounds[i], bounds[i + 1]] for i in range(len(bounds) - 1)]
        segments = cls(state, size, sha256, ranges)
        segments.save()
        return segments

    def held(self) -> int:
        return sum(next_ - start for start, next_, _ in self.ranges)

    def frontier(self) -> int:
        """Bytes from the start of the file that are all on disk."""
        for start, next_, end in self.ranges:
            if next_ < end:
                return next_
        return self.size

    def save(self) -> None:
        with self.lock:
            text = json.dumps({"size": self.size, "sha256": self.sha256, "ranges": self.ranges})
        temporary = self.state.with_name(self.state.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.state)


class FileFetch:
    """Downloads one file of the version into its part file and verifies it."""

    def __init__(self, run: Run, entry: dict, target: Path):
        self.run, self.entry, self.target = run, entry, target
        self.path, self.size, self.sha256 = entry["path"], int(entry["size"]), entry["sha256"]
        self.part, self.state = part_paths(target)
        self.fetched_chunks: list = []  # (offset, length, digest) fetched by a delta update

    def download(self) -> None:
        """Fetch, verify and move into place; a wrong file is fetched again, up to the retries."""
        for _ in range(self.run.retries):
            segments = Segments.load_or_plan(self.part, self.state, self.size, self.sha256)
            if segments.held():
                self.run.report.say(f"{self.path}: resuming at {segments.held()} bytes")
            try:
                actual = self.fetch_segments(segments)
            except WrongContent:
                self.discard()  # never keep bytes that are not the file
                raise
            problem = self.wrong_chunk() if self.fetched_chunks else None
            self.fetched_chunks = []  # a retry downloads the whole file
            if not problem and actual == self.sha256:
                self.state.unlink()
                os.replace(self.part, self.target)
                return
            self.discard()
            problem = problem or f"SHA-256 mismatch (got {actual}, expected {self.sha256})"
            self.run.report.say(f"{self.path}: {problem}; asking the stable URL for a fresh link")
        raise WrongContent(f"{self.path}: giving up after {self.run.retries} tries; never the published file")

    def prepare_delta(self, older: Path, older_sha256: str) -> int:
        """Lay the chunks the older file holds into the part file and leave the others as ranges to
        fetch (resumable like any download). Returns the bytes left to fetch."""
        params, new_chunks = read_manifest(self.run, self.entry["chunks_url"], self.size, self.sha256)
        old_params, old_chunks = read_manifest(
            self.run, urljoin(self.entry["chunks_url"], older_sha256), older.stat().st_size, older_sha256
        )
        if params != old_params:
            raise ValueError("the two manifests were cut with different parameters")
        copies, ranges, self.fetched_chunks = plan_delta(old_chunks, new_chunks)
        with open(older, "rb") as source, open(self.part, "wb") as out:
            out.truncate(self.size)
            for new_offset, old_offset, length in copies:
                source.seek(old_offset)
                out.seek(new_offset)
                out.write(source.read(length))
        held = [[offset, offset + length, offset + length] for offset, _, length in copies]
        pieces = [
            [at, at, min(at + SEGMENT_SIZE, end)] for start, _, end in ranges for at in range(start, end, SEGMENT_SIZE)
        ]
        Segments(self.state, self.size, self.sha256, sorted(held + pieces)).save()
        return sum(end - start for start, _, end in ranges)

    def wrong_chunk(self) -> str | None:
        """After a delta update: the first fetched chunk whose SHA-256 is not the manifest's."""
        with open(self.part, "rb") as part:
            for offset, length, digest in self.fetched_chunks:
                part.seek(offset)
                if hashlib.sha256(part.read(length)).digest() != digest:
                    return f"the chunk at byte {offset} is not the published one"
        return None

    def discard(self) -> None:
        for leftover in (self.part, self.state):
            if leftover.exists():
                leftover.unlink()

    def fetch_segments(self, segments: Segments) -> str:
        """Run every unfinished segment on its own connection, hashing behind them; the file's SHA-256."""
        self.run.report.expect(self.size - segments.held())
        digest, errors = hashlib.sha256(), []
        pending = [bounds for bounds in reversed(segments.ranges) if bounds[1] < bounds[2]]
        workers = [
            threading.Thread(target=self.segment_worker, args=(segments, pending, errors), daemon=True)
            for _ in range(min(self.run.connections, len(pending)))
        ]
        for worker in workers:
            worker.start()
        hashed = 0
        # Unbuffered: a buffered reader keeps read-ahead bytes that a writer had not written yet.
        with open(self.part, "rb", buffering=0) as source:
            while hashed < self.size:
                with segments.lock:
                    frontier = segments.frontier()
                    while frontier == hashed and any(w.is_alive() for w in workers):
                        segments.lock.wait(0.5)
                        frontier = segments.frontier()
                if frontier == hashed:
                    break  # every worker stopped short of the end
                source.seek(hashed)
                block = source.read(min(frontier - hashed, 4 * BLOCK))
                digest.update(block)
                hashed += len(block)
        for worker in workers:
            worker.join()
        segments.save()
        if errors:
            raise errors[0]
        return digest.hexdigest()

    def segment_worker(self, segments: Segments, pending: list, errors: list) -> None:
        """Fetch pending ranges one after another over one connection slot, until none is left."""
        try:
            while not errors:
                with segments.lock:
                    if not pending:
                        return
                    bounds = pending.pop()
                with self.run.slots:
                    self.fetch_range(segments, bounds)
        except BaseException as error:  # reported by fetch_segments, in the file's own thread
            errors.append(error)
            with segments.lock:
                segments.lock.notify_all()

    def fetch_range(self, segments: Segments, bounds: list[int]) -> None:
        tries, failure = 0, FetchError
        while bounds[1] < bounds[2]:
            before = bounds[1]
            try:
                self.stream_into(segments, bounds)
            except WrongBody as problem:
                failure = WrongContent
                self.run.report.say(f"{self.path}: {problem}; asking the stable URL for a fresh link")
            except (OSError, http.client.HTTPException, Transient) as problem:
                failure = FetchError
                self.run.report.say(f"{self.path}: {problem or type(problem).__name__}")
            if bounds[1] > before:
                tries = 0  # progress: a flaky link gets its retries afresh
                continue
            tries += 1
            if tries >= self.run.retries:
                raise failure(f"{self.path}: giving up after {tries} tries")
            time.sleep(min(tries, 5))

    def stream_into(self, segments: Segments, bounds: list[int]) -> None:
        start, end = bounds[1], bounds[2]
        response, first = self.run.http.get(self.entry["stable_url"], {"Range": f"bytes={start}-{end - 1}"})
        try:
            published = first.get("x-artifact-sha256")
            if published and published != self.sha256:
                raise WrongContent(f"{self.path}: the site lists SHA-256 {self.sha256} but serves {published}")
            check_response(response, self.path, start, end, self.size)
            saved_at = time.monotonic()
            with open(self.part, "r+b") as out:
                out.seek(start)
                while bounds[1] < end:
                    # read1: what has arrived, so a stall or a cut loses nothing already received
                    block = response.read1(min(BLOCK, end - bounds[1]))
                    if not block:
                        raise Transient(f"the connection closed at byte {bounds[1]}")
                    count = len(block)
                    out.write(block)
                    out.flush()
                    with segments.lock:
                        bounds[1] += count
                        segments.lock.notify_all()
                    self.run.report.advance(count)
                    if time.monotonic() - saved_at >= STATE_EVERY:
                        segments.save()
                        saved_at = time.monotonic()
        except BaseException:
            response.drop()
            raise
        if response.length:  # a 200 for the whole file when only a part was left
            response.drop()
        else:
            response.read()  # the end of the body: http.client frees the connection for the next request


def check_response(response, path: str, start: int, end: int, size: int) -> None:
    """A response that carries bytes start..end-1 of the file, or WrongBody / Transient."""
    if response.status == 403:
        response.read()
        raise Transient("the link was refused (403, expired?)")
    if response.status in (404, 410):
        response.read()
        raise NotFound(f"{path}: the site answered {response.status}; was the version withdrawn?")
    if response.status >= 400:
        response.read()
        raise Transient(f"HTTP {response.status}")
    kind = (response.getheader("Content-Type") or "").lower()
    if kind.startswith("text/html") and not path.endswith((".html", ".htm")):
        raise WrongBody("the server sent an HTML page instead of the file")
    if response.status == 206:
        expected = f"bytes {start}-{end - 1}/{size}"
        if (response.getheader("Content-Range") or "").strip() != expected:
            raise WrongBody(f"the server sent {response.getheader('Content-Range')!r}, not {expected!r}")
    elif response.status == 200:
        if response.length == 0 and size:
            raise WrongBody("the server sent an empty body")
        if start != 0 or response.length != size:
            raise WrongBody(f"got {response.length} bytes without a range, the site publishes {size}")
    else:
        raise Transient(f"HTTP {response.status}")


# --- reuse and delta -------------------------------------------------------------------------

MANIFEST_HEADER = struct.Struct(">8sIIIQ32sI")  # magic, min, avg, max, file size, file SHA-256, count
MANIFEST_RECORD = struct.Struct(">QI32s")  # offset, length, SHA-256 of one chunk
MANIFEST_MAGIC = b"MRCHUNK1"
RECORD_NAME = ".fetch-model.json"  # what a finished run leaves in DEST_DIR: model and version


class LocalCopies:
    """Files in the reuse folders, found by path or by size, each hashed at most once a run."""

    def __init__(self, roots: list[Path], path_only_roots: list[Path]):
        self.roots, self.path_only = roots, path_only_roots
        self.by_size: dict[int, list[Path]] | None = None
        self.hashes: dict[tuple, str] = {}
        self.lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self.hashes:
            self.hashes[key] = sha256_of(path)
        return self.hashes[key]

    def same_path(self, relative: str) -> list[Path]:
        return [root / relative for root in self.roots + self.path_only if (root / relative).is_file()]

    def same_size(self, size: int) -> list[Path]:
        with self.lock:
            if self.by_size is None:
                self.by_size = {}
                for root in self.roots:
                    for folder, dirs, names in os.walk(root):
                        dirs[:] = [name for name in dirs if not name.startswith(".")]
                        for name in names:
                            if not name.startswith("."):
                                found = Path(folder, name)
                                self.by_size.setdefault(found.stat().st_size, []).append(found)
            return list(self.by_size.get(size, []))

    def find(self, relative: str, size: int, sha256: str) -> Path | None:
        for candidate in self.same_path(relative) + self.same_size(size):
            try:
                if candidate.stat().st_size == size and self.sha256(candidate) == sha256:
                    return candidate
            except OSError:
                continue
        return None

    def older(self, relative: str) -> tuple[Path, str] | None:
        """An older copy of the file to update from: the same path in a reuse folder."""
        for candidate in self.same_path(relative):
            if candidate.stat().st_size >= BLOCK:
                return candidate, self.sha256(candidate)
        return None


def place_copy(source: Path, target: Path) -> None:
    """Hard-link (or copy) a verified file into place under a temporary name, then rename it."""
    temporary = target.with_name(f".{target.name}.reuse")
    if temporary.exists():
        temporary.unlink()
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def parse_manifest(data: bytes, size: int, sha256: str) -> tuple[tuple, list[tuple[int, int, bytes]]]:
    """(FastCDC parameters, [(offset, length, digest)]) of a manifest that describes exactly this file."""
    if len(data) < MANIFEST_HEADER.size:
        raise ValueError("the chunk manifest is truncated")
    magic, low, average, high, file_size, file_sha, count = MANIFEST_HEADER.unpack_from(data)
    if magic != MANIFEST_MAGIC or file_size != size or file_sha.hex() != sha256:
        raise ValueError("the chunk manifest is not one of this file")
    if len(data) != MANIFEST_HEADER.size + count * MANIFEST_RECORD.size:
        raise ValueError("the chunk manifest's length does not match its count")
    chunks = list(MANIFEST_RECORD.iter_unpack(data[MANIFEST_HEADER.size :]))
    position = 0
    for offset, length, _ in chunks:
        if offset != position:
            raise ValueError("the chunk manifest's chunks do not follow each other")
        position += length
    if position != size:
        raise ValueError("the chunk manifest's chunks do not cover the file")
    return (low, average, high), chunks


def read_manifest(run: Run, url: str, size: int, sha256: str):
    response, _ = run.http.get(url)
    body = response.read()
    if response.status != 200:
        raise Transient(f"{url} answered HTTP {response.status}")
    return parse_manifest(body, size, sha256)


def plan_delta(old_chunks, new_chunks) -> tuple[list, list, list]:
    """What to copy from the older file, as (new offset, old offset, length); the byte ranges to
    fetch, as [start, start, end] with adjacent chunks merged; and the chunks those ranges hold."""
    held = {digest: offset for offset, _, digest in old_chunks}
    copies, ranges, fetched = [], [], []
    for offset, length, digest in new_chunks:
        if digest in held:
            copies.append((offset, held[digest], length))
            continue
        fetched.append((offset, length, digest))
        if ranges and ranges[-1][2] == offset:
            ranges[-1][2] = offset + length
        else:
            ranges.append([offset, offset, offset + length])
    return copies, ranges, fetched


# --- a run -------------------------------------------------------------------------------------


class DestinationLock:
    """DEST_DIR/.fetch-model.lock (a folder holding the owner's pid), as fetch-model.sh takes it."""

    def __init__(self, dest: Path, report: Reporter, patience: int = 3600):
        self.dest, self.folder, self.report, self.patience = dest, dest / ".fetch-model.lock", report, patience

    def __enter__(self) -> DestinationLock:
        waited = 0
        while True:
            try:
                self.folder.mkdir()
                break
            except FileExistsError:
                holder = self.holder()
                if holder and not process_alive(holder):  # left by a run that died: move it aside, remove it
                    stale = self.folder.with_name(f"{self.folder.name}.stale.{os.getpid()}")
                    try:
                        self.folder.rename(stale)
                        shutil.rmtree(stale, ignore_errors=True)
                    except OSError:
                        pass
                    continue
            except OSError as error:
                raise DestinationError(f"cannot lock {self.dest}: {error}") from error
            if waited == 0:
                self.report.say(f"another fetch-model run is working in {self.dest}; waiting for it")
            waited += 1
            if waited > self.patience:
                raise DestinationError(f"{self.dest} stayed locked ({self.folder}); remove it if no run is active")
            time.sleep(1)
        (self.folder / "pid").write_text(str(os.getpid()))
        return self

    def holder(self) -> int:
        try:
            return int((self.folder / "pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x00100000 | 0x1000, False, pid)  # SYNCHRONIZE | QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Run:
    """What every file of one run shares: HTTP, the connection budget, the retries, the reporter."""

    def __init__(self, connections: int, retries: int, timeout: float, report: Reporter):
        self.connections, self.retries, self.report = connections, retries, report
        self.http = Http(timeout)
        self.slots = threading.BoundedSemaphore(connections)


def env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        raise FetchError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise FetchError(f"{name} must be between {low} and {high}, not {value}")
    return value


def ensure_model(
    model: str,
    version: str,
    dest,
    *,
    site: str | None = None,
    connections: int | None = None,
    reuse_from=(),
    retries: int | None = None,
    quiet: bool = False,
) -> Path:
    """Make DEST hold every file of MODEL VERSION, verified; return DEST as a Path.

    Raises NotFound (unknown or withdrawn), WrongContent (never the published bytes, or an
    unsafe path), DestinationError (DEST cannot be written or locked), FetchError (the rest).
    """
    site = (site or os.environ.get("MODEL_SITE") or SITE).rstrip("/")
    if site == "__MODEL" + "_SITE__":
        raise FetchError("set MODEL_SITE to the site's address (this copy was not downloaded from a site)")
    connections = connections or env_int("FETCH_MODEL_CONNECTIONS", 4, 1, 64)
    report = Reporter(quiet)
    run = Run(
        connections,
        retries or env_int("FETCH_MODEL_RETRIES", 5, 1, 100),
        env_int("FETCH_MODEL_TIMEOUT", 60, 1, 3600),
        report,
    )
    listing, _ = read_json(
        run.http, f"{site}/api/v1/models/{quote(model, safe='')}/versions/{quote(version, safe='')}", run.retries
    )
    resolved = listing["version"]
    report.say(f"{model} {resolved}" if resolved == version else f"{model} {version} is {resolved}")
    files = listing["files"]
    for entry in files:
        safe_relative_path(entry["path"])  # every path, before anything is written
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DestinationError(f"cannot create {dest}: {error}") from error
    with DestinationLock(dest, report):
        outcomes = fetch_all(run, files, dest, reuse_folders(dest, model, reuse_from))
        try:
            (dest / RECORD_NAME).write_text(json.dumps({"model": model, "version": resolved}))
        except OSError:
            pass  # only a hint for the next version's reuse
    counts = {how: sum(1 for outcome in outcomes if outcome == how) for how in ("downloaded", "kept", "reused")}
    report.say(
        f"{model} {resolved}: {counts['downloaded']} downloaded, {counts['reused']} reused, "
        f"{counts['kept']} already there, in {dest}"
    )
    return dest


def reuse_folders(dest: Path, model: str, reuse_from) -> LocalCopies:
    """--from folders, and the sibling folders of DEST: searched by size when a run of this
    model left its record there, else only at the same path (cheap in any folder)."""
    chosen = [Path(folder) for folder in reuse_from if Path(folder).is_dir()]
    path_only = []
    try:
        siblings = [folder for folder in dest.resolve().parent.iterdir() if folder.is_dir()]
    except OSError:
        siblings = []
    for folder in siblings:
        if folder == dest.resolve() or folder.name.startswith(".") or folder in chosen:
            continue
        try:
            recorded = json.loads((folder / RECORD_NAME).read_text()).get("model") == model
        except (OSError, ValueError, AttributeError):
            recorded = False
        (chosen if recorded else path_only).append(folder)
    return LocalCopies(chosen, path_only)


def fetch_all(run: Run, files: list, dest: Path, copies: LocalCopies) -> list[str]:
    """Every file, several at once (each within the connection budget); raises the first failure."""
    pending, outcomes, failures = list(reversed(files)), [], []
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                entry = pending.pop()
            try:
                outcomes.append(ensure_file(run, entry, dest, copies))
            except FetchError as error:
                run.report.say(f"{entry['path']}: FAILED ({error})")
                failures.append(error)
            except Exception as error:  # a bug or an odd platform: say so, keep the others going
                run.report.say(f"{entry['path']}: FAILED ({type(error).__name__}: {error})")
                failures.append(FetchError(str(error)))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(run.connections, len(files)) or 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # short joins: Ctrl-C reaches the main thread
    if failures:
        worst = max(failures, key=lambda error: error.exit_code if error.exit_code != 6 else 7)
        raise type(worst)(f"not every file could be fetched ({worst}); run again to resume")
    return outcomes


def ensure_file(run: Run, entry: dict, dest: Path, copies: LocalCopies) -> str:
    path, size, sha256 = entry["path"], int(entry["size"]), entry["sha256"]
    target = dest / path
    if target.is_file() and target.stat().st_size == size and sha256_of(target) == sha256:
        run.report.say(f"{path}: already there, verified")
        return "kept"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()  # present but wrong: never leave it there
    except OSError as error:
        raise DestinationError(f"cannot write {target}: {error}") from error
    found = copies.find(path, size, sha256)
    if found is not None:
        place_copy(found, target)
        run.report.say(f"{path}: reused {found}, SHA-256 verified")
        return "reused"
    fetch = FileFetch(run, entry, target)
    older = copies.older(path) if entry.get("chunks_url") and not fetch.state.exists() else None
    if older is not None:
        try:
            fetched = fetch.prepare_delta(*older)
            run.report.say(f"{path}: delta update from {older[0]}: {fetched} of {size} bytes to fetch")
        except (FetchError, WrongBody, Transient, OSError, ValueError, http.client.HTTPException) as error:
            run.report.say(f"{path}: no delta update ({error}); downloading the whole file")
            fetch.discard()
    fetch.download()
    run.report.say(f"{path}: downloaded, SHA-256 verified")
    return "downloaded"


# --- command line ------------------------------------------------------------------------------


class Usage(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"fetch-model: {message}\n")
        sys.exit(1)


def main(argv=None) -> int:
    parser = Usage(
        prog="fetch_model.py",
        description="Download a model version from Model Releases, verified.",
        epilog="Exit codes: 0 done; 1 usage; 3 not found or withdrawn; 4 network; 5 wrong content; 6 DEST_DIR.",
    )
    parser.add_argument("model")
    parser.add_argument("version", help="a version, or 'latest'")
    parser.add_argument("dest_dir")
    parser.add_argument("--from", dest="reuse_from", action="append", default=[], metavar="OLD_DIR",
                        help="a folder with an older version, to reuse and update from (repeatable)")  # fmt: skip
    parser.add_argument("--connections", type=int, metavar="N",
                        help="connections at once (default FETCH_MODEL_CONNECTIONS or 4)")  # fmt: skip
    args = parser.parse_args(argv)
    if not (args.model and args.version and args.dest_dir):
        parser.error("MODEL, VERSION and DEST_DIR must not be empty")
    if args.connections is not None and not 1 <= args.connections <= 64:
        parser.error("--connections must be between 1 and 64")
    try:
        ensure_model(args.model, args.version, args.dest_dir, connections=args.connections, reuse_from=args.reuse_from)
    except FetchError as error:
        sys.stderr.write(f"\nfetch-model: {error}\n" if sys.stderr.isatty() else f"fetch-model: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\nfetch-model: interrupted; run again to resume\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
