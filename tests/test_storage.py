"""The storage module against a real filesystem and a real (moto) S3 server over HTTP."""

import hashlib
import io
import os

import pytest

from releases.storage import HashingReader, MissingObject, StorageError, release_store

from .factories import sha256
from .servers import free_port

MIB = 1024 * 1024


def test_upload_stat_read_back_and_delete(any_store):
    data = os.urandom(300_000)
    stored = any_store.upload("m/v1/sub/model.pt", io.BytesIO(data), content_type="application/octet-stream")
    assert (stored.size, stored.sha256) == (len(data), sha256(data))
    found = any_store.stat("m/v1/sub/model.pt")
    assert found.size == len(data)
    assert b"".join(any_store.iter_bytes("m/v1/sub/model.pt", chunk_size=65536)) == data
    assert any_store.compute_sha256("m/v1/sub/model.pt") == (sha256(data), len(data))
    any_store.delete("m/v1/sub/model.pt")
    assert any_store.stat("m/v1/sub/model.pt") is None


def test_upload_reports_progress(any_store):
    seen = []
    any_store.upload(
        "m/v1/a.bin", io.BytesIO(b"x" * 5000), content_type="application/octet-stream", progress=seen.append
    )
    assert sum(seen) == 5000


def test_stat_of_a_missing_object_is_none(any_store):
    assert any_store.stat("m/v1/nothing-here") is None


def test_reading_a_missing_object_says_it_is_missing(any_store):
    with pytest.raises(MissingObject, match="m/v1/nothing-here"):
        any_store.compute_sha256("m/v1/nothing-here")


def test_s3_single_part_upload_keeps_a_full_object_sha256(s3_store, s3_client, s3_bucket):
    data = os.urandom(100_000)
    s3_store.upload("m/v1/config.yaml", io.BytesIO(data), content_type="text/yaml")
    assert s3_store.stat("m/v1/config.yaml").sha256 == sha256(data)
    head = s3_client.head_object(Bucket=s3_bucket, Key="m/v1/config.yaml")
    assert head["ContentType"] == "text/yaml"
    assert s3_client.get_object(Bucket=s3_bucket, Key="m/v1/config.yaml")["Body"].read() == data


def test_s3_large_upload_is_multipart_and_hashed_while_sent(settings, s3_store, s3_client, s3_bucket):
    settings.RELEASE_MULTIPART_THRESHOLD = 5 * MIB  # S3's smallest part size
    data = os.urandom(12 * MIB + 123)
    stored = s3_store.upload("m/v1/model.pt", io.BytesIO(data), content_type="application/octet-stream")
    assert stored.sha256 == sha256(data)
    attributes = s3_client.get_object_attributes(
        Bucket=s3_bucket, Key="m/v1/model.pt", ObjectAttributes=["ObjectSize", "Checksum"]
    )
    assert attributes["Checksum"]["ChecksumType"] == "COMPOSITE"  # three parts, each checked by S3
    found = s3_store.stat("m/v1/model.pt")
    assert (found.size, found.sha256) == (len(data), None)  # a checksum of checksums is not the file's SHA-256
    assert s3_store.compute_sha256("m/v1/model.pt") == (sha256(data), len(data))


def test_s3_stat_reads_an_object_uploaded_by_someone_else(s3_store, s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="m/v1/plain.bin", Body=b"abc")
    found = s3_store.stat("m/v1/plain.bin")
    assert (found.size, found.sha256) == (3, None)


def s3_store_at(settings, endpoint: str, **config):
    """The release store pointed at another S3 endpoint, trying each request once."""
    from botocore.config import Config

    options = {**settings.RELEASE_STORAGE["OPTIONS"], "endpoint_url": endpoint}
    options["client_config"] = Config(retries={"max_attempts": 1}, **config)
    settings.RELEASE_STORAGE = {**settings.RELEASE_STORAGE, "OPTIONS": options}
    return release_store()


def test_unreachable_s3_gives_a_storage_error_naming_the_object(settings, s3_store):
    store = s3_store_at(settings, f"http://127.0.0.1:{free_port()}", connect_timeout=1)
    with pytest.raises(StorageError, match="m/v1/x.bin") as unreachable:
        store.stat("m/v1/x.bin")
    assert not isinstance(unreachable.value, MissingObject)  # unreachable is not the same as gone
    with pytest.raises(StorageError, match="Could not upload object"):
        store.upload("m/v1/x.bin", io.BytesIO(b"abc"), content_type="application/octet-stream")


