"""Resumable multipart uploads to S3 (a moto server): parts in parallel, a resumed upload sends
only what is missing, changed parts are sent again, abandoned uploads are aborted by a job."""

import os
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command

from releases.models import File, Version
from releases.services import LocalFile, release_local_files
from releases.storage import multipart
from releases.storage.hashing import Composite, crc32c

from . import storage_servers

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


@pytest.fixture
def small_parts(settings, s3_store):
    settings.RELEASE_MULTIPART_THRESHOLD = multipart.MIN_PART  # 5 MiB parts: a 13 MiB file has 3
    return s3_store


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(13 * MiB))
    return path


class Interrupt:
    """A progress callback that presses Ctrl-C once `after` parts are stored."""

    def __init__(self, after: int):
        self.after, self.parts = after, 0

    def __call__(self, item, size):
        def advance(count):
            self.parts += 1
            if self.parts >= self.after:
                raise KeyboardInterrupt

        return advance


def publish(path, **options):
    return release_local_files("tts", "v1", [LocalFile("model.pt", path)], **options)


def unfinished(store):
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def test_a_large_file_goes_up_in_parts_in_parallel(small_parts, weights):
    outcome = publish(weights, jobs=3)
    body = small_parts.client.get_object(Bucket=small_parts.bucket, Key="tts/v1/model.pt")["Body"].read()
    assert body == weights.read_bytes()
    assert File.objects.get().sha256 == multipart.hashlib.sha256(body).hexdigest()
    report = small_parts.last_upload
    assert (report.parts, report.reused_parts, report.sent_bytes) == (3, 0, 13 * MiB)
    assert outcome.version.status == Version.Status.PUBLISHED and unfinished(small_parts) == []


def test_an_interrupted_upload_resumes_and_sends_only_the_missing_parts(small_parts, weights):
    with pytest.raises(KeyboardInterrupt):
        publish(weights, jobs=1, progress_for=Interrupt(after=1))
    assert len(unfinished(small_parts)) == 1  # left for the next run, not aborted
    assert Version.objects.get().status == Version.Status.DRAFT  # interrupted, not refused: kept
    publish(weights, jobs=2)
    report = small_parts.last_upload
    assert report.reused_parts == 1 and report.sent_bytes == 8 * MiB  # the remaining bytes, no more
    body = small_parts.client.get_object(Bucket=small_parts.bucket, Key="tts/v1/model.pt")["Body"].read()
    assert body == weights.read_bytes() and unfinished(small_parts) == []
    assert Version.objects.get().status == Version.Status.PUBLISHED


def test_parts_go_up_with_crc32c_checksums_that_s3_recomputes(small_parts, weights):
    publish(weights, jobs=2)
    data = weights.read_bytes()
    parts = [data[offset : offset + 5 * MiB] for offset in range(0, len(data), 5 * MiB)]
    expected = Composite.of("CRC32C", [crc32c(part) for part in parts])
    assert small_parts.stat("tts/v1/model.pt").composite("CRC32C") == expected.value  # moto's own sum of parts


def test_an_upload_an_earlier_release_began_with_crc32_parts_starts_over(small_parts, weights):
    """S3 takes parts only with their upload's algorithm: the old upload is aborted, not resumed."""
    client, bucket, key = small_parts.client, small_parts.bucket, "tts/v1/model.pt"
    old = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")["UploadId"]
    first = weights.read_bytes()[: 5 * MiB]
    client.upload_part(Bucket=bucket, Key=key, UploadId=old, PartNumber=1, Body=first, ChecksumAlgorithm="CRC32")
    publish(weights, jobs=2)
    report = small_parts.last_upload
    assert (report.reused_parts, report.sent_bytes) == (0, 13 * MiB) and unfinished(small_parts) == []
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == weights.read_bytes() and Version.objects.get().status == Version.Status.PUBLISHED


def test_a_stored_part_whose_bytes_changed_is_sent_again(small_parts, weights):
    with pytest.raises(KeyboardInterrupt):
        publish(weights, jobs=1, progress_for=Interrupt(after=2))
    changed = bytearray(weights.read_bytes())
    changed[100] ^= 0xFF  # in the first part
    weights.write_bytes(bytes(changed))
    publish(weights, jobs=2)
    report = small_parts.last_upload
    assert report.reused_parts == 1 and report.sent_bytes == 5 * MiB + 3 * MiB  # parts 1 and 3
    body = small_parts.client.get_object(Bucket=small_parts.bucket, Key="tts/v1/model.pt")["Body"].read()
    assert body == bytes(changed) and File.objects.get().sha256 == multipart.hashlib.sha256(body).hexdigest()


def test_abandoned_uploads_are_aborted_after_their_age(localstack_store, settings, weights):
    settings.RELEASE_MULTIPART_THRESHOLD = multipart.MIN_PART
    from releases import upload_tasks

    with pytest.raises(KeyboardInterrupt):
        publish(weights, jobs=1, progress_for=Interrupt(after=1))
    outcome = upload_tasks.abort_stale_uploads.delay().get()
    assert outcome == {"aborted": 0, "admin_uploads": 0}  # younger than STALE_UPLOAD_HOURS
    assert len(unfinished(localstack_store)) == 1
    assert localstack_store.abort_stale_uploads(timedelta(0)) == 1
    assert unfinished(localstack_store) == []


def test_publish_release_says_how_to_resume_after_ctrl_c(small_parts, weights, monkeypatch):
    from releases.management.commands import publish_release as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "release_local_files", interrupted)
    with pytest.raises(CommandError, match="run the same command again to resume") as raised:
        call_command("publish_release", "tts", "v1", str(weights))
    assert raised.value.returncode == 130
    with pytest.raises(CommandError, match="--jobs must be between 1 and 64"):
        call_command("publish_release", "tts", "v1", str(weights), "--jobs", "0")


def test_parts_are_planned_within_s3s_limits():
    assert [p.length for p in multipart.plan(13 * MiB, 5 * MiB)] == [5 * MiB, 5 * MiB, 3 * MiB]
    assert multipart.plan(13 * MiB, 1 * MiB)[0].length == 5 * MiB  # never under S3's minimum
    huge = multipart.plan(100_000 * 5 * MiB, 5 * MiB)
    assert len(huge) <= multipart.MAX_PARTS and sum(p.length for p in huge) == 100_000 * 5 * MiB


@pytest.fixture
def counted_moto(settings, moto_endpoint, s3_bucket, local_store):
    yield from storage_servers.counted_moto(settings, moto_endpoint, s3_bucket)


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_is_the_most_parts_in_flight_at_once(counted_moto, tmp_path, jobs):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(31 * MiB))  # 7 parts of 5 MiB
    call_command("publish_release", "tts", "v1", str(path), "--jobs", str(jobs))
    seen = counted_moto.reset()  # PUTs counted at a proxy, from their request to the answer
    assert seen.requests["PutPart"] == 7
    assert 1 <= seen.most_puts_in_flight <= jobs  # never more than asked (with 3, usually 3)


def test_a_stream_that_is_not_a_file_goes_up_jobs_parts_at_a_time_too(counted_moto):
    import io

    from releases.storage import release_store

    data = os.urandom(21 * MiB)  # 5 parts of 5 MiB, through boto3's managed upload (no file to read at offsets)
    release_store().upload("tts/v1/model.pt", io.BytesIO(data), content_type="application/octet-stream", jobs=1)
    seen = counted_moto.reset()
    assert seen.requests["PutPart"] == 5 and seen.most_puts_in_flight == 1
