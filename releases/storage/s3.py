"""The S3 backend: a boto3 client from `releases.aws` does the work: managed multipart uploads that ask S3 for SHA-256
checksums, object attributes to read size and checksum back, streamed reads. It also
tells the signer where links for this bucket point (`S3Location`).
"""

from __future__ import annotations

import base64
import http.client
import os
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from django.conf import settings

from .. import aws
from . import browser_parts, multipart, readahead
from .base import MissingObject, ReleaseStore, StorageError, StoredObject
from .hashing import CHUNK_SIZE, HashingReader, sha256_of_file

PROBE_KEY = "model-releases-probe"
MISSING_CODES = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}
_client_lock = threading.Lock()  # verify's threads share one S3 client


@dataclass(frozen=True)
class S3Location:
    """Where links to a bucket's objects point and how they are signed; no credentials here.

    ``origin`` is the scheme and authority of botocore's URLs, ``host`` the Host value it
    signs (without a default port), ``prefix`` the path before the key (``/`` for a
    virtual-hosted bucket, ``/bucket/`` for path style, ``/gateway/bucket/`` behind a path).
    """

    origin: str
    host: str
    prefix: str
    region: str

    @classmethod
    def from_presigned(cls, url: str, probe_key: str) -> S3Location:
        parts = urlsplit(url)
        if not parts.path.endswith("/" + probe_key):
            raise StorageError(
                f"Cannot learn the S3 address for links from {parts.scheme}://{parts.netloc}{parts.path}."
            )
        default_port = {"http": 80, "https": 443}[parts.scheme]
        host = parts.hostname if parts.port in (None, default_port) else parts.netloc.rsplit("@", 1)[-1]
        credential = parse_qs(parts.query)["X-Amz-Credential"][0]  # KEY/date/REGION/s3/aws4_request
        return cls(
            origin=f"{parts.scheme}://{parts.netloc}",
            host=host,
            prefix=parts.path[: -len(probe_key)],
            region=credential.split("/")[2],
        )


@dataclass(frozen=True)
class S3Config:
    """settings.RELEASE_STORAGE["OPTIONS"] for the s3 backend."""

    bucket_name: str
    endpoint_url: str | None = None
    # Where clients reach the store, when not at endpoint_url (the site's own address for it, such as
    # a service name on a private network): signed download links and browser part uploads point here.
    public_endpoint_url: str | None = None
    region_name: str | None = None
    addressing_style: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    security_token: str | None = None
    client_config: object = None  # a botocore Config: timeouts and retries (tests use it)


