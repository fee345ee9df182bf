"""The local backend: Django's FileSystemStorage under DATA_DIR/objects.

Writes go to a temporary file that is renamed into place, so a reader never sees half an object.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from django.core.files.storage import FileSystemStorage

from .base import PART_CHECKSUM_HEADER, MissingObject, PartTarget, ReleaseStore, StorageError, StoredObject
from .hashing import CHUNK_SIZE, sha256_of_file
from .local_parts import JoinedParts, LocalParts, temporary_file


class LocalStore(ReleaseStore):
    backend_name = "local"

    def __init__(self, storage: FileSystemStorage):
        self.storage = storage
        self.parts = LocalParts(storage.location)

    def _path(self, key: str) -> str:
        return self.storage.path(key)  # safe_join: a key can never leave the root

    def upload(self, key, fileobj, *, content_type, progress=None, jobs=None, observe=None):
        target = self._path(key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with temporary_file(os.path.dirname(target), ".upload-", f"write object {key!r}") as (handle, temporary):
            with os.fdopen(handle, "wb") as out:
                digest, size = sha256_of_file(_Tee(fileobj, out), progress, observe)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        return StoredObject(key=key, size=size, sha256=digest, content_type=content_type)

    # --- uploads in parts from a browser: the site receives them (see local_parts) ---

    def start_parts_upload(self, key, content_type):
        return self.parts.start()

    def stored_parts(self, key, upload_id):
        return self.parts.stored(upload_id)

    def part_target(self, key, upload_id, number, sha256, expires):
        return PartTarget(url=None, headers={PART_CHECKSUM_HEADER: sha256})

    def receive_part(self, upload_id, number, read, length, sha256):
        return self.parts.receive(upload_id, number, read, length, sha256)

    def complete_parts_upload(self, key, upload_id, parts, observe=None):
        joined = JoinedParts(self.parts.paths(upload_id, parts))
        try:
            stored = self.upload(key, joined, content_type="application/octet-stream", observe=observe)
        finally:
            joined.close()
        self.parts.abort(upload_id)
        return stored

    def abort_parts_upload(self, key, upload_id):
        self.parts.abort(upload_id)

    def abort_stale_uploads(self, older_than, keep=frozenset()):
        return self.parts.abort_older_than(older_than.total_seconds(), keep)

    def stat(self, key):
        try:
            size = os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"Could not read object {key!r}: {error.strerror or error}.") from error
        return StoredObject(key=key, size=size)

    def iter_bytes(self, key, chunk_size=CHUNK_SIZE):
        try:
            with open(self._path(key), "rb") as source:
                while chunk := source.read(chunk_size):
                    yield chunk
        except FileNotFoundError as error:
            raise MissingObject(f"Object {key!r} does not exist.") from error

    def check(self):
        root = self.storage.location
        if not os.path.isdir(root) and os.path.exists(root):
            raise StorageError(f"{root} is not a directory.")
        os.makedirs(root, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise StorageError(f"{root} is not writable.")

    def open(self, key: str) -> BinaryIO:
        """A local file handle, for serving byte ranges directly."""
        return open(self._path(key), "rb")

    def delete(self, key):
        try:
            os.remove(self._path(key))
        except FileNotFoundError:
            pass


class _Tee:
    """A reader that writes every chunk it reads to ``out``."""

    def __init__(self, source: BinaryIO, out: BinaryIO):
        self.source, self.out = source, out

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.out.write(data)
        return data
