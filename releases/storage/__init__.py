"""Object storage for release files: the only package that touches django-storages and boto3
(through `releases.aws`, which owns sessions and credentials).

* `base`: the interface the services use (`ReleaseStore`), what it returns and raises;
* `hashing`: hashing while bytes move, content types;
* `local`: Django's FileSystemStorage under DATA_DIR/objects;
* `s3`: an S3 bucket, and where links to it point (`S3Location`).

Everything is hashed while it is written, so callers always learn the SHA-256 of
what they stored without reading the source twice.
"""

from django.core.files.storage import FileSystemStorage, storages

from .base import MissingObject, Progress, ReleaseStore, StorageError, StoredObject
from .hashing import CHUNK_SIZE, HashingReader, guess_content_type, sha256_of_file, sha256_of_stream

__all__ = [
    "CHUNK_SIZE",
    "HashingReader",
    "MissingObject",
    "Progress",
    "ReleaseStore",
    "StorageError",
    "StoredObject",
    "guess_content_type",
    "release_store",
    "sha256_of_file",
    "sha256_of_stream",
]


def release_store() -> ReleaseStore:
    """The store configured in settings.STORAGES['releases']."""
    backend = storages["releases"]
    if isinstance(backend, FileSystemStorage):
        from .local import LocalStore

        return LocalStore(backend)
    from storages.backends.s3 import S3Storage

    if isinstance(backend, S3Storage):
        from .s3 import S3Store

        return S3Store(backend)
    raise StorageError(f"Unsupported release storage backend {type(backend).__name__}.")