class S3Store(ReleaseStore):
    backend_name = "s3"

    def __init__(self, config: S3Config):
        self.storage = config
        self.bucket = config.bucket_name
        self.region = config.region_name or settings.AWS_REGION_NAME
        # Static keys from the options (the environment fills them), else botocore's default chain.
        self.keys = (
            aws.CredentialSet(config.access_key, config.secret_key, config.security_token)
            if config.access_key and config.secret_key
            else None
        )
        self._client = self._part_client = self._link_client = self._location = None

    @property
    def client(self):
        """One boto3 client per store (release_store() keeps one store per configuration).

        We hash what we read ourselves, so botocore is told not to validate response checksums too
        (it would hash every byte a second time); uploads still send the checksums we ask for.
        """
        if self._client is None:
            with _client_lock:  # verify reads on several threads; build one client, not one each
                if self._client is None:
                    self._client = self._new_client()
        return self._client

    @property
    def part_client(self):
        """The client for parts that carry their own SHA-256 checksum, which S3 checks: it does not sign
        the payload. Over plain HTTP botocore would hash every part again for the signature (over
        HTTPS it already leaves a checksummed body unsigned)."""
        if self._part_client is None:
            with _client_lock:
                if self._part_client is None:
                    self._part_client = self._new_client(payload_signing_enabled=False)
        return self._part_client

    @property
    def link_client(self):
        """Presigns URLs for others (browser part uploads) for the public endpoint: local work only."""
        if not self.storage.public_endpoint_url:
            return self.client
        with _client_lock:
            if self._link_client is None:
                self._link_client = self._new_client(endpoint_url=self.storage.public_endpoint_url)
        return self._link_client

    def _new_client(self, endpoint_url=None, **s3_options):
        return aws.client(
            "s3",
            keys=self.keys,
            endpoint_url=endpoint_url or self.storage.endpoint_url,
            region_name=self.region,
            config=self._config(**s3_options),
        )

    def _config(self, **s3_options):
        from botocore.config import Config

        options = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": self.storage.addressing_style or "auto", **s3_options},
            "retries": {"mode": "standard", "max_attempts": 3},
            "response_checksum_validation": "when_required",
            "request_checksum_calculation": "when_required",
            "max_pool_connections": 16,
            **_config_overrides(self.storage.client_config),
        }
        return Config(**options)

    def signing_location(self) -> S3Location:
        """Where botocore would send a client's GET for this bucket (the public endpoint), learnt once
        by presigning a probe URL.

        botocore decides the host, the port in the signed host header, the path (style,
        endpoint prefix, dotted buckets) and the signing region; copying its answer keeps
        our signatures equal to its own for every endpoint form. Local work: no AWS call, done once
        per store (the upload page asks on every view).
        """
        if self._location is None:
            probe = aws.offline_client(
                "s3",
                endpoint_url=self.storage.public_endpoint_url or self.storage.endpoint_url,
                region_name=self.region,
                config=self._config(),
            )
            url = probe.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": PROBE_KEY})
            self._location = S3Location.from_presigned(url, PROBE_KEY)
        return self._location

    def _transfer_config(self, jobs: int | None = None):
        from boto3.s3.transfer import TransferConfig

        part = settings.RELEASE_MULTIPART_THRESHOLD
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=jobs or 4)

    def upload(self, key, fileobj, *, content_type, progress=None, jobs=None, observe=None):
        start = fileobj.tell()
        size = fileobj.seek(0, os.SEEK_END) - start
        fileobj.seek(start)
        if start == 0 and size >= settings.RELEASE_MULTIPART_THRESHOLD and multipart.is_a_file(fileobj):
            return self._upload_resumable(key, fileobj, size, content_type, progress, jobs, observe)
        part_size = settings.RELEASE_MULTIPART_THRESHOLD
        reader = HashingReader(fileobj, part_size=part_size if size >= part_size else None, observe=observe)
        with _storage_errors(f"upload object {key!r}"):
            self.client.upload_fileobj(
                reader,
                self.bucket,
                key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "ContentType": content_type},
                Config=self._transfer_config(jobs),  # parts of a stream (not a file) go up `jobs` at a time too
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

    def _upload_resumable(self, key, fileobj, size, content_type, progress, jobs, observe):
        upload = multipart.ResumableUpload(
            self.client, self.part_client, self.bucket, key, fileobj.fileno(), size,
            part_size=min(multipart.PART_SIZE, settings.RELEASE_MULTIPART_THRESHOLD),  # a lower threshold: smaller parts
            jobs=jobs or settings.RELEASE_UPLOAD_JOBS,
        )  # fmt: skip
        with _storage_errors(f"upload object {key!r}"):
            digest, composite = upload.run(content_type, progress, observe)
        self.last_upload = upload.report
        problem = self._check_uploaded(key, size, digest, composite)
        if problem:
            self.delete(key)
            raise StorageError(f"Object {key!r} {problem}; it was removed, try again.")
        return StoredObject(key=key, size=size, sha256=digest, content_type=content_type)

    # --- uploads in parts from a browser (see browser_parts) ---

    def part_origin(self):
        return self.signing_location().origin

    def start_parts_upload(self, key, content_type):
        with _storage_errors(f"start an upload of {key!r}"):
            return browser_parts.start(self.client, self.bucket, key, content_type)

    def stored_parts(self, key, upload_id):
        with _storage_errors(f"list the stored parts of {key!r}"):
            return browser_parts.stored_parts(self.client, self.bucket, key, upload_id)

    def part_target(self, key, upload_id, number, sha256, expires):
        with _storage_errors(f"sign part {number} of {key!r}"):
            return browser_parts.part_target(self.link_client, self.bucket, key, upload_id, number, sha256, expires)

    def complete_parts_upload(self, key, upload_id, parts, observe=None):
        with _storage_errors(f"complete the upload of {key!r}"):
            browser_parts.complete(self.client, self.bucket, key, upload_id, parts)
        stored = self.stat(key)
        if stored is None:
            raise StorageError(f"Object {key!r} is not there after completing its upload.")
        return stored

    def abort_parts_upload(self, key, upload_id):
        try:
            with _storage_errors(f"abort the upload of {key!r}"):
                browser_parts.abort(self.client, self.bucket, key, upload_id)
        except MissingObject:
            pass

    @staticmethod
    def cors_rules(origins: list[str]) -> dict:
        return browser_parts.cors_rules(origins)

    def apply_cors(self, origins: list[str]) -> dict:
        """Set the bucket's CORS rule that lets pages from ``origins`` PUT parts, keeping its other
        rules; the configuration set."""
        with _storage_errors(f"set the CORS rule of bucket {self.bucket!r}"):
            rules = browser_parts.merged_cors(browser_parts.current_cors(self.client, self.bucket), origins)
            self.client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration=rules)
        return rules

    def abort_stale_uploads(self, older_than, keep=frozenset()) -> int:
        with _storage_errors("abort abandoned uploads"):
            return multipart.abort_stale_uploads(self.client, self.bucket, older_than, keep)

    def _check_uploaded(self, key, size, digest, composite) -> str | None:
        """What is wrong with the object just uploaded, compared with the bytes sent, or None."""
        stored = self.stat(key)
        if stored is None:
            return "is not there after the upload"
        if stored.size != size:
            return f"has {stored.size} bytes after the upload, expected {size}"
        if stored.sha256 is not None and stored.sha256 != digest:
            return "has a different SHA-256 in storage than the bytes sent"
        kept = composite and stored.composite(composite.algorithm)
        if kept and stored.parts in (None, composite.parts) and kept != composite.value:
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
            if isinstance(cause, ClientError) and aws.error_code(cause) in {
                "NotImplemented",
                "501",
                "MethodNotAllowed",
            }:
                return self._stat_by_head(key)
            raise
        checksum = attributes.get("Checksum") or {}
        sha256, crc32c = checksum.get("ChecksumSHA256"), checksum.get("ChecksumCRC32C")
        kind, parts = checksum.get("ChecksumType"), (attributes.get("ObjectParts") or {}).get("TotalPartsCount")
        return StoredObject(
            key=key,
            size=attributes["ObjectSize"],
            sha256=_full_object_sha256(sha256, kind, bool(parts)),
            composite_sha256=_composite(sha256, kind, bool(parts)),
            parts=parts,
            composite_crc32c=_composite(crc32c, kind, bool(parts)),
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

    def compute_sha256(self, key, progress=None, observe=None):
        """Hash while reading ahead (see `readahead`). botocore's body (urllib3) would read into
        new objects and copy them, so the GET is a presigned URL read with http.client."""
        connection, source = self._open_presigned(key)
        try:
            return readahead.sha256_of_response(source, key, progress, observe)
        finally:
            source.close()
            connection.close()

    def _open_presigned(self, key: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A GET of the object through a presigned URL (botocore signs, locally), read with http.client."""
        with _storage_errors(f"read object {key!r}"):
            url = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key})
        parts = urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        config = self.storage.client_config
        connection = kind(parts.netloc, timeout=getattr(config, "read_timeout", None) or 60)
        try:
            connection.request("GET", f"{parts.path}?{parts.query}")
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise StorageError(f"Could not read object {key!r}: {error}.") from error
        if response.status != 200:
            connection.close()
            if response.status == 404:
                raise MissingObject(f"Object {key!r} does not exist.")
            raise StorageError(f"Could not read object {key!r}: storage answered {response.status} {response.reason}.")
        return connection, response

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
    if not value or _composite(value, checksum_type, multipart):
        return None
    return base64.b64decode(value).hex()


def _composite(value: str | None, checksum_type: str | None, multipart: bool) -> str | None:
    """A checksum of part checksums (base64, without its "-N"), or None if ``value`` is of the whole object."""
    if value and ("-" in value or checksum_type == "COMPOSITE" or (checksum_type is None and multipart)):
        return value.split("-")[0]
    return None


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
            message = aws.error_message(error)
            kind = MissingObject if aws.error_code(error) in MISSING_CODES else StorageError
            raise kind(f"Could not {self.action}: {message}.") from error
        if isinstance(error, BotoCoreError):
            raise StorageError(f"Could not {self.action}: {error}.") from error
        return False
