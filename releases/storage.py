"""Object storage for release files: the only module that touches
django-storages and boto3.

Two backends behind one small interface (`ReleaseStore`):

* ``local``: Django's FileSystemStorage under ``DATA_DIR/objects``; writes go
  to a temporary file that is renamed into place, so a reader never sees half
  an object.
* ``s3``: django-storages' S3Storage for configuration and its boto3 client
  for the work: managed multipart uploads that ask S3 for SHA-256 checksums,
  object attributes to read size and checksum back, streamed reads.

Everything is hashed while it is written, so callers always learn the SHA-256
of what they stored without reading the source twice.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import mimetypes
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
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


_client_lock = threading.Lock()  # verify's threads share one S3 client
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


class HashingReader:
    """Wraps a readable file and hashes the bytes read, exactly once each.

    Uploaders may seek back and read again (retries, payload signing); only
    bytes beyond the furthest point already hashed are fed to the hash. If a
    reader ever skips ahead, the digest is marked incomplete and the caller
    re-hashes the source.

    With a ``part_size`` it also hashes each part, giving the checksum of
    checksums that S3 keeps for a multipart upload (its COMPOSITE SHA-256).
    """

    def __init__(self, fileobj: BinaryIO, part_size: int | None = None):
        self._file = fileobj
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

    def composite_for(self, size: int) -> tuple[str, int] | None:
        """(base64 SHA-256 of the part digests, number of parts), as S3 computes it for multipart uploads."""
        if not self._part_size or self.hexdigest_for(size) is None:
            return None
        digests = self._part_digests + ([self._part_hash.digest()] if self._part_filled else [])
        return base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode(), len(digests)


def sha256_of_stream(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_of_file(fileobj: BinaryIO, progress: Progress | None = None) -> tuple[str, int]:
    def chunks():
        while chunk := fileobj.read(CHUNK_SIZE):
            if progress:
                progress(len(chunk))
            yield chunk

    return sha256_of_stream(chunks())


class ReleaseStore:
    """What the services need from object storage."""

    backend_name = ""

    def upload(
        self, key: str, fileobj: BinaryIO, *, content_type: str, progress: Progress | None = None
    ) -> StoredObject:
        """Store the readable, seekable ``fileobj`` (from its current position) at ``key``."""
        raise NotImplementedError

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


class LocalStore(ReleaseStore):
    backend_name = "local"

    def __init__(self, storage: FileSystemStorage):
        self.storage = storage

    def _path(self, key: str) -> str:
        return self.storage.path(key)  # safe_join: a key can never leave the root

    def upload(self, key, fileobj, *, content_type, progress=None):
        target = self._path(key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                digest, size = sha256_of_file(_Tee(fileobj, out), progress)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except OSError as error:
            _remove_quietly(temporary)
            raise StorageError(f"Could not write object {key!r}: {error.strerror or error}.") from error
        except BaseException:
            _remove_quietly(temporary)
            raise
        return StoredObject(key=key, size=size, sha256=digest, content_type=content_type)

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


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class S3Location:
    """What signing.py needs to presign GETs without calling S3 (or boto3) per request."""

    bucket: str
    region: str
    endpoint_url: str | None
    addressing_style: str
    access_key: str
    secret_key: str
    session_token: str | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.endpoint_url).scheme if self.endpoint_url else "https"

    def host_and_path(self, key: str) -> tuple[str, str]:
        if self.endpoint_url:
            host = urlsplit(self.endpoint_url).netloc
            if self.addressing_style == "virtual":
                return f"{self.bucket}.{host}", f"/{key}"
            return host, f"/{self.bucket}/{key}"
        return f"{self.bucket}.s3.{self.region}.amazonaws.com", f"/{key}"


class S3Store(ReleaseStore):
    backend_name = "s3"

    def __init__(self, storage):
        self.storage = storage
        self.bucket = storage.bucket_name

    @property
    def client(self):
        """One boto3 client per configured storage (Django rebuilds the storage when settings change).

        We hash what we read ourselves, so botocore is told not to validate response checksums too
        (it would hash every byte a second time); uploads still send the checksums we ask for.
        """
        client = getattr(self.storage, "_releases_client", None)
        if client is None:
            with _client_lock:  # verify reads on several threads; build one client, not one each
                client = getattr(self.storage, "_releases_client", None) or self._new_client()
                self.storage._releases_client = client
        return client

    def _new_client(self):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=self.storage.access_key,
            aws_secret_access_key=self.storage.secret_key,
            aws_session_token=self.storage.security_token,
            profile_name=self.storage.session_profile,
        )
        options = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": self.storage.addressing_style or "auto"},
            "retries": {"mode": "standard", "max_attempts": 3},
            "response_checksum_validation": "when_required",
            "request_checksum_calculation": "when_required",
            "max_pool_connections": 16,
            **_config_overrides(self.storage.client_config),
        }
        return session.client(
            "s3", endpoint_url=self.storage.endpoint_url, region_name=self.storage.region_name, config=Config(**options)
        )

    def location(self) -> S3Location:
        if self.storage.access_key and self.storage.secret_key:
            access_key, secret_key, token = self.storage.access_key, self.storage.secret_key, self.storage.security_token
        else:  # the default credential chain (environment, profile, instance role)
            import boto3

            credentials = boto3.session.Session(profile_name=self.storage.session_profile).get_credentials()
            if credentials is None:
                raise StorageError("No AWS credentials found to sign download links with.")
            frozen = credentials.get_frozen_credentials()
            access_key, secret_key, token = frozen.access_key, frozen.secret_key, frozen.token
        return S3Location(
            bucket=self.bucket,
            region=self.storage.region_name or "us-east-1",
            endpoint_url=self.storage.endpoint_url,
            addressing_style=self.storage.addressing_style or ("path" if self.storage.endpoint_url else "virtual"),
            access_key=access_key,
            secret_key=secret_key,
            session_token=token,
        )

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        part = settings.RELEASE_MULTIPART_THRESHOLD
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)

    def upload(self, key, fileobj, *, content_type, progress=None):
        start = fileobj.tell()
        size = fileobj.seek(0, os.SEEK_END) - start
        fileobj.seek(start)
        part_size = settings.RELEASE_MULTIPART_THRESHOLD
        reader = HashingReader(fileobj, part_size=part_size if size >= part_size else None)
        with _storage_errors(f"upload object {key!r}"):
            self.client.upload_fileobj(
                reader,
                self.bucket,
                key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "ContentType": content_type},
                Config=self._transfer_config(),
                Callback=progress,
            )
        try:
            digest = reader.hexdigest_for(size)
            if digest is None:  # the uploader read out of order: hash the source again
                fileobj.seek(start)
                digest, _ = sha256_of_file(fileobj)
            problem = self._check_uploaded(key, size, digest, reader.composite_for(size))
        except BaseException:
            self.delete(key)
            raise
        if problem:
            self.delete(key)
            raise StorageError(f"Object {key!r} {problem}; it was removed, try again.")
        return StoredObject(key=key, size=size, sha256=digest, content_type=content_type)

    def _check_uploaded(self, key, size, digest, composite) -> str | None:
        """What is wrong with the object just uploaded, compared with the bytes sent, or None."""
        stored = self.stat(key)
        if stored is None:
            return "is not there after the upload"
        if stored.size != size:
            return f"has {stored.size} bytes after the upload, expected {size}"
        if stored.sha256 is not None and stored.sha256 != digest:
            return "has a different SHA-256 in storage than the bytes sent"
        if composite and stored.composite_sha256 and stored.parts in (None, composite[1]):
            if stored.composite_sha256 != composite[0]:
                return "has different part checksums in storage than the parts sent"
        return None

    def stat(self, key):
        from botocore.exceptions import ClientError

        try:
            with _storage_errors(f"read the attributes of object {key!r}"):
                attributes = self.client.get_object_attributes(
                    Bucket=self.bucket, Key=key, ObjectAttributes=["ObjectSize", "Checksum", "ObjectParts"]
                )
        except MissingObject:
            return None
        except StorageError as error:
            cause = error.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) in {"NotImplemented", "501", "MethodNotAllowed"}:
                return self._stat_by_head(key)
            raise
        checksum = attributes.get("Checksum") or {}
        value, kind = checksum.get("ChecksumSHA256"), checksum.get("ChecksumType")
        parts = (attributes.get("ObjectParts") or {}).get("TotalPartsCount")
        full = _full_object_sha256(value, kind, bool(parts))
        return StoredObject(
            key=key,
            size=attributes["ObjectSize"],
            sha256=full,
            composite_sha256=value.split("-")[0] if value and full is None else None,
            parts=parts,
        )

    def _stat_by_head(self, key):
        """For S3-compatible stores without GetObjectAttributes."""
        try:
            with _storage_errors(f"read object {key!r}"):
                head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except MissingObject:
            return None
        return StoredObject(
            key=key,
            size=head["ContentLength"],
            sha256=_full_object_sha256(head.get("ChecksumSHA256"), head.get("ChecksumType"), False),
            content_type=head.get("ContentType"),
        )

    def compute_sha256(self, key, progress=None):
        """Read into a ring of buffers in one thread while hashing in this one.

        Socket reads and SHA-256 both release the GIL, so the two overlap. The bytes go
        from the socket straight into reused buffers: urllib3's own readinto would read
        into a new object and copy it, so we read from the http.client response under it.
        """
        with _storage_errors(f"read object {key!r}"):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        stream = response["Body"]._raw_stream  # (keep a reference: closing it closes the socket)
        source = stream._fp if isinstance(getattr(stream, "_fp", None), http.client.HTTPResponse) else stream
        expected = response.get("ContentLength")
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
        digest, size, complete = hashlib.sha256(), 0, False
        try:
            while (item := full.get()) is not None:
                if isinstance(item, StorageError):
                    raise item
                buffer, filled = item
                digest.update(memoryview(buffer)[:filled])
                size += filled
                if progress:
                    progress(filled)
                free.put(buffer)
            complete = True
        finally:
            free.put(None)
            reader.join(timeout=5)
            if reader.is_alive():  # still stuck in a read into one of the buffers: never hand them out again
                _rings.buffers = None
            # A connection with unread bytes cannot serve the next request: close it instead.
            if complete:
                stream.release_conn()
            else:
                stream.close()
        return digest.hexdigest(), size

    def iter_bytes(self, key, chunk_size=CHUNK_SIZE):
        with _storage_errors(f"read object {key!r}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

    def check(self):
        with _storage_errors(f"reach bucket {self.bucket!r}"):
            self.client.head_bucket(Bucket=self.bucket)

    def delete(self, key):
        with _storage_errors(f"delete object {key!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)


def _config_overrides(config) -> dict:
    """Timeouts and retries from a botocore Config given in the storage OPTIONS (tests use it)."""
    if config is None:
        return {}
    names = ("connect_timeout", "read_timeout")
    overrides = {name: getattr(config, name) for name in names if getattr(config, name, None) is not None}
    if getattr(config, "retries", None):
        overrides["retries"] = config.retries
    return overrides


def _full_object_sha256(value: str | None, checksum_type: str | None, multipart: bool) -> str | None:
    """Hex SHA-256 of the whole object, or None when S3 only has a checksum of part checksums."""
    if not value or "-" in value or checksum_type == "COMPOSITE":
        return None
    if checksum_type is None and multipart:
        return None
    return base64.b64decode(value).hex()


def _error_code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class _storage_errors:
    """Turn boto3's exceptions into StorageError with a sentence a person can act on."""

    def __init__(self, action: str):
        self.action = action

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, ClientError):
            message = error.response.get("Error", {}).get("Message") or _error_code(error)
            kind = MissingObject if _error_code(error) in {"NoSuchKey", "404", "NotFound"} else StorageError
            raise kind(f"Could not {self.action}: {message}.") from error
        if isinstance(error, BotoCoreError):
            raise StorageError(f"Could not {self.action}: {error}.") from error
        return False


def release_store() -> ReleaseStore:
    """The store configured in settings.STORAGES['releases']."""
    backend = storages["releases"]
    if isinstance(backend, FileSystemStorage):
        return LocalStore(backend)
    from storages.backends.s3 import S3Storage

    if isinstance(backend, S3Storage):
        return S3Store(backend)
    raise StorageError(f"Unsupported release storage backend {type(backend).__name__}.")


def aws_client(service: str, *, endpoint_url: str | None = None):
    """A boto3 client for another AWS service (CloudFront invalidations), with the site's credentials."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=settings.AWS_REGION_NAME,
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID or None,
        aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY or None,
    )
