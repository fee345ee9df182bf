#!/usr/bin/env python3
"""fetch_model.py: download a model version from Model Releases, verified.

    python fetch_model.py MODEL VERSION DEST_DIR [--from OLD_DIR] [--connections N]
        [--include PATTERN] [--exclude PATTERN] [--verify] [--offline]
or, from an application (Python 3.8+, standard library only, Linux, macOS, Windows):
    from fetch_model import ensure_model
    path = ensure_model("index-tts", "v23", "checkpoints/index-tts/v23")
VERSION may be "latest". Files land at DEST_DIR/<path>; DEST_DIR/.fetch-model.record notes
what was verified (docs/client-record.md). For each selected file it:
  - trusts it without reading when its size, mtime, inode and ctime are the recorded ones
    (--verify: re-hash all), else keeps it when it has the published SHA-256;
  - reuses a verified copy from --from OLD_DIR or a sibling folder a client filled (a clone,
    else a hard link, else a copy), or fetches only the changed chunks of an older copy;
  - else downloads it in Range segments over several connections (more while the total rate
    grows), each resumable (.<name>.part and .<name>.part.segments beside it). The stable URL
    is asked once a run (the GET that counts a download); its signed link serves the
    segments until it expires or is refused, then a HEAD (never counted) renews it;
  - checks the SHA-256 and moves the file into place atomically, read-only.
With the site unreachable, a folder whose record still matches its files is used (one warning);
--offline never asks. Two runs on one DEST_DIR take turns (.fetch-model.lock, as fetch-model.sh).
Each run ends by sending the site one anonymous report of how it ended (--help: what it holds).

Environment: MODEL_SITE, FETCH_MODEL_RETRIES (5: tries without progress), FETCH_MODEL_CONNECTIONS
(fixed; unset: adaptive, up to 16), FETCH_MODEL_TIMEOUT (60 s without a byte: stalled),
FETCH_MODEL_VERIFY=1, FETCH_MODEL_OFFLINE=1, FETCH_MODEL_INCLUDE / _EXCLUDE (':'-separated),
FETCH_MODEL_NO_REPORT=1 / DO_NOT_TRACK=1.

Exit codes: 0 done; 1 usage; 3 unknown or withdrawn (404, 410); 4 the site or a download failed
after every retry, or a malformed answer; 5 never the published file, or an unsafe path;
6 DEST_DIR cannot be written or locked, or lacks the space.
"""

from __future__ import annotations

import argparse
import calendar
import errno
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import stat
import struct
import sys
import threading
import time
import warnings
from fnmatch import fnmatchcase
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
JSON_CAP, ERROR_CAP = 16 * BLOCK, 64 * 1024  # the most read of an API answer, of an error body
START_CONNECTIONS, MAX_CONNECTIONS = 8, 16
RATE_WINDOW = 0.1  # seconds of transfer over which the adaptive connection count compares rates
RECORD, OLD_RECORD = ".fetch-model.record", ".fetch-model.json"
RECORD_FIRST_LINE = "fetch-model-record 1"
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{name}{digit}" for name in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"
}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
REPORT, REPORTS_KEPT, REPORT_SECONDS, CLIENT_VERSION = ".fetch-model.report", 10, 2.0, "1"  # as the sh client
OUTCOME_NAMES = {0: "ok", 1: "usage", 2: "missing_tool", 3: "not_found", 4: "network", 5: "wrong_content",
                 6: "dest_dir", 130: "interrupted", 143: "terminated"}  # fmt: skip
EPILOG = """Exit codes: 0 done; 1 usage; 3 not found or withdrawn; 4 network; 5 wrong content; 6 DEST_DIR.

Run reports (docs/run-reports.md): each run ends by POSTing one anonymous JSON report (one try, 2 s at most,
errors ignored) to the report_url the site gives (none when it gives none): model, requested and resolved version,
client and client version, outcome (the exit code and its name), run kind (first, update, later, offline), tries,
fresh links, bytes downloaded / reused / copied by delta, duration, OS family (linux, darwin, windows, other) and
whether a part file was resumed; never a path, host name or user name. A run that cannot reach the site keeps its
report in DEST_DIR/.fetch-model.report for the next one. FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1: none at all."""


class FetchError(Exception):
    """A run that could not finish; exit_code is the CLI's exit status for it."""

    exit_code = 4


class UsageError(FetchError):
    exit_code = 1


class NotFound(FetchError):
    exit_code = 3


class Malformed(FetchError):
    """The site's answer is not what the API documents."""


class Unreachable(FetchError):
    """No answer from the site (connection, DNS, TLS, timeout, 5xx/429 after the retries): why."""


class WrongContent(FetchError):
    exit_code = 5