@pytest.fixture
def cut_short_s3():
    """An S3 endpoint that promises 1,000 bytes for any GET, sends 400 and hangs up."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_read_cut_short_is_an_error_not_a_mismatch(settings, s3_store, cut_short_s3):
    with pytest.raises(StorageError, match="closed after 400 of 1,000 bytes") as cut:
        s3_store_at(settings, cut_short_s3).compute_sha256("m/v1/model.pt")
    assert not isinstance(cut.value, MissingObject)


def test_local_upload_is_atomic_when_the_source_fails(local_store, tmp_path):
    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 10:
                raise OSError("disk went away")
            return super().read(4)

    with pytest.raises(StorageError, match="disk went away"):
        local_store.upload("m/v1/model.pt", Broken(b"x" * 100), content_type="application/octet-stream")
    assert local_store.stat("m/v1/model.pt") is None
    assert list((tmp_path / "objects" / "m" / "v1").iterdir()) == []  # no temporary file left behind


def test_local_keys_cannot_escape_the_storage_root(local_store):
    from django.core.exceptions import SuspiciousFileOperation

    with pytest.raises(SuspiciousFileOperation):
        local_store.upload("../outside", io.BytesIO(b"x"), content_type="text/plain")


def test_hashing_reader_hashes_each_byte_once_even_when_read_twice():
    data = os.urandom(10_000)
    reader = HashingReader(io.BytesIO(data))
    reader.read(4000)
    reader.seek(1000)  # an uploader retrying a part
    reader.read(5000)
    reader.read()
    assert reader.hexdigest_for(len(data)) == sha256(data)


def test_hashing_reader_admits_when_it_missed_bytes():
    reader = HashingReader(io.BytesIO(b"x" * 100))
    reader.read(10)
    reader.seek(50)
    reader.read()
    assert reader.hexdigest_for(100) is None


def test_release_store_follows_settings(settings, s3_store, tmp_path):
    assert release_store().backend_name == "s3" and release_store().bucket.startswith("releases-")
    assert release_store() is release_store()  # one store (and S3 client) per configuration
    settings.RELEASE_STORAGE = {"BACKEND": "local", "OPTIONS": {"location": str(tmp_path / "other")}}
    assert release_store().backend_name == "local"


def test_an_unknown_backend_is_refused(settings):
    settings.RELEASE_STORAGE = {"BACKEND": "ftp", "OPTIONS": {}}
    with pytest.raises(StorageError, match="Unsupported release storage backend 'ftp'; use local or s3"):
        release_store()


def test_hashing_reader_computes_s3_composite_checksums():
    data = os.urandom(2500)
    reader = HashingReader(io.BytesIO(data), part_size=1000)
    while reader.read(333):
        pass
    parts = [hashlib.sha256(data[i : i + 1000]).digest() for i in range(0, 2500, 1000)]
    import base64

    expected = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert reader.composite_for(2500) == ("SHA256", expected, 3)


def test_s3_multipart_upload_is_checked_against_the_composite_checksum(settings, s3_store, monkeypatch):
    settings.RELEASE_MULTIPART_THRESHOLD = 5 * MIB
    data = os.urandom(11 * MIB)
    s3_store.upload("m/v1/good.pt", io.BytesIO(data), content_type="application/octet-stream")
    stored = s3_store.stat("m/v1/good.pt")
    assert stored.composite_sha256 and stored.sha256 is None

    # The store answers with part checksums of other bytes: the upload is refused and removed.
    real_stat = type(s3_store).stat
    monkeypatch.setattr(
        type(s3_store),
        "stat",
        lambda self, key: real_stat(self, "m/v1/good.pt") if key == "m/v1/bad.pt" else real_stat(self, key),
    )
    other = os.urandom(11 * MIB)
    with pytest.raises(StorageError, match="different part checksums"):
        s3_store.upload("m/v1/bad.pt", io.BytesIO(other), content_type="application/octet-stream")
    monkeypatch.undo()
    assert s3_store.stat("m/v1/bad.pt") is None


def test_s3_upload_removes_the_object_when_the_check_after_it_fails(s3_store, monkeypatch):
    def unreachable(self, key):
        raise StorageError("Could not read the attributes: timeout.")

    monkeypatch.setattr(type(s3_store), "stat", unreachable)
    with pytest.raises(StorageError, match="timeout"):
        s3_store.upload("m/v1/x.bin", io.BytesIO(b"abc"), content_type="application/octet-stream")
    monkeypatch.undo()
    assert s3_store.stat("m/v1/x.bin") is None


def test_hashing_a_missing_object_is_a_storage_error(any_store):
    with pytest.raises(StorageError, match="m/v1/none.bin"):
        any_store.compute_sha256("m/v1/none.bin")


def test_hashing_reports_progress_and_spans_many_buffers(any_store, monkeypatch):
    from releases.storage import readahead

    monkeypatch.setattr(readahead, "READ_BUFFER", 256 * 1024)  # S3's read-ahead ring goes round several times
    data = os.urandom(3 * MIB + 17)
    any_store.upload("m/v1/big.bin", io.BytesIO(data), content_type="application/octet-stream")
    seen = []
    assert any_store.compute_sha256("m/v1/big.bin", progress=seen.append) == (sha256(data), len(data))
    assert sum(seen) == len(data) and len(seen) >= 4  # progress as it goes, not once at the end
