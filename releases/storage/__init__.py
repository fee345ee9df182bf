"""Object storage for release files: the only package that touches boto3 for storage
(through `releases.aws`, which owns sessions and credentials), configured by
settings.RELEASE_STORAGE.

* `base`: the interface the services use (`ReleaseStore`), what it returns and raises;
* `hashing`: hashing while bytes move, content types;
* `local`: Django's FileSystemStorage under DATA_DIR/objects;
* `s3`: an S3 bucket, and where links to it point (`S3Location`);
* `multipart`: publish_release's resumable, parallel uploads to S3; `readahead`: hashing S3 reads;
* `browser_parts` and `local_parts`: uploads in parts that the admin's page sends (to S3 directly,
  or to the site for the local store).

Everything is hashed while it is written, so callers always learn the SHA-256 of
what they stored without reading the source twice.
"""

from django.conf import settings
from django.core.files.storage import FileSystemStorage

from ..process_cache import PerProcess
from .base import (
    PART_CHECKSUM_HEADER,
    MissingObject,
    PartTarget,
    Progress,
    ReleaseStore,
    StorageError,
    StoredObject,
    StoredPart,
)
from .hashing import CHUNK_SIZE, HashingReader, Observer, guess_content_type, sha256_of_file, sha256_of_stream

__all__ = [
    "PART_CHECKSUM_HEADER",
    "CHUNK_SIZE",
    "HashingReader",
    "MissingObject",
    "Observer",
    "PartTarget",
    "Progress",
    "ReleaseStore",
    "StorageError",
    "StoredObject",
    "StoredPart",
    "guess_content_type",
    "release_store",
    "sha256_of_file",
    "sha256_of_stream",
]


def release_store() -> ReleaseStore:
    """The store settings.RELEASE_STORAGE describes, one per process (its S3 client is reused)."""
    return STORE.get()


def _build(config: dict) -> ReleaseStore:
    backend, options = config["BACKEND"], config.get("OPTIONS", {})
    if backend == "local":
        from .local import LocalStore

        return LocalStore(FileSystemStorage(location=options["location"]))
    if backend == "s3":
        from .s3 import S3Config, S3Store

        return S3Store(S3Config(**options))
    raise StorageError(f"Unsupported release storage backend {backend!r}; use local or s3.")


STORE = PerProcess(lambda: _build(settings.RELEASE_STORAGE), {"RELEASE_STORAGE"})