class DestinationError(FetchError):
    exit_code = 6


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread of the command line: the run ends as after Ctrl-C (143)."""


def terminate(*_) -> None:
    raise Terminated()


def exit_code_of(error: BaseException) -> int | None:
    if isinstance(error, KeyboardInterrupt):
        return 143 if isinstance(error, Terminated) else 130
    return error.exit_code if isinstance(error, FetchError) else None


class YankedVersionWarning(UserWarning):
    """ensure_model was asked for a version its maintainers yanked (still served, with a reason)."""


class WrongBody(Exception):
    """One response that is not (part of) the file: retried with a fresh link."""


class Transient(Exception):
    """One failed request (a 403 from an expired link, a 5xx): retried with a fresh link."""


class RangeIgnored(Exception):
    """A ranged request that got the whole file (200) from past byte 0: fetch it in one stream."""


def path_problem(path: str) -> str | None:
    """Why the path cannot be written on every platform (the site's publishing rule), or None."""
    if not path or len(path) > 1024:
        return "is empty or longer than 1024 characters"
    if path.startswith("/") or "\\" in path or re.match(r"[A-Za-z]:", path):
        return "is absolute, has a drive letter or a backslash"
    if any(ord(char) < 32 or ord(char) == 127 or 0xD800 <= ord(char) <= 0xDFFF for char in path):
        return "contains a control character or a lone surrogate (no file name can hold one)"
    if set(path) & set('<>:"|?*'):
        return 'contains one of < > : " | ? *'
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if part[-1] in " .":
            return "has a name ending in a dot or space"
        if part.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED:
            return f"uses the name {part!r}, which Windows reserves"
    return None


def safe_relative_path(path: str) -> str:
    """The site's path, if it is safe to write on every platform; else WrongContent."""
    problem = path_problem(path)
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


def has_sha256(path: Path, sha256: str, size: int | None = None) -> bool:
    try:
        return path.is_file() and size in (None, path.stat().st_size) and sha256_of(path) == sha256
    except OSError:
        return False


def make_read_only(path: Path) -> None:
    mode = os.stat(path).st_mode
    if mode & 0o222:  # a chmod changes the ctime even when the mode stays: only when needed
        os.chmod(path, mode & ~0o222)


def remove_file(path: Path) -> None:
    """Remove a (read-only) file; Windows refuses to unless its read-only attribute is cleared."""
    try:
        path.unlink(missing_ok=True)
    except PermissionError:
        os.chmod(path, stat.S_IWRITE)
        path.unlink()


def stat_facts(path: Path) -> tuple:
    """(size, mtime, inode, ctime) as the record writes them."""
    facts = os.stat(path)
    mtime, ctime = (f"{ns // 10**9}.{ns % 10**9:09d}" for ns in (facts.st_mtime_ns, facts.st_ctime_ns))
    return facts.st_size, mtime, facts.st_ino, ctime


def same_time(recorded: str, actual: str) -> bool:
    # a stat without nanoseconds (BSD, BusyBox) recorded whole seconds: compare those only
    return recorded == actual or (recorded.endswith(".000000000") and recorded[:-10] == actual.split(".")[0])


class Record:
    """DEST_DIR/.fetch-model.record: header values and, per path, (size, sha256, mtime, inode, ctime)."""

    def __init__(self, fields: dict, files: dict):
        self.fields, self.files = fields, files

    def value(self, key: str) -> str:
        return (self.fields.get(key) or [""])[-1]

    @classmethod
    def read(cls, folder: Path) -> Record | None:
        """The folder's record, or None when it is absent, unreadable or of another format."""
        try:
            lines = (folder / RECORD).read_bytes().decode("utf-8").split("\n")
            if lines[0] != RECORD_FIRST_LINE:
                return None
            fields, files = {}, {}
            for line in lines[1:]:
                key, _, value = line.partition("\t")
                if key == "file":
                    size, sha256, mtime, inode, ctime, path = value.split("\t", 5)
                    files[path] = (int(size), sha256, mtime, int(inode), ctime)
                elif key:
                    fields.setdefault(key, []).append(value)
            return cls(fields, files)
        except (OSError, ValueError):
            return None

    def unchanged(self, folder: Path, path: str) -> bool:
        """The quick check: the file's stat facts are exactly the recorded ones."""
        try:
            size, mtime, inode, ctime = stat_facts(folder / path)
        except OSError:
            return False
        rsize, _, rmtime, rinode, rctime = self.files[path]
        return (size, inode) == (rsize, rinode) and same_time(rmtime, mtime) and same_time(rctime, ctime)

    def trusts(self, folder: Path, entry: dict) -> bool:
        recorded = self.files.get(entry["path"], (None, None))
        return recorded[:2] == (entry["size"], entry["sha256"]) and self.unchanged(folder, entry["path"])


def write_record(asked: Request, resolved: str, files: list) -> None:
    """Note what this run verified (stat facts taken now, after every chmod), atomically."""
    verified = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fields = [("model", asked.model), ("requested", asked.version), ("version", resolved), ("verified", verified)]
    fields += [("include", p) for p in asked.include] + [("exclude", p) for p in asked.exclude]
    fields.append(("client", f"fetch_model.py/{CLIENT_VERSION}"))
    lines = [RECORD_FIRST_LINE] + [f"{key}\t{value}" for key, value in fields]
    for entry in files:
        size, mtime, inode, ctime = stat_facts(asked.dest / entry["path"])
        lines.append("\t".join(("file", str(size), entry["sha256"], mtime, str(inode), ctime, entry["path"])))
    temporary = asked.dest / f"{RECORD}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8", newline="\n") as out:
            out.write("\n".join(lines) + "\n")
        os.replace(temporary, asked.dest / RECORD)
        remove_file(asked.dest / OLD_RECORD)
    except OSError as error:
        raise DestinationError(f"cannot write {asked.dest / RECORD}: {error}") from error


def verified_copy(dest: Path, model: str, version: str, include: list, exclude: list) -> Record | None:
    """DEST's record when it answers this request and every file it lists is still the verified one."""
    record = Record.read(dest)
    if record is None or record.value("model") != model or version not in map(record.value, ("requested", "version")):
        return None
    if (record.fields.get("include", []), record.fields.get("exclude", [])) != (include, exclude):
        return None
    for path, (_, sha256, *_) in record.files.items():
        if path_problem(path) or not (record.unchanged(dest, path) or has_sha256(dest / path, sha256)):
            return None
    return record


def redirect_target(current: str, location: str) -> str:
    """Where a redirect leads, if it may be followed: http or https, never down from https."""
    target = urljoin(current, location)
    before, after = urlsplit(current).scheme, urlsplit(target).scheme
    if after not in ("http", "https") or (before, after) == ("https", "http"):
        raise Malformed(f"refusing a redirect from {before}:// to {after or 'nothing'}://")
    return target


