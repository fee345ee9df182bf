"""Verify finds what went wrong in storage: deleted objects, other bytes of the same size, wrong sizes."""

import io

import pytest
from django.core import mail

from releases import verification
from releases.models import File

pytestmark = pytest.mark.django_db


@pytest.fixture
def released(publish):
    publish("m", "v1", {"model.pt": b"weights" * 1000, "config.yaml": b"a: 1\n", "vocoder.bin": b"v" * 3000})
    return {file.path: file for file in File.objects.all()}


def status_of(path: str) -> tuple[str, str]:
    file = File.objects.get(path=path)
    return file.verification_status, file.verification_detail


def test_everything_fine(any_store, released):
    report = verification.verify_batch(byte_budget=10**9)
    assert (report.files, report.failed, report.bytes_hashed) == (3, 0, 7000 + 5 + 3000)
    assert all(f.verification_status == "ok" and f.hashed_at for f in File.objects.all())


def test_detects_a_deleted_object_and_other_bytes_of_the_same_size(any_store, released, settings):
    settings.ADMINS = [("Ops", "ops@example.org")]
    any_store.delete(released["config.yaml"].key)
    any_store.upload(released["model.pt"].key, io.BytesIO(b"WEIGHTS" * 1000), content_type="application/octet-stream")
    report = verification.verify_batch(byte_budget=10**9)
    assert report.counts["missing"] == 1 and report.counts["mismatch"] == 1 and report.counts["ok"] == 1
    assert status_of("config.yaml")[0] == "missing"
    status, detail = status_of("model.pt")
    assert status == "mismatch" and ("content hashes to" in detail or "storage's SHA-256 is" in detail)
    assert len(mail.outbox) == 1 and "2 published file(s) failed" in mail.outbox[0].subject


def test_a_cheap_check_finds_a_wrong_size_without_reading(any_store, released):
    any_store.upload(released["vocoder.bin"].key, io.BytesIO(b"short"), content_type="application/octet-stream")
    report = verification.verify_batch(byte_budget=0)
    assert report.bytes_hashed == 0
    assert status_of("vocoder.bin") == ("mismatch", "object has 5 bytes, expected 3000")


def test_the_byte_budget_rolls_full_rehashes_over_runs(any_store, released):
    first = verification.verify_batch(byte_budget=7000)
    assert first.bytes_hashed == 7000  # only what fits: the oldest-hashed file
    second = verification.verify_batch(byte_budget=7000)
    assert second.bytes_hashed == 3005
    assert File.objects.filter(hashed_at__isnull=True).count() == 0


def test_a_file_larger_than_the_budget_still_gets_its_turn(any_store, released):
    first = verification.verify_batch(byte_budget=100)
    assert first.bytes_hashed == 7000  # the oldest-hashed file, alone, rather than none ever again
    assert verification.verify_batch(byte_budget=100).bytes_hashed > 0


def test_the_batch_takes_the_files_verified_longest_ago(any_store, released):
    verification.verify_batch(limit=2, byte_budget=0)
    assert File.objects.filter(verified_at__isnull=True).count() == 1
    verification.verify_batch(limit=2, byte_budget=0)
    assert File.objects.filter(verified_at__isnull=True).count() == 0


@pytest.mark.parametrize("budget", [0, 10**9], ids=["cheap check", "re-hash"])
def test_storage_errors_are_recorded_as_errors(s3_store, released, settings, monkeypatch, budget):
    from releases.storage import StorageError
    from releases.storage.s3 import S3Store

    def unreachable(self, key, progress=None):
        raise StorageError("Could not read object: connect timeout.")

    monkeypatch.setattr(S3Store, "stat", unreachable)
    monkeypatch.setattr(S3Store, "compute_sha256", unreachable)
    report = verification.verify_batch(byte_budget=budget)
    assert report.counts["error"] == 3
    assert status_of("model.pt") == ("error", "Could not read object: connect timeout.")


