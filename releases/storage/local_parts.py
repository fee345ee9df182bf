"""Uploads in parts for the local store: the same resumable protocol as S3's, received by the site.

Each upload is a folder under ``<objects>/.uploads/<upload id>/`` (object keys always start with a
model's slug, never a dot, so no key reaches it). A part is written to a temporary file, hashed as
it arrives, and renamed to ``<number>-<hex sha256>`` only when its SHA-256 is the one it was sent
with, so the folder's listing is the list of stored parts and their checksums. Completion joins the
parts into the object (hashing it on the way) and removes the folder.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager

from .base import MissingObject, StorageError, StoredPart

PART_NAME = re.compile(r"^(\d{5})-([0-9a-f]{64})$")
BUFFER = 1024 * 1024


class LocalParts:
    def __init__(self, objects_root: str):
        self.root = os.path.join(objects_root, ".uploads")

    def folder(self, upload_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise MissingObject(f"There is no upload {upload_id!r}.")
        return os.path.join(self.root, upload_id)

    def start(self) -> str:
        upload_id = uuid.uuid4().hex
        os.makedirs(self.folder(upload_id))
        return upload_id

    def stored(self, upload_id: str) -> dict[int, StoredPart]:
        folder = self.folder(upload_id)
        try:
            names = os.listdir(folder)
        except FileNotFoundError as error:
            raise MissingObject(f"The upload {upload_id} is gone (aborted or completed).") from error
        parts = {}
        for name in names:
            if match := PART_NAME.match(name):
                number, digest = int(match[1]), bytes.fromhex(match[2])
                size = os.stat(os.path.join(folder, name)).st_size
                parts[number] = StoredPart(number, size, base64.b64encode(digest).decode())
        return parts

    def receive(self, upload_id: str, number: int, read, length: int, sha256: str) -> StoredPart:
        folder = self.folder(upload_id)
        if not os.path.isdir(folder):
            raise MissingObject(f"The upload {upload_id} is gone (aborted or completed).")
        with temporary_file(folder, ".part-", f"store part {number}") as (handle, temporary):
            digest = self._write(handle, read, length)
            if base64.b64encode(digest).decode() != sha256:
                raise StorageError(f"Part {number} has other bytes than its SHA-256 checksum says; it was not kept.")
            for old in self._files_of(folder, number):
                os.remove(os.path.join(folder, old))
            os.replace(temporary, os.path.join(folder, f"{number:05d}-{digest.hex()}"))
        return StoredPart(number, length, sha256)

    @staticmethod
    def _write(handle: int, read, length: int) -> bytes:
        digest, left = hashlib.sha256(), length
        with os.fdopen(handle, "wb") as out:
            while left:
                chunk = read(min(BUFFER, left))
                if not chunk:
                    raise StorageError(f"The part ended after {length - left:,} of {length:,} bytes; it was not kept.")
                digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        return digest.digest()

    @staticmethod
    def _files_of(folder: str, number: int) -> list[str]:
        return [name for name in os.listdir(folder) if name.startswith(f"{number:05d}-")]

    def paths(self, upload_id: str, parts: list[StoredPart]) -> list[str]:
        """The files of these parts, in order; raises StorageError if one is not stored as described."""
        folder, stored = self.folder(upload_id), self.stored(upload_id)
        paths = []
        for part in parts:
            held = stored.get(part.number)
            if held is None or held.sha256 != part.sha256 or held.size != part.size:
                raise StorageError(f"Part {part.number} is not stored with the given size and checksum.")
            paths.append(os.path.join(folder, f"{part.number:05d}-{base64.b64decode(part.sha256).hex()}"))
        return paths

    def abort(self, upload_id: str) -> None:
        shutil.rmtree(self.folder(upload_id), ignore_errors=True)

    def abort_older_than(self, seconds: float, keep=frozenset()) -> int:
        """Remove uploads (but those in ``keep``) whose folder has not changed for ``seconds`` (a
        part's arrival changes it)."""
        cutoff, removed = time.time() - seconds, 0
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.is_dir() and entry.name not in keep and entry.stat().st_mtime <= cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed


@contextmanager
def temporary_file(folder: str, prefix: str, action: str):
    """A new file in ``folder`` (its descriptor and path) for the block to fill and rename into
    place; removed if the block fails, and an OSError said as the StorageError "Could not <action>"."""
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=prefix)
    except OSError as error:
        raise StorageError(f"Could not {action}: {error.strerror or error}.") from error
    try:
        yield handle, temporary
    except OSError as error:
        remove_quietly(temporary)
        raise StorageError(f"Could not {action}: {error.strerror or error}.") from error
    except BaseException:
        remove_quietly(temporary)
        raise


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class JoinedParts:
    """The parts' files read one after another, as one file (for LocalStore.upload)."""

    def __init__(self, paths: list[str]):
        self.paths, self.current = list(paths), None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self.current is None:
                if not self.paths:
                    return b""
                self.current = open(self.paths.pop(0), "rb")
            data = self.current.read(size)
            if data:
                return data
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