class Http:
    """Requests with redirects followed by hand, over one keep-alive connection per host and thread."""

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

    def send(self, method: str, url: str, headers: dict) -> http.client.HTTPResponse:
        """One request; a kept-alive connection the server has closed meanwhile is replaced at once."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            connection = self.connection(parts.scheme, parts.netloc)
            reused = connection.sock is not None
            try:
                connection.request(method, target, headers={"User-Agent": "fetch_model.py", **headers})
                response = connection.getresponse()
                response.drop = lambda p=parts: self.drop(p.scheme, p.netloc)  # type: ignore[attr-defined]
                response.final_url = url  # type: ignore[attr-defined]
                return response
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
            response = self.send("GET", url, headers or {})
            first = first if first is not None else {k.lower(): v for k, v in response.getheaders()}
            if response.status not in (301, 302, 303, 307, 308):
                return response, first
            skip_body(response)
            url = redirect_target(url, response.getheader("Location", ""))
        raise Transient(f"too many redirects from {url}")

    def locate(self, url: str) -> tuple[str, dict]:
        """Where the stable URL points now, asked with a HEAD (which never counts as a download)."""
        response = self.send("HEAD", url, {})
        response.read()
        if response.status not in (200, 301, 302, 303, 307, 308):
            check_response(response, url, 0, 0, 0)  # raises what the status means
        headers = {k.lower(): v for k, v in response.getheaders()}
        return redirect_target(url, response.getheader("Location", url)), headers


def skip_body(response) -> None:
    """Read an unwanted body (an error, a redirect) to free the connection, at most ERROR_CAP of it."""
    if len(response.read(ERROR_CAP + 1)) > ERROR_CAP:
        response.drop()


def json_body(response, what: str, cap: int = JSON_CAP):
    """A JSON answer, read no further than its cap; Malformed when it is larger or not JSON."""
    body = response.read(cap + 1)
    if len(body) > cap:
        response.drop()
        raise Malformed(f"{what} is larger than {cap} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed(f"{what} did not answer with JSON (is it a Model Releases site?)") from None


def error_detail(response) -> str | None:
    """The `detail` of a JSON error body (read at most ERROR_CAP of it), or None."""
    try:
        detail = json_body(response, "an error", ERROR_CAP).get("detail")
    except (Malformed, AttributeError):
        return None
    return detail if isinstance(detail, str) else None


def read_json(web: Http, url: str, retries: int, give_up=lambda: False) -> dict:
    """The API's answer; NotFound for 404/410, Unreachable after the retries (or at once when
    `give_up()` says a verified copy can serve instead)."""
    reason = ""
    for attempt in range(1, retries + 1):
        try:
            response, _ = web.get(url, {"Accept": "application/json"})
            if response.status in (404, 410):
                gone = NotFound(error_detail(response) or f"{url}: not found ({response.status})")
                gone.headers = response.headers  # they may name the report URL and a withdrawn version
                raise gone
            if response.status == 200:
                return json_body(response, url)
            skip_body(response)
            if response.status < 500 and response.status != 429:
                raise FetchError(f"{url} answered HTTP {response.status}")
            reason = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException, Transient) as error:
            reason = str(error) or type(error).__name__
            if give_up():
                break
        if attempt < retries:
            time.sleep(attempt)
    raise Unreachable(reason)


def checked_listing(listing) -> tuple[str, list]:
    """(resolved version, files) of an API answer, or Malformed naming what is wrong with it."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise Malformed(f"the site's answer is malformed: {what}")

    need(isinstance(listing, dict), "not an object")
    need(isinstance(listing.get("version"), str) and listing["version"], "no version")
    need(isinstance(listing.get("files"), list), "files is not a list")
    for key in ("status", "yanked_reason"):
        need(listing.get(key) is None or isinstance(listing[key], str), f"{key} is not text")
    for entry in listing["files"]:
        need(isinstance(entry, dict) and isinstance(entry.get("path"), str), "a file without a path")
        size = entry.get("size")
        need(type(size) is int and size >= 0, f"{entry['path']!r} has no size")
        need(isinstance(entry.get("sha256"), str) and SHA256_HEX.fullmatch(entry["sha256"]), "a bad sha256")
        need(isinstance(entry.get("stable_url"), str) and entry["stable_url"].startswith(("http://", "https://")),
             f"{entry['path']!r} has no stable_url")  # fmt: skip
        for key in ("chunks_url", "expires_at"):
            need(entry.get(key) is None or isinstance(entry[key], str), f"{entry['path']!r}: {key} is not text")
    return listing["version"], listing["files"]


def matches(path: str, patterns: list) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in patterns)