def test_draft_and_withdrawn_files_are_not_verified(any_store, publish):
    from releases import services

    publish("m", "v1", {"a.bin": b"a"}, draft=True)
    services.withdraw_version(publish("m", "v2", {"a.bin": b"b"}))
    assert verification.verify_batch(byte_budget=10**9).files == 0


@pytest.mark.django_db(transaction=True)
def test_verify_artifacts_command(manage, local_store, released):
    ok = manage("verify_artifacts")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "Verified 3 files (10,005 bytes re-hashed): 3 ok."
    local_store.upload(released["model.pt"].key, io.BytesIO(b"x" * 7000), content_type="application/octet-stream")
    bad = manage("verify_artifacts")
    assert bad.returncode == 1
    assert bad.stdout.strip() == "Verified 3 files (10,005 bytes re-hashed): 2 ok, 1 mismatch."
    assert "FAILED m v1 model.pt: mismatch" in bad.stderr


def test_several_reads_at_once_record_each_file_in_order(any_store, publish, settings):
    settings.VERIFY_CONCURRENCY = 3
    contents = {f"part-{n}.bin": bytes([n]) * (1000 + n) for n in range(8)}
    publish("m", "v1", contents)
    any_store.delete(File.objects.get(path="part-2.bin").key)
    any_store.upload(
        File.objects.get(path="part-5.bin").key, io.BytesIO(b"x" * 1005), content_type="application/octet-stream"
    )
    files = list(verification.published_files().order_by("path"))
    progressed = []
    results = list(verification.checked(files, rehash=lambda f: True, progress=progressed.append))
    statuses = [(file.path, status) for file, _, (status, _, _) in results]
    assert statuses == [
        (path, {"part-2.bin": "missing", "part-5.bin": "mismatch"}.get(path, "ok")) for path in sorted(contents)
    ]
    assert sum(progressed) == sum(hashed for _, _, (_, _, hashed) in results) >= 6 * 1000


def test_a_long_run_keeps_only_a_few_files_in_flight(any_store, publish, settings):
    settings.VERIFY_CONCURRENCY = 2
    publish("m", "v1", {f"{n}.bin": b"x" for n in range(10)})
    taken = []

    def files():
        for file in verification.published_files().order_by("pk"):
            taken.append(file)
            yield file

    results = verification.checked(files(), rehash=lambda f: False)
    next(results)
    assert len(taken) == 4  # two per thread, not all ten
    assert len(list(results)) == 9


def test_verify_queries_do_not_depend_on_concurrency(any_store, publish, settings, django_assert_num_queries):
    publish("m", "v1", {f"{n}.bin": b"x" for n in range(6)})
    files = list(verification.published_files())
    for concurrency in (1, 4):
        settings.VERIFY_CONCURRENCY = concurrency
        with django_assert_num_queries(6):  # one UPDATE per file; the threads never touch the database
            verification.verify(files, rehash=lambda f: True)


def test_stopping_early_does_not_wait_for_reads_under_way(local_store, publish, settings, monkeypatch):
    import threading

    from releases.storage.local import LocalStore

    settings.VERIFY_CONCURRENCY = 2
    publish("m", "v1", {"a.bin": b"a", "b.bin": b"b", "c.bin": b"c"})
    release, reading = threading.Event(), threading.Event()
    real = LocalStore.compute_sha256

    def slow_for_b(self, key, progress=None):
        if key.endswith("b.bin"):
            reading.set()
            release.wait(30)
        return real(self, key, progress)

    monkeypatch.setattr(LocalStore, "compute_sha256", slow_for_b)
    results = verification.checked(verification.published_files().order_by("path"), rehash=lambda f: True)
    assert next(results)[0].path == "a.bin"
    assert reading.wait(30)
    results.close()  # as a time limit or Ctrl-C would: returns while b.bin is still being read
    assert not release.is_set() and any(t.name.startswith("verify") for t in threading.enumerate())
    release.set()