def epoch(text) -> float | None:
    """Seconds of an ISO 8601 UTC time like 2026-01-01T00:00:00Z, or None."""
    try:
        return float(calendar.timegm(time.strptime(str(text)[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


class Link:
    """A file's signed link: asked of the stable URL once a run (the GET that counts as a
    download), reused for every segment until it expires or is refused, then renewed with a
    HEAD of the stable URL (never counted)."""

    def __init__(self, run: Run, entry: dict):
        self.web, self.tally, self.stable, self.sha256 = run.http, run.tally, entry["stable_url"], entry["sha256"]
        self.url, self.expires = None, epoch(entry.get("expires_at")) or 0.0
        self.claimed, self.lock = False, threading.Lock()
        self.ready = threading.Event()  # the first response is in: the others may use the link

    def get(self, headers: dict, first: bool) -> http.client.HTTPResponse:
        if first:
            response, seen = self.web.get(self.stable, headers)  # a failure: the next one asks with a HEAD
            self.learn(response.final_url if response.status < 400 else None, seen)  # type: ignore[attr-defined]
        else:
            with self.lock:
                if self.url is None or time.time() >= self.expires - 30:
                    self.tally.add("fresh_links", self.url is None)  # None: a request with the last one failed
                    self.learn(*self.web.locate(self.stable))
                url = self.url
            response, _ = self.web.get(url, headers)
        if response.status == 403:
            self.url = None
        return response

    def learn(self, url: str | None, headers: dict) -> None:
        published = headers.get("x-artifact-sha256")
        if published and published != self.sha256:
            raise WrongContent(f"{self.stable}: the site lists SHA-256 {self.sha256} but serves {published}")
        self.url = url
        self.expires = epoch(headers.get("x-artifact-expires")) or self.expires or time.time() + 300


class Reporter:
    """One line per file, or a progress bar on a terminal; all output on stderr."""

    def __init__(self, quiet: bool = False, bar: bool | None = None):
        self.quiet = quiet
        self.bar = (not quiet) and (sys.stderr.isatty() if bar is None else bar)
        self.lock, self.total, self.done = threading.Lock(), 0, 0
        self.started, self.shown = time.monotonic(), 0.0

    def say(self, message: str) -> None:
        with self.lock:
            if not self.quiet:
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
            share, rate = self.done / self.total if self.total else 1.0, self.done / max(now - self.started, 1e-6) / 1e6
            bar = "#" * int(share * 30)  # then dots to 30 characters
            sys.stderr.write(
                f"\r[{bar:.<30}] {share:4.0%} {self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB {rate:,.1f} MB/s"
            )
            sys.stderr.flush()


class Connections:
    """How many requests run at once: a fixed number, or by default START_CONNECTIONS, doubled
    while the total rate still grows by a fifth (a per-connection cap), up to MAX_CONNECTIONS,
    and left where it is once it does not (a shared cap: more connections would only compete)."""

    def __init__(self, fixed: int | None):
        self.limit, self.growing = (fixed, False) if fixed else (START_CONNECTIONS, True)
        self.most, self.busy, self.turn = fixed or MAX_CONNECTIONS, 0, threading.Condition()
        self.window, self.moved_bytes, self.last_rate = time.monotonic(), 0, 0.0
        self.settling = True  # the window after a start or a change: connections still opening

    def __enter__(self) -> Connections:
        with self.turn:
            while self.busy >= self.limit:
                self.turn.wait()
            self.busy += 1
        return self

    def __exit__(self, *exc) -> None:
        with self.turn:
            self.busy -= 1
            self.turn.notify()

    def moved(self, count: int) -> None:
        if not self.growing:
            return
        with self.turn:
            self.moved_bytes += count
            now = time.monotonic()
            if now - self.window < RATE_WINDOW:
                return
            rate, saturated = self.moved_bytes / (now - self.window), self.busy >= self.limit
            self.window, self.moved_bytes = now, 0
            if self.settling or not saturated:  # the rate says nothing (yet) about more connections
                self.settling = self.settling and not saturated
                return
            if rate < self.last_rate * 1.2 or self.limit == MAX_CONNECTIONS:  # the doubling did not pay: back
                self.growing, self.limit = False, self.limit // 2 if rate < self.last_rate * 1.2 else self.limit
                return
            self.last_rate, self.limit, self.settling = rate, min(2 * self.limit, MAX_CONNECTIONS), True
            self.turn.notify_all()


class Segments:
    """Which byte ranges of a part file hold the file's bytes, saved beside it to resume."""

    def __init__(self, state: Path, size: int, sha256: str, ranges: list):
        self.state, self.size, self.sha256, self.ranges = state, size, sha256, ranges  # [start, next, end+1]
        self.lock, self.saving = threading.Condition(), threading.Lock()  # saving: one writer at a time

    @classmethod
    def load_or_plan(cls, part: Path, state: Path, size: int, sha256: str, step: int = 0) -> Segments:
        try:
            saved = json.loads(state.read_text())
            if saved["size"] == size and saved["sha256"] == sha256 and part.exists():
                ranges = [[int(start), int(next_), int(end)] for start, next_, end in saved["ranges"]]
                if all(0 <= start <= next_ <= end <= size for start, next_, end in ranges):
                    return cls(state, size, sha256, ranges)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            pass
        # No state: a part file is a prefix (as fetch-model.sh leaves it), or nothing.
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            remove_file(part)
            have = 0
        part.touch()
        rest = size - have
        step = step or max(SEGMENT_SIZE, -(-rest // MAX_SEGMENTS))
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
        for _, next_, end in self.ranges:
            if next_ < end:
                return next_
        return self.size

    def save(self) -> None:
        with self.lock:
            text = json.dumps({"size": self.size, "sha256": self.sha256, "ranges": self.ranges})
        with self.saving:
            temporary = self.state.with_name(f"{self.state.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(text)
            os.replace(temporary, self.state)


class FileFetch:
    """Downloads one file of the version into its part file and verifies it."""

    def __init__(self, run: Run, entry: dict, target: Path):
        self.run, self.entry, self.target = run, entry, target
        self.path, self.size, self.sha256 = entry["path"], entry["size"], entry["sha256"]
        (self.part, self.state), self.link = part_paths(target), Link(run, entry)
        self.fetched_chunks: list = []  # (offset, length, digest) fetched by a delta update
        self.copied = 0  # bytes a delta update copied from the older file
        self.pending, self.one_stream = [], False  # one_stream: the server ignores Range

    def download(self) -> None:
        """Fetch, verify and move into place; a wrong file is fetched again, up to the retries."""
        for _ in range(self.run.retries):
            self.run.tally.add("tries")
            segments = Segments.load_or_plan(self.part, self.state, self.size, self.sha256, self.one_stream * self.size)
            if segments.held():
                self.run.report.say(f"{self.path}: resuming at {segments.held()} bytes")
            try:
                actual = self.fetch_segments(segments)
            except RangeIgnored:
                self.run.report.say(f"{self.path}: the server ignores Range; downloading the file in one stream")
                self.one_stream, self.fetched_chunks, self.copied = True, [], 0
                self.discard()
                continue
            except (WrongContent, DestinationError):
                self.discard()  # never keep bytes that are not the file
                raise
            problem = self.wrong_chunk() if self.fetched_chunks else None
            self.fetched_chunks, copied, self.copied = [], self.copied, 0  # a retry downloads the whole file
            if not problem and actual == self.sha256:
                self.run.tally.add("bytes_delta", copied)
                make_read_only(self.part)
                remove_file(self.state)
                os.replace(self.part, self.target)
                return
            self.discard()
            self.link.url = None  # the next request asks the stable URL (HEAD) again
            problem = problem or f"SHA-256 mismatch (got {actual}, expected {self.sha256})"
            self.run.report.say(f"{self.path}: {problem}; asking the stable URL for a fresh link")
        raise WrongContent(f"{self.path}: giving up after {self.run.retries} tries; never the published file")

    def prepare_delta(self, older: Path, older_sha256: str) -> int:
        """Lay the chunks the older file holds into the part file and leave the others as ranges to
        fetch (resumable like any download). Returns the bytes left to fetch."""
        params, new_chunks = read_manifest(self.run, self.entry["chunks_url"], self.size, self.sha256)
        older_url = urljoin(self.entry["chunks_url"], older_sha256)
        old_params, old_chunks = read_manifest(self.run, older_url, older.stat().st_size, older_sha256)
        if params != old_params:
            raise ValueError("the two manifests were cut with different parameters")
        copies, ranges, self.fetched_chunks = plan_delta(old_chunks, new_chunks)
        self.copied = sum(length for _, _, length in copies)
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
            remove_file(leftover)

    def fetch_segments(self, segments: Segments) -> str:
        """Run every unfinished segment on its own connection, hashing behind them; the file's SHA-256."""
        self.run.report.expect(self.size - segments.held())
        digest, errors = hashlib.sha256(), []
        self.pending = [bounds for bounds in reversed(segments.ranges) if bounds[1] < bounds[2]]
        workers = [
            threading.Thread(target=self.segment_worker, args=(segments, errors), daemon=True)
            for _ in range(min(self.run.connections.most, len(self.pending)))
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
            raise next((error for error in errors if isinstance(error, RangeIgnored)), errors[0])
        return digest.hexdigest()

    def segment_worker(self, segments: Segments, errors: list) -> None:
        """Fetch pending ranges one after another over one connection slot, until none is left."""
        try:
            while not errors:
                taken = self.next_range(segments)
                if taken is None:
                    return
                bounds, first = taken
                with self.run.connections:
                    self.fetch_range(segments, bounds, first)
        except BaseException as error:  # reported by fetch_segments, in the file's own thread
            errors.append(error)
            with segments.lock:
                segments.lock.notify_all()
        finally:
            self.link.ready.set()

    def next_range(self, segments: Segments) -> tuple | None:
        """(bounds, first) of the next pending range, or None. Only the first request goes out at
        once; the others wait for its answer (a 200 to it brings the whole file)."""
        with segments.lock:
            if self.pending and not self.link.claimed:  # the first request asks the stable URL
                self.link.claimed = True
                return self.pending.pop(), True
        self.link.ready.wait()
        with segments.lock:
            return (self.pending.pop(), False) if self.pending else None

    def fetch_range(self, segments: Segments, bounds: list, first: bool) -> None:
        tries, failure = 0, FetchError
        while bounds[1] < bounds[2]:
            before = bounds[1]
            try:
                self.stream_into(segments, bounds, first)
                return  # the range is in
            except WrongBody as problem:
                failure = WrongContent
                self.link.url = None  # the next request asks the stable URL (HEAD) again
                self.run.report.say(f"{self.path}: {problem}; asking the stable URL for a fresh link")
            except OSError as problem:
                if problem.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # a full disk, quota, file size limit
                    raise DestinationError(f"cannot write {self.part}: {problem.strerror}") from None
                self.run.report.say(f"{self.path}: {problem or type(problem).__name__}")
                failure = FetchError
            except (http.client.HTTPException, Transient) as problem:
                failure = FetchError
                self.run.report.say(f"{self.path}: {problem or type(problem).__name__}")
            first = False
            if bounds[1] > before:
                tries = 0  # progress: a flaky link gets its retries afresh
            else:
                tries += 1
                if tries >= self.run.retries:
                    raise failure(f"{self.path}: giving up after {tries} tries")
                time.sleep(min(tries, 5))
            self.run.tally.add("tries")  # the rest of the range is asked for again

    def stream_into(self, segments: Segments, bounds: list, first: bool) -> None:
        start, response = bounds[1], None
        try:
            response = self.link.get({"Range": f"bytes={start}-{bounds[2] - 1}"}, first)
            if check_response(response, self.path, start, bounds[2], self.size) == 200:
                self.take_whole_file(segments, bounds)
            self.link.ready.set()  # the first answer is in: the other segments may go
            self.write_body(response, segments, bounds)
        except BaseException:
            self.link.ready.set()
            if response is not None:
                response.drop()
            raise
        if response.length is None and response.read(1):  # chunked: more than the segment's bytes
            response.drop()
            raise WrongBody(f"the server sent more than bytes {start}-{bounds[2] - 1}")
        response.read()  # the end of the body (no bytes left): the connection serves the next request

    def take_whole_file(self, segments: Segments, bounds: list) -> None:
        """A 200 from byte 0 to a ranged request: this response brings the whole file."""
        with segments.lock:
            bounds[2] = self.size
            segments.ranges[:] = [bounds]
            self.pending.clear()

    def write_body(self, response, segments: Segments, bounds: list) -> None:
        saved_at = time.monotonic()
        with open(self.part, "r+b") as out:
            out.seek(bounds[1])
            while bounds[1] < bounds[2]:
                # read1: what has arrived, so a stall or a cut loses nothing already received
                block = response.read1(min(BLOCK, bounds[2] - bounds[1]))
                if not block:
                    raise Transient(f"the connection closed at byte {bounds[1]}")
                out.write(block)
                out.flush()
                with segments.lock:
                    bounds[1] += len(block)
                    segments.lock.notify_all()
                self.run.report.advance(len(block))
                self.run.connections.moved(len(block))
                if time.monotonic() - saved_at >= STATE_EVERY:
                    segments.save()
                    saved_at = time.monotonic()


def check_response(response, path: str, start: int, end: int, size: int) -> int:
    """The status of a response that carries bytes start..end-1 of the file (206), or the whole
    file from byte 0 (200); else WrongBody / Transient / RangeIgnored."""
    if response.status >= 400:
        skip_body(response)
        if response.status in (404, 410):
            raise NotFound(f"{path}: the site answered {response.status}; was the version withdrawn?")
        raise Transient("the link was refused (403, expired?)" if response.status == 403 else f"HTTP {response.status}")
    kind = (response.getheader("Content-Type") or "").lower()
    if kind.startswith("text/html") and not path.endswith((".html", ".htm")):
        raise WrongBody("the server sent an HTML page instead of the file")
    if response.status == 206:
        expected = f"bytes {start}-{end - 1}/{size}"
        if (response.getheader("Content-Range") or "").strip() != expected:
            raise WrongBody(f"the server sent {response.getheader('Content-Range')!r}, not {expected!r}")
        if response.length is not None and response.length != end - start:
            raise WrongBody(f"the server sent {response.length} bytes for a range of {end - start}")
    elif response.status == 200:
        if response.length == 0 and size:
            raise WrongBody("the server sent an empty body")
        if start != 0:
            raise RangeIgnored()
        if response.length is not None and response.length != size:
            raise WrongBody(f"got {response.length} bytes without a range, the site publishes {size}")
    else:
        raise Transient(f"HTTP {response.status}")
    return response.status


MANIFEST_HEADER = struct.Struct(">8sIIIQ32sI")  # magic, min, avg, max, file size, file SHA-256, count
MANIFEST_RECORD = struct.Struct(">QI32s")  # offset, length, SHA-256 of one chunk
MANIFEST_MAGIC = b"MRCHUNK1"


class LocalCopies:
    """Files in the reuse folders, found by path or by size, each hashed at most once a run (not
    at all when the folder's record vouches for it)."""

    def __init__(self, roots: list):
        self.roots = roots
        self.records = {root: Record.read(root) for root in roots}
        self.by_size: dict | None = None
        self.hashes: dict = {}
        self.lock = threading.Lock()

    def sha256(self, root: Path, path: Path) -> str:
        record, relative = self.records.get(root), path.relative_to(root).as_posix()
        if record is not None and relative in record.files and record.unchanged(root, relative):
            return record.files[relative][1]
        facts = path.stat()
        key = (str(path), facts.st_size, facts.st_mtime_ns)
        if key not in self.hashes:
            self.hashes[key] = sha256_of(path)
        return self.hashes[key]

    def same_path(self, relative: str) -> list:
        return [(root, root / relative) for root in self.roots if (root / relative).is_file()]

    def same_size(self, size: int) -> list:
        with self.lock:
            if self.by_size is None:
                self.by_size = {}
                for root in self.roots:
                    for found in root.rglob("*"):
                        if found.is_file() and not any(p.startswith(".") for p in found.relative_to(root).parts):
                            self.by_size.setdefault(found.stat().st_size, []).append((root, found))
            return list(self.by_size.get(size, []))

    def find(self, relative: str, size: int, sha256: str) -> Path | None:
        for root, candidate in self.same_path(relative) + self.same_size(size):
            try:
                if candidate.stat().st_size == size and self.sha256(root, candidate) == sha256:
                    return candidate
            except OSError:
                continue
        return None

    def older(self, relative: str) -> tuple | None:
        """An older copy of the file to update from: the same path in a reuse folder."""
        for root, candidate in self.same_path(relative):
            if candidate.stat().st_size >= BLOCK:
                return candidate, self.sha256(root, candidate)
        return None


def clone(source: Path, target: Path) -> bool:
    """A copy-on-write clone (Linux FICLONE: btrfs, XFS, bcachefs...): new inode, shared blocks."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        with open(source, "rb") as src, open(target, "wb") as out:
            fcntl.ioctl(out.fileno(), 0x40049409, src.fileno())  # FICLONE
        return True
    except OSError:
        remove_file(target)
        return False


def place_copy(source: Path, target: Path) -> str:
    """Clone, else hard-link, else copy a verified file into place (read-only) under a temporary
    name, then rename it. Returns how."""
    temporary = target.with_name(f".{target.name}.reuse")
    remove_file(temporary)
    how = "cloned"
    if not clone(source, temporary):
        try:
            os.link(source, temporary)
            how = "hard-linked"
        except OSError:
            shutil.copyfile(source, temporary)
            how = "copied"
    make_read_only(temporary)
    os.replace(temporary, target)
    return how


def read_manifest(run: Run, url: str, size: int, sha256: str):
    """A chunk manifest, read no further than its header's count allows (bounded by the file size)."""
    response, _ = run.http.get(url)
    if response.status != 200:
        skip_body(response)
        raise Transient(f"{url} answered HTTP {response.status}")
    header = response.read(MANIFEST_HEADER.size)
    if len(header) < MANIFEST_HEADER.size:
        raise ValueError("the chunk manifest is truncated")
    _, low, _, _, _, _, count = MANIFEST_HEADER.unpack_from(header)
    if count > size // max(low, 1) + 1:
        response.drop()
        raise ValueError("the chunk manifest's count does not fit the file's size")
    body = response.read(count * MANIFEST_RECORD.size + 1)
    if not response.isclosed():  # more than the count announced
        response.drop()
    return parse_manifest(header + body, size, sha256)


def parse_manifest(data: bytes, size: int, sha256: str) -> tuple:
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


def plan_delta(old_chunks, new_chunks) -> tuple:
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
                try:
                    holder = int((self.folder / "pid").read_text().strip() or 0)
                except (OSError, ValueError):
                    holder = 0
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
    except OSError as error:  # PermissionError: it exists, owned by someone else
        return not isinstance(error, ProcessLookupError)
    return True


class Tally:
    """The run's report (docs/run-reports.md), counted as the run goes; at its end sent to the site's report_url,
    or kept in DEST for the next run when this one could not reach the site. Never an error, at most REPORT_SECONDS."""

    def __init__(self, asked: Request, report: Reporter, wanted: bool | None, reuse_from):
        opted_out = any(os.environ.get(name, "") not in ("", "0") for name in ("FETCH_MODEL_NO_REPORT", "DO_NOT_TRACK"))
        self.asked, self.report, self.wanted = asked, report, not opted_out if wanted is None else wanted
        self.started, self.lock, self.record = time.monotonic(), threading.Lock(), Record.read(asked.dest)
        self.url, self.version, self.offline, self.resumed, self.settled = None, None, False, False, []
        self.counts = {"tries": 0, "fresh_links": 0, "bytes_reused": 0, "bytes_delta": 0}
        self.named_from = bool(env_patterns("FETCH_MODEL_FROM", reuse_from))  # --from: an update

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:  # within the contract's bounds
            self.counts[name] = min(self.counts[name] + amount, 10_000 if name in ("tries", "fresh_links") else 2**53)

    def learn(self, listing) -> None:
        """The site's report_url; on the first run in a folder, say that the run reports."""
        url = listing.get("report_url") if isinstance(listing, dict) else None
        if self.wanted and isinstance(url, str) and url.startswith(("http://", "https://")):
            self.url = url
            if self.record is None and not (self.asked.dest / OLD_RECORD).exists():
                self.report.say("this client tells the site how each run ends (anonymous, no path, host or user"
                                " name; see --help); FETCH_MODEL_NO_REPORT=1 or DO_NOT_TRACK=1 turns it off")  # fmt: skip

    def run_kind(self) -> str:
        record, asked = self.record, self.asked
        if self.offline:
            return "offline"
        if record is not None and record.value("model") == asked.model:  # the same version: a later run
            same = (self.version or asked.version) == record.value("version" if self.version else "requested")
            return "later" if same else "update"
        if self.named_from or self.counts["bytes_delta"] or "reused" in self.settled:
            return "update"
        return "later" if self.settled and set(self.settled) == {"kept"} else "first"

    def fields(self, code: int) -> dict:
        asked, platforms = self.asked, {"linux": "linux", "darwin": "darwin", "win32": "windows", "cygwin": "windows"}
        return {"model": asked.model, "requested": asked.version, "version": self.version, "client": "fetch_model.py",
                "client_version": CLIENT_VERSION, "outcome": code, "outcome_name": OUTCOME_NAMES[code],
                "run_kind": self.run_kind(), **self.counts, "bytes_downloaded": min(self.report.done, 2**53),
                "duration_ms": min(int((time.monotonic() - self.started) * 1000), 604_800_000),
                "os": platforms.get(sys.platform, "other"), "resumed": self.resumed}  # fmt: skip

    def end(self, code: int | None) -> None:
        """Send this run's report and those kept in DEST, or keep it there; errors are ignored."""
        if code not in OUTCOME_NAMES or not self.wanted:
            return
        try:
            fields = self.fields(code)
            body, keys = json.dumps(fields, separators=(",", ":")), set(fields)
            if self.url:
                send_reports(self.url, take_kept_reports(self.asked.dest, keys) + [body])
            elif self.offline and self.asked.dest.is_dir():
                kept = kept_reports(self.asked.dest / REPORT, keys)[1 - REPORTS_KEPT :] + [body]
                temporary = self.asked.dest / f"{REPORT}.{os.getpid()}.tmp"
                temporary.write_bytes("".join(line + "\n" for line in kept).encode())
                os.replace(temporary, self.asked.dest / REPORT)
        except Exception:  # a report must never fail (or stop) the run
            pass


def kept_reports(path: Path, keys: set) -> list:
    """The reports kept in a file (one JSON object a line, exactly a report's fields); none when it is unreadable."""
    try:
        lines = path.read_bytes()[: 2 * REPORTS_KEPT * 4096].decode("utf-8").splitlines()
        return [line for line in lines if len(line) <= 4096 and set(json.loads(line)) == keys]
    except (OSError, ValueError, TypeError, RecursionError):
        return []


def take_kept_reports(dest: Path, keys: set) -> list:
    """The reports DEST kept for the next run that reaches the site, taken (renamed first: no other run
    sends them too) and removed."""
    taken = dest / f"{REPORT}.{os.getpid()}.sending"
    try:
        os.replace(dest / REPORT, taken)
    except OSError:
        return []
    reports = kept_reports(taken, keys)[-REPORTS_KEPT:]
    remove_file(taken)
    return reports


def send_reports(url: str, bodies: list) -> None:
    """POST each body once, all within REPORT_SECONDS (a thread left behind after that); answers ignored."""
    parts = urlsplit(url)
    kind, headers = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection, {
        "Content-Type": "application/json", "User-Agent": f"fetch_model.py/{CLIENT_VERSION}"}  # fmt: skip

    def post() -> None:
        for body in bodies:
            try:
                connection = kind(parts.netloc, timeout=REPORT_SECONDS)
                connection.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body, headers)
                connection.getresponse().read(ERROR_CAP)
                connection.close()
            except Exception:  # every error ignored
                pass

    sender = threading.Thread(target=post, daemon=True)
    sender.start()
    sender.join(REPORT_SECONDS)


class Run:
    """What every file of one run shares: the site, HTTP, the connections, the retries, the
    reporter, the run's tally, and DEST's record (None unless it is of this model and version)."""

    def __init__(self, site: str | None, connections: int | None, retries: int | None, tally: Tally):
        self.site = (site or os.environ.get("MODEL_SITE") or SITE).rstrip("/")
        if self.site == "__MODEL" + "_SITE__":
            raise FetchError("set MODEL_SITE to the site's address (this copy was not downloaded from a site)")
        self.retries = retries or env_int("FETCH_MODEL_RETRIES", 5, 1, 100)
        self.report, self.tally = tally.report, tally
        self.http = Http(env_int("FETCH_MODEL_TIMEOUT", 60, 1, 3600))
        self.connections = Connections(connections or env_int("FETCH_MODEL_CONNECTIONS", 0, 0, 64) or None)
        self.record, self.verify = None, False  # DEST's record (when of this version); --verify


def env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise UsageError(f"{name} must be between {low} and {high}, not {value}")
    return value


def env_patterns(name: str, given) -> list:
    return list(given) if given else [p for p in os.environ.get(name, "").split(":") if p]


class Request:
    """What one call asks for: MODEL VERSION into DEST, which files; and DEST's verified copy of it."""

    def __init__(self, model: str, version: str, dest: Path, include: list, exclude: list):
        self.model, self.version, self.dest, self.include, self.exclude = model, version, dest, include, exclude
        self.copy = functools.lru_cache(maxsize=1)(lambda: verified_copy(dest, model, version, include, exclude))

    def use_copy(self, tally: Tally, why: str) -> Path:
        record, tally.offline = self.copy(), True  # a run without the site
        if record is None:
            raise FetchError(f"offline: {self.model} {self.version} has no complete verified copy in {self.dest}")
        tally.version = record.value("version")
        tally.add("bytes_reused", sum(facts[0] for facts in record.files.values()))
        tally.report.say(f"{why}using {self.model} {record.value('version')} as verified at {record.value('verified')}")
        return self.dest


def ensure_model(model: str, version: str, dest, *, site: str | None = None, connections: int | None = None,
                 reuse_from=(), retries: int | None = None, quiet: bool = False, include=(), exclude=(),
                 verify: bool | None = None, offline: bool | None = None, send_report: bool | None = None) -> Path:  # fmt: skip
    """Make DEST hold every (selected) file of MODEL VERSION, verified; return DEST as a Path.

    Raises NotFound (unknown or withdrawn), WrongContent (never the published bytes, or an
    unsafe path), DestinationError (DEST cannot be written or locked, or is full), FetchError
    (the rest, a malformed answer included). Warns YankedVersionWarning for a yanked version.
    Ends by sending a run report, as the command line does (send_report=False: none).
    """
    patterns = env_patterns("FETCH_MODEL_INCLUDE", include), env_patterns("FETCH_MODEL_EXCLUDE", exclude)
    asked = Request(model, version, Path(dest), *patterns)
    tally, code = Tally(asked, Reporter(quiet), send_report, reuse_from), 0
    try:
        return ensure_with(tally, site, connections, reuse_from, retries, verify, offline)
    except BaseException as error:
        code = exit_code_of(error)
        raise
    finally:
        tally.end(code)


def ensure_with(tally: Tally, site, connections, reuse_from, retries, verify, offline) -> Path:
    asked = tally.asked
    if os.environ.get("FETCH_MODEL_OFFLINE") == "1" if offline is None else offline:
        return asked.use_copy(tally, "offline: ")
    run = Run(site, connections, retries, tally)
    run.verify = os.environ.get("FETCH_MODEL_VERIFY") == "1" if verify is None else verify
    url = f"{run.site}/api/v1/models/{quote(asked.model, safe='')}/versions/{quote(asked.version, safe='')}"
    try:  # a connection that fails while a verified copy is at hand: no need to wait out the retries
        listing = read_json(run.http, url, run.retries, lambda: asked.copy() is not None)
    except NotFound as error:  # a run that ends at a 404 or 410 is reported too, when the site says where
        tally.learn({"report_url": error.headers.get("X-Report-URL")})
        tally.version = error.headers.get("X-Artifact-Version")  # a withdrawn version's name (a 404 has none)
        raise
    except Unreachable as error:
        if asked.copy() is None:
            tally.offline = True
            raise Unreachable(f"cannot reach {url}: {error}") from None
        return asked.use_copy(tally, f"warning: cannot reach {run.site} ({error}); ")
    tally.learn(listing)
    try:
        return place_version(run, asked, listing, reuse_from)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as error:  # an answer we did not foresee
        raise Malformed(f"the site's answer is malformed ({type(error).__name__}: {error})") from error


def place_version(run: Run, asked: Request, listing, reuse_from) -> Path:
    model, dest = asked.model, asked.dest
    resolved, files = checked_listing(listing)
    run.tally.version = resolved
    run.report.say(f"{model} {resolved}" if resolved == asked.version else f"{model} {asked.version} is {resolved}")
    if listing.get("status") == "yanked":
        reason = listing.get("yanked_reason") or "no reason given"
        run.report.say(f"warning: {model} {resolved} is yanked: {reason}")
        warnings.warn(f"{model} {resolved} is yanked: {reason}", YankedVersionWarning, stacklevel=3)
    for entry in files:
        safe_relative_path(entry["path"])  # every path, before anything is written
    # selected: any include (or none given) and no exclude; fnmatch on the whole path
    files = [e for e in files if matches(e["path"], asked.include or ["*"]) and not matches(e["path"], asked.exclude)]
    if not files:
        raise UsageError(f"no file of {model} {resolved} matches the --include/--exclude patterns")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DestinationError(f"cannot create {dest}: {error}") from error
    with DestinationLock(dest, run.report):
        record = Record.read(dest)
        if record is not None and (record.value("model"), record.value("version")) == (model, resolved):
            run.record = record
        outcomes = fetch_all(run, files, dest, reuse_folders(dest, env_patterns("FETCH_MODEL_FROM", reuse_from)))
        write_record(asked, resolved, files)
    downloaded, reused, kept = (outcomes.count(how) for how in ("downloaded", "reused", "kept"))
    run.report.say(f"{model} {resolved}: {downloaded} downloaded, {reused} reused, {kept} already there, in {dest}")
    return dest


def reuse_folders(dest: Path, reuse_from) -> LocalCopies:
    """--from folders, and the sibling folders of DEST that a client filled (they hold a record):
    never a folder that no client made, whose files someone may edit."""
    chosen = [Path(folder) for folder in reuse_from if Path(folder).is_dir()]
    try:
        siblings = [folder for folder in dest.resolve().parent.iterdir() if folder.is_dir()]
    except OSError:
        siblings = []
    for folder in siblings:
        if folder == dest.resolve() or folder.name.startswith(".") or folder in chosen:
            continue
        if (folder / RECORD).is_file() or (folder / OLD_RECORD).is_file():
            chosen.append(folder)
    return LocalCopies(chosen)


def run_each(run: Run, entries: list, task) -> list:
    """task(entry) for every entry, several at once; the results in order; raises the worst failure."""
    pending, results, failures = list(enumerate(entries))[::-1], [None] * len(entries), []
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                index, entry = pending.pop()
            try:
                results[index] = task(entry)
            except Exception as error:  # a FetchError, or a bug or an odd platform: say so, keep the others going
                failure = error if isinstance(error, FetchError) else FetchError(f"{type(error).__name__}: {error}")
                run.report.say(f"{entry['path']}: FAILED ({failure})")
                failures.append(failure)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(run.connections.most, len(entries)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # short joins: Ctrl-C reaches the main thread
    if failures:
        worst = max(failures, key=lambda error: error.exit_code if error.exit_code != 6 else 7)
        raise type(worst)(f"not every file could be fetched ({worst}); run again to resume")
    return results


def fetch_all(run: Run, files: list, dest: Path, copies: LocalCopies) -> list:
    """Settle what is at hand (kept or reused), check the space the rest needs, download the rest."""
    settled = run.tally.settled = run_each(run, files, lambda entry: settle_locally(run, entry, dest, copies))
    run.tally.add("bytes_reused", sum(entry["size"] for entry, outcome in zip(files, settled) if outcome))
    missing = [entry for entry, outcome in zip(files, settled) if outcome is None]
    parts = [part_paths(dest / entry["path"])[0] for entry in missing]  # what a part file holds is not missing
    check_space(dest, sum(max(e["size"] - (p.stat().st_size if p.exists() else 0), 0) for e, p in zip(missing, parts)))
    downloaded = run_each(run, missing, lambda entry: download_file(run, entry, dest, copies))
    return [outcome for outcome in settled if outcome] + downloaded


def check_space(dest: Path, missing: int) -> None:
    need, free = missing + max(64 * BLOCK, missing // 100), shutil.disk_usage(dest).free
    if missing and free < need:
        raise DestinationError(f"not enough free space in {dest}: {need / 2**30:.1f} GiB needed ({missing / 2**30:.1f}"
                               f" GiB to download + margin), {free / 2**30:.1f} GiB free")  # fmt: skip


def settle_locally(run: Run, entry: dict, dest: Path, copies: LocalCopies) -> str | None:
    """'kept' (already in place), 'reused' (placed from a reuse folder), or None (to download)."""
    path, size, sha256 = entry["path"], entry["size"], entry["sha256"]
    target = dest / path
    if not run.verify and run.record is not None and run.record.trusts(dest, entry):
        run.report.say(f"{path}: already there, verified at {run.record.value('verified')}")
        return "kept"
    if has_sha256(target, sha256, size):
        make_read_only(target)
        run.report.say(f"{path}: already there, verified")
        return "kept"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if run.record is not None and path in run.record.files:
                run.report.say(f"{path}: changed since it was verified; fetching it again")
            remove_file(target)  # present but wrong: never leave it there
    except OSError as error:
        raise DestinationError(f"cannot write {target}: {error}") from error
    found = copies.find(path, size, sha256)
    if found is None:
        return None
    how = place_copy(found, target)
    run.report.say(f"{path}: reused {found} ({how}), SHA-256 verified")
    return "reused"


def download_file(run: Run, entry: dict, dest: Path, copies: LocalCopies) -> str:
    path, size = entry["path"], entry["size"]
    fetch = FileFetch(run, entry, dest / path)
    run.tally.resumed = run.tally.resumed or fetch.part.exists()  # a part an earlier run left
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


class Usage(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"fetch-model: {message}\n")
        sys.exit(1)


def main(argv=None) -> int:
    parser = Usage(prog="fetch_model.py", description="Download a model version from Model Releases, verified.",
                   epilog=EPILOG)  # fmt: skip
    parser.add_argument("model")
    parser.add_argument("version", help="a version, or 'latest'")
    parser.add_argument("dest_dir")
    parser.add_argument("--from", dest="reuse_from", action="append", default=[], metavar="OLD_DIR",
                        help="a folder with an older version, to reuse and update from (repeatable)")  # fmt: skip
    parser.add_argument("--connections", type=int, metavar="N",
                        help="connections at once (default FETCH_MODEL_CONNECTIONS, else adaptive up to 16)")  # fmt: skip
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="fetch only paths matching PATTERN (fnmatch; repeatable)")  # fmt: skip
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="skip paths matching PATTERN (fnmatch; repeatable)")  # fmt: skip
    parser.add_argument("--verify", action="store_true", default=None, help="re-hash every file, even unchanged ones")
    parser.add_argument("--offline", action="store_true", default=None, help="no network: use DEST_DIR as verified")
    args = parser.parse_args(argv)
    if not (args.model and args.version and args.dest_dir):
        parser.error("MODEL, VERSION and DEST_DIR must not be empty")
    if args.connections is not None and not 1 <= args.connections <= 64:
        parser.error("--connections must be between 1 and 64")
    warnings.simplefilter("ignore", YankedVersionWarning)  # the CLI says it in its own line
    if threading.current_thread() is threading.main_thread():  # a SIGTERM ends the run as Ctrl-C does (reported)
        signal.signal(signal.SIGTERM, terminate)
    try:
        ensure_model(args.model, args.version, args.dest_dir, connections=args.connections, reuse_from=args.reuse_from,
                     include=args.include, exclude=args.exclude, verify=args.verify, offline=args.offline)  # fmt: skip
    except FetchError as error:
        if isinstance(error, UsageError):
            parser.print_usage(sys.stderr)
        sys.stderr.write(f"\nfetch-model: {error}\n" if sys.stderr.isatty() else f"fetch-model: {error}\n")
        return error.exit_code
    except KeyboardInterrupt as stop:
        sys.stderr.write(f"\nfetch-model: {OUTCOME_NAMES[exit_code_of(stop)]}; run again to resume\n")
        return exit_code_of(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
