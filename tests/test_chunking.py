"""Chunk manifests: the format (releases/chunking.py), building and recording them (services/chunks.py,
chunk_tasks.py, build_chunk_manifests), and serving them (/chunks/<sha256>, chunks_url in the API)."""

import hashlib
import random
import threading
import urllib.request

import pytest
from django.core.management import CommandError, call_command

from releases import chunk_tasks, chunking, services, tasks
from releases.chunking import HEADER, MAGIC, RECORD, ManifestError, build_manifest, parse_manifest
from releases.models import File, OutboxEntry, Version

MiB = 1024 * 1024


def noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk_hashes(data: bytes, tmp_path) -> list[bytes]:
    path = tmp_path / f"data-{hashlib.sha256(data).hexdigest()[:12]}"
    path.write_bytes(data)
    return [chunk.sha256 for chunk in parse_manifest(build_manifest(path)).chunks]


# --- the format ------------------------------------------------------------------------------------


def test_a_manifest_round_trips_and_describes_every_chunk(tmp_path):
    data = noise(1, 3 * MiB + 12345)
    (tmp_path / "model.pt").write_bytes(data)
    raw = build_manifest(tmp_path / "model.pt")
    manifest = parse_manifest(raw)
    assert raw[:8] == MAGIC and manifest.encode() == raw
    assert (manifest.min_size, manifest.avg_size, manifest.max_size) == (16384, 65536, 262144)
    assert (manifest.file_size, manifest.file_sha256) == (len(data), hashlib.sha256(data).digest())
    assert len(raw) == HEADER.size + RECORD.size * len(manifest.chunks) == 64 + 44 * len(manifest.chunks)
    end = 0
    for chunk in manifest.chunks:
        assert chunk.offset == end and 0 < chunk.length <= 262144
        assert chunk.sha256 == hashlib.sha256(data[chunk.offset : chunk.offset + chunk.length]).digest()
        end += chunk.length
    assert end == len(data)
    assert all(chunk.length >= 16384 for chunk in manifest.chunks[:-1])  # FastCDC's minimum, but for the last


def test_boundaries_follow_the_content_not_the_offsets(tmp_path):
    original = noise(2, 8 * MiB)
    shifted = b"inserted at the start, 37 bytes long" + original
    before, after = chunk_hashes(original, tmp_path), chunk_hashes(shifted, tmp_path)
    kept = set(before) & set(after)
    # Only the chunk(s) around the insertion change; fixed-size blocks would share none at all.
    assert len(kept) >= len(before) - 2, (len(kept), len(before))
    assert len(before) > 64  # many chunks: the comparison means something


def test_a_manifest_stays_under_a_thousandth_of_its_file(tmp_path):
    for size in (chunking.MIN_FILE_SIZE, 8 * MiB, 24 * MiB + 7):
        (tmp_path / "f").write_bytes(noise(size, size))
        raw = build_manifest(tmp_path / "f")
        assert len(raw) < size / 1000, (size, len(raw))
        assert chunking.small_enough(len(raw), size)


def test_highly_repetitive_content_can_exceed_the_share_and_is_told_apart(tmp_path):
    (tmp_path / "f").write_bytes(noise(0, 20000) * 60)  # a 20 kB block over and over: 20 kB chunks
    raw = build_manifest(tmp_path / "f")
    assert not chunking.small_enough(len(raw), 1_200_000)


def test_files_under_one_mebibyte_get_no_manifest(tmp_path):
    (tmp_path / "small").write_bytes(noise(3, MiB - 1))
    with pytest.raises(ManifestError, match="files under 1,048,576 get no manifest"):
        build_manifest(tmp_path / "small")
    assert not chunking.gets_manifest(MiB - 1) and chunking.gets_manifest(MiB)


@pytest.mark.parametrize(
    "pieces",
    [[8 * MiB], [MiB], [65536], [4096, 300_000, 1, 9 * MiB, 262_144, 262_143, 262_145]],
    ids=["parts", "mebibytes", "socket-reads", "uneven"],
)
def test_a_manifest_built_from_a_stream_is_the_one_built_from_the_whole_file(tmp_path, pieces):
    # Noise, a run of zeros (chunks cut at the maximum size) and noise again, with an odd length.
    data = noise(70, 19 * MiB) + bytes(3 * MiB) + noise(71, 5 * MiB + 123)
    (tmp_path / "f").write_bytes(data)
    builder, offset, turn = chunking.ManifestBuilder(), 0, 0
    while offset < len(data):
        size = pieces[turn % len(pieces)]
        builder.update(bytearray(data[offset : offset + size]))  # a buffer the caller reuses: copied if kept
        offset, turn = offset + size, turn + 1
    assert builder.size == len(data)
    assert builder.finish(hashlib.sha256(data).digest()) == build_manifest(tmp_path / "f")


def test_the_compiled_chunker_is_the_one_in_use():
    # The package falls back to pure Python (about a hundred times slower) when its extension is
    # missing; every upload of a large file runs it, so the pinned wheel must bring the extension.
    import fastcdc
    from fastcdc.fastcdc_cy import fastcdc_cy

    assert fastcdc.fastcdc is fastcdc_cy


def test_a_stream_under_the_largest_chunk_is_one_or_two_chunks():
    builder = chunking.ManifestBuilder()
    builder.update(b"")
    builder.update(noise(72, 100_000))
    manifest = parse_manifest(builder.finish(b"\0" * 32))
    assert manifest.file_size == 100_000 and sum(chunk.length for chunk in manifest.chunks) == 100_000


@pytest.fixture(scope="module")
def good_manifest(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("manifest") / "f"
    path.write_bytes(noise(4, 2 * MiB))
    return build_manifest(path)


def patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def test_parse_names_what_is_wrong(good_manifest):
    raw = good_manifest
    first_record = HEADER.size
    second_offset = first_record + RECORD.size
    cases = [
        (raw[:40], "Truncated manifest: 40 bytes, a header alone has 64"),
        (patched(raw, 0, b"PK\x03\x04xxxx"), "not a chunk manifest"),
        (patched(raw, 0, b"MRCHUNK2"), "unsupported manifest version"),
        (raw[:-10], "Truncated manifest: its count of"),
        (raw + b"\x00", "Trailing bytes after the manifest"),
        (patched(raw, 8, (300000).to_bytes(4, "big")), "Impossible chunk sizes"),
        (patched(raw, second_offset, (5).to_bytes(8, "big")), "Chunk 1 starts at 5, expected"),
        (patched(raw, first_record + 8, (0).to_bytes(4, "big")), "Chunk 0 has length 0"),
        (patched(raw, 20, (3 * MiB).to_bytes(8, "big")), "cover 2097152 bytes, but the file has 3145728"),
    ]
    for data, message in cases:
        with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
            parse_manifest(data)
    assert parse_manifest(raw).file_size == 2 * MiB


def test_manifest_keys_never_collide_with_file_keys():
    from django.core.exceptions import ValidationError

    from releases.models import validate_model_slug, validate_object_key

    key = chunking.manifest_key("a" * 64)
    assert key == ".chunks/" + "a" * 64 and chunking.sha256_of_key(key) == "a" * 64
    with pytest.raises(ValidationError):
        validate_model_slug(".chunks")
    with pytest.raises(ValidationError):
        validate_object_key(key, "chunks")  # a file's key starts with its model's slug
    assert chunking.sha256_of_key("m/v1/model.pt") is None and chunking.sha256_of_key(".chunks/xyz") is None
    with pytest.raises(ValueError):
        chunking.manifest_key("A" * 64)


# --- building and recording ------------------------------------------------------------------------


def published(publish, django_capture_on_commit_callbacks, model="index-tts", version="v1", files=None, **options):
    """Publish and run what its commit queued (the outbox drain and the manifest builds), in-process."""
    with django_capture_on_commit_callbacks(execute=True):
        return publish(
            model, version, files or {"model.pt": noise(5, 3 * MiB), "config.yaml": b"rate: 24000\n"}, **options
        )


def stored_manifest(store, sha256: str) -> bytes:
    return b"".join(store.iter_bytes(chunking.manifest_key(sha256)))


def forget_manifests(store):
    """As if the files had been uploaded before manifests were built on the way up."""
    for sha256 in set(File.objects.filter(chunks_size__gt=0).values_list("sha256", flat=True)):
        store.delete(chunking.manifest_key(sha256))
    File.objects.update(chunks_size=None)


@pytest.mark.django_db
def test_publishing_records_the_manifest_with_the_file_and_queues_no_build(
    any_store, publish, django_capture_on_commit_callbacks, monkeypatch
):
    queued = []
    monkeypatch.setattr(chunk_tasks.backfill_chunk_manifests, "delay", lambda *a: queued.append(a))
    monkeypatch.setattr(chunk_tasks.build_chunk_manifest, "delay", lambda *a: queued.append(a))
    weights = noise(6, 3 * MiB)
    with django_capture_on_commit_callbacks(execute=True):
        version = publish("index-tts", "v1", {"model.pt": weights, "config.yaml": b"rate: 24000\n"})
    big, small = File.objects.get(path="model.pt"), File.objects.get(path="config.yaml")
    raw = stored_manifest(any_store, big.sha256)
    assert big.chunks_size == len(raw) and small.chunks_size is None
    manifest = parse_manifest(raw)
    assert (manifest.file_size, manifest.file_sha256.hex()) == (len(weights), hashlib.sha256(weights).hexdigest())
    assert chunk_sha_of(weights, manifest) == [chunk.sha256 for chunk in manifest.chunks]
    assert any_store.stat(chunking.manifest_key(small.sha256)) is None
    assert version.status == "published" and queued == []  # nothing left to build, nothing read back


@pytest.mark.django_db
def test_a_draft_file_kept_without_a_manifest_gets_one_from_the_local_read_that_compares_it(local_store, publish):
    weights = noise(16, 2 * MiB)
    publish("index-tts", "v1", {"model.pt": weights}, draft=True)
    forget_manifests(local_store)  # uploaded before manifests were built on the way up
    publish("index-tts", "v1", {"model.pt": weights})  # kept, not uploaded again, and published
    file = File.objects.get()
    assert file.chunks_size == len(stored_manifest(local_store, file.sha256)) > 0


@pytest.mark.django_db
def test_a_broker_that_is_down_leaves_the_manifest_to_the_backfill(local_store, publish, monkeypatch, caplog):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(chunk_tasks.backfill_chunk_manifests, "delay", broker_down)
    draft = publish("index-tts", "v1", {"model.pt": noise(5, 3 * MiB)}, draft=True)
    forget_manifests(local_store)
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        version = services.publish_version(draft)  # queues a backfill run for the file lacking one
    assert version.status == "published" and "the backfill job will build them" in caplog.text
    assert File.objects.get(path="model.pt").chunks_size is None
    assert services.backfill_chunk_manifests(10) == {"built": 1, "bytes_read": 3 * MiB}
    assert File.objects.get(path="model.pt").chunks_size > 0


@pytest.mark.django_db
def test_one_manifest_serves_every_file_with_the_same_bytes_and_building_again_does_nothing(local_store, publish):
    weights = noise(7, 2 * MiB)
    publish("index-tts", "v1", {"model.pt": weights})
    publish("index-tts", "v2", {"renamed.pt": weights})  # shares the manifest stored by v1's upload
    sizes = set(File.objects.values_list("chunks_size", flat=True))
    assert len(sizes) == 1 and sizes.pop() == len(stored_manifest(local_store, hashlib.sha256(weights).hexdigest()))
    outcome = services.build_chunk_manifest(File.objects.get(path="model.pt").pk)
    assert (outcome.state, outcome.read) == ("present", 0)
    publish("index-tts", "v3", {"again.pt": weights})
    File.objects.filter(path="again.pt").update(chunks_size=None)  # as if it had been uploaded before
    shared = services.build_chunk_manifest(outcome.sha256)
    assert (shared.state, shared.files, shared.size, shared.read) == ("shared", 1, outcome.size, 0)


@pytest.mark.django_db
def test_recording_a_manifest_purges_each_published_version_it_changes(local_store, publish, settings):
    weights = noise(8, 2 * MiB)
    publish("index-tts", "v1", {"model.pt": weights})
    publish("other-model", "v7", {"model.pt": weights})
    publish("index-tts", "v2", {"model.pt": weights}, draft=True)
    forget_manifests(local_store)
    OutboxEntry.objects.all().delete()  # what publishing recorded
    services.build_chunk_manifest(hashlib.sha256(weights).hexdigest())
    keys = set(OutboxEntry.objects.filter(kind="purge", state="pending").values_list("key", flat=True))
    assert {"version-index-tts-v1", "version-other-model-v7"} <= keys
    assert "version-index-tts-v2" not in keys  # a draft's responses were never shared


@pytest.mark.django_db
def test_small_files_and_repetitive_files_get_no_manifest(local_store, publish):
    publish("index-tts", "v1", {"small.bin": noise(9, MiB - 1), "repetitive.bin": noise(0, 20000) * 60})
    small, repetitive = File.objects.get(path="small.bin"), File.objects.get(path="repetitive.bin")
    assert (small.chunks_size, repetitive.chunks_size) == (None, 0)  # decided while uploading; 0: none kept
    File.objects.filter(pk=repetitive.pk).update(chunks_size=None)  # and decided the same by the backfill
    assert services.build_chunk_manifest(small.pk).state == "small"
    assert services.build_chunk_manifest(repetitive.pk).state == "too-large"
    small.refresh_from_db(), repetitive.refresh_from_db()
    assert (small.chunks_size, repetitive.chunks_size) == (None, 0)
    for file in (small, repetitive):
        assert local_store.stat(chunking.manifest_key(file.sha256)) is None
    assert services.backfill_chunk_manifests(10) == {}  # nothing left to do


@pytest.mark.django_db
def test_an_object_that_does_not_match_its_checksum_gets_no_manifest(local_store, publish):
    publish("index-tts", "v1", {"model.pt": noise(10, 2 * MiB)})
    forget_manifests(local_store)
    file = File.objects.get()
    with open(local_store._path(file.key), "r+b") as handle:
        handle.write(b"bitrot")
    with pytest.raises(services.ReleaseError, match="not the recorded 2,097,152 bytes and " + file.sha256):
        services.build_chunk_manifest(file.sha256)
    assert File.objects.get().chunks_size is None and local_store.stat(chunking.manifest_key(file.sha256)) is None
    with pytest.raises(services.ReleaseError, match="is not a SHA-256"):
        services.build_chunk_manifest("nope")
    with pytest.raises(services.ReleaseError, match="No file has the SHA-256"):
        services.build_chunk_manifest("0" * 64)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("step", ["chunking", "uploading"])
def test_no_transaction_is_open_while_a_manifest_is_computed_or_uploaded(local_store, publish, step, monkeypatch):
    from .test_services import in_thread, other_sessions

    publish("index-tts", "v1", {"model.pt": noise(11, 2 * MiB)})
    forget_manifests(local_store)  # as if published before manifests existed
    reached, go_on = threading.Event(), threading.Event()

    def caught_in_the_middle(real):
        def wrapper(*args, **kwargs):
            reached.set()
            assert go_on.wait(30), "the test never let it go on"
            return real(*args, **kwargs)

        return wrapper

    if step == "chunking":
        monkeypatch.setattr(chunking.ManifestBuilder, "finish", caught_in_the_middle(chunking.ManifestBuilder.finish))
    else:
        monkeypatch.setattr(type(local_store), "upload", caught_in_the_middle(type(local_store).upload))
    builder = in_thread(lambda: services.build_chunk_manifest(File.objects.get().sha256))
    try:
        assert reached.wait(10)
        sessions = other_sessions()
        assert sessions, "the building thread has a session of its own"
        assert all(state != "idle in transaction" for state, _, _ in sessions), sessions
    finally:
        go_on.set()
        builder.join(30)
    assert File.objects.get().chunks_size > 0


# --- serving ---------------------------------------------------------------------------------------


def fetch(client, url: str) -> bytes:
    """The body behind a signed link: the site's own file server, or S3 (moto) over HTTP."""
    if url.startswith("http://testserver/"):
        response = client.get(url)
        assert response.status_code == 200, response.content
        return b"".join(response.streaming_content)
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.mark.django_db
def test_the_api_gives_chunks_urls_whose_redirect_leads_to_the_manifest(
    any_store, client, publish, django_capture_on_commit_callbacks
):
    weights = noise(12, 3 * MiB)
    published(publish, django_capture_on_commit_callbacks, files={"model.pt": weights, "config.yaml": b"x: 1\n"})
    body = client.get("/api/v1/models/index-tts/versions/v1").json()
    files = {file["path"]: file for file in body["files"]}
    sha256 = hashlib.sha256(weights).hexdigest()
    assert files["model.pt"]["chunks_url"] == f"http://testserver/chunks/{sha256}"
    assert files["config.yaml"]["chunks_url"] is None
    assert {key for key in files["model.pt"] if key != "chunks_url"} == {
        "path", "size", "sha256", "url", "expires_at", "stable_url"
    }  # fmt: skip
    for method in (client.get, client.head):
        response = method(files["model.pt"]["chunks_url"])
        assert response.status_code == 302 and "no-store" in response["Cache-Control"]
        assert response["X-Artifact-Expires"].endswith("Z")
    raw = fetch(client, response["Location"])
    manifest = parse_manifest(raw)
    assert (manifest.file_sha256.hex(), manifest.file_size) == (sha256, len(weights))
    assert chunk_sha_of(weights, manifest) == [chunk.sha256 for chunk in manifest.chunks]


def chunk_sha_of(data: bytes, manifest) -> list[bytes]:
    return [hashlib.sha256(data[c.offset : c.offset + c.length]).digest() for c in manifest.chunks]


@pytest.mark.django_db
def test_the_file_server_serves_manifests_with_ranges_and_caches_only_published_ones(
    local_store, client, admin_client, publish
):
    publish("index-tts", "v1", {"model.pt": noise(13, 2 * MiB)})
    publish("index-tts", "v2", {"model.pt": noise(14, 2 * MiB)}, draft=True)
    published_sha, draft_sha = (File.objects.get(version__version=v).sha256 for v in ("v1", "v2"))
    for sha256 in (published_sha, draft_sha):
        services.build_chunk_manifest(sha256)
    link = client.get(f"/chunks/{published_sha}")["Location"]
    assert link.startswith(f"http://testserver/files/.chunks/{published_sha}?expires=")
    whole = client.get(link)
    assert "public" in whole["Cache-Control"] and "immutable" in whole["Cache-Control"]
    assert whole["Content-Disposition"] == f'attachment; filename="{published_sha}.chunks"'
    part = client.get(link, HTTP_RANGE="bytes=0-63")
    assert (
        part.status_code == 206 and b"".join(part.streaming_content) == stored_manifest(local_store, published_sha)[:64]
    )
    draft_link = admin_client.get(f"/chunks/{draft_sha}")["Location"]
    drafted = client.get(draft_link)  # the link is the permission, as for a draft's files
    assert (
        drafted.status_code == 200 and "no-store" in drafted["Cache-Control"] and "private" in drafted["Cache-Control"]
    )
    tampered = client.get(link.replace(published_sha, draft_sha, 1))
    assert tampered.status_code == 403


@pytest.mark.django_db
def test_who_gets_a_manifest(local_store, client, admin_client, publish):
    publish("index-tts", "v1", {"model.pt": noise(15, 2 * MiB)}, draft=True)
    draft_sha = File.objects.get().sha256
    services.build_chunk_manifest(draft_sha)
    response = client.get(f"/chunks/{draft_sha}")
    assert response.status_code == 404 and response["Content-Type"] == "text/plain; charset=utf-8"
    assert "no-store" in response["Cache-Control"]
    assert admin_client.get(f"/chunks/{draft_sha}").status_code == 302
    assert admin_client.get("/api/v1/models/index-tts/versions/v1").json()["files"][0]["chunks_url"].endswith(draft_sha)
    for malformed in ("xyz", draft_sha.upper(), draft_sha + "0", draft_sha[:-1], "0" * 64):
        assert client.get(f"/chunks/{malformed}").status_code == 404, malformed
        assert admin_client.get(f"/chunks/{malformed}").status_code == 404, malformed
    assert client.post(f"/chunks/{draft_sha}").status_code == 405

    version = services.publish_version(Version.objects.get())
    assert client.get(f"/chunks/{draft_sha}").status_code == 302
    link = client.get(f"/chunks/{draft_sha}")["Location"]
    services.withdraw_version(version)
    assert client.get(f"/chunks/{draft_sha}").status_code == 404
    assert client.get(link).status_code == 410  # a link handed out before: gone with its version


@pytest.mark.django_db
def test_the_chunks_url_costs_no_query_per_file(local_store, client, publish, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    publish("index-tts", "v1", {f"part-{n}.bin": noise(20 + n, MiB) for n in range(3)})
    forget_manifests(local_store)
    url = "/api/v1/models/index-tts/versions/v1"
    with CaptureQueriesContext(connection) as without:
        assert all(file["chunks_url"] is None for file in client.get(url).json()["files"])
    for file in File.objects.all():
        services.build_chunk_manifest(file.pk)
    with CaptureQueriesContext(connection) as with_manifests:
        assert all(file["chunks_url"] for file in client.get(url).json()["files"])
    assert len(with_manifests) == len(without)
    sha256 = File.objects.first().sha256
    with django_assert_max_num_queries(1):
        assert client.get(f"/chunks/{sha256}").status_code == 302


# --- backfilling: the command and the beat job --------------------------------------------------------


@pytest.mark.django_db
def test_the_command_backfills_published_files_one_line_each(any_store, publish, capsys):
    publish("index-tts", "v1", {"model.pt": noise(30, 2 * MiB), "config.yaml": b"a: 1\n"})
    publish("index-tts", "v2", {"model.pt": noise(31, 2 * MiB)})
    publish("other", "v1", {"model.pt": noise(32, 2 * MiB)})
    publish("index-tts", "v3", {"model.pt": noise(33, 2 * MiB)}, draft=True)
    forget_manifests(any_store)  # published before manifests were built on the way up

    call_command("build_chunk_manifests", "index-tts", "v1")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/2] index-tts v1 config.yaml: under 1,048,576 bytes: no manifest"
    assert lines[1].startswith("[2/2] index-tts v1 model.pt: manifest built: ")
    assert lines[2] == "Done: 2 files checked, 2,097,152 bytes read from storage."

    call_command("build_chunk_manifests")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "index-tts v1 model.pt: has a manifest already" in lines[1]
    assert lines[4] == "Done: 4 files checked, 4,194,304 bytes read from storage."
    assert "index-tts v2 model.pt: manifest built" in lines[2] and "other v1 model.pt: manifest built" in lines[3]
    built = File.objects.filter(chunks_size__gt=0)
    assert sorted(built.values_list("version__model__slug", "version__version")) == [
        ("index-tts", "v1"), ("index-tts", "v2"), ("other", "v1")
    ]  # fmt: skip
    for file in built:
        assert parse_manifest(stored_manifest(any_store, file.sha256)).file_sha256.hex() == file.sha256


@pytest.mark.django_db
def test_the_command_refuses_unknown_names_and_reports_failures(local_store, publish, capsys):
    publish("index-tts", "v1", {"a.pt": noise(34, 2 * MiB), "b.pt": noise(35, 2 * MiB)})
    publish("index-tts", "v2", {"a.pt": noise(36, 2 * MiB)}, draft=True)
    forget_manifests(local_store)
    for args, message in [
        (("nope",), "There is no model 'nope'."),
        (("index-tts", "v9"), "index-tts has no version 'v9'."),
        (("index-tts", "v2"), "index-tts v2 is draft; only published and yanked files get manifests."),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("build_chunk_manifests", *args)
    local_store.delete(File.objects.get(path="a.pt", version__version="v1").key)
    with pytest.raises(CommandError, match="1 of 2 files have no chunk manifest"):
        call_command("build_chunk_manifests")
    output = capsys.readouterr()
    assert "[1/2] index-tts v1 a.pt: FAILED: Could not build the chunk manifest of index-tts/v1/a.pt" in output.err
    assert "[2/2] index-tts v1 b.pt: manifest built" in output.out


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_non_zero_with_a_clear_line(local_store, manage):
    result = manage("build_chunk_manifests", "nope")
    assert result.returncode == 1 and result.stderr.strip() == "CommandError: There is no model 'nope'."


@pytest.mark.django_db
def test_the_beat_job_fills_a_batch_per_run_under_its_lock(any_store, publish, settings):
    for number in range(3):
        publish("index-tts", f"v{number}", {"model.pt": noise(40 + number, MiB + number)})
    publish("index-tts", "small", {"model.pt": b"tiny"})
    forget_manifests(any_store)
    settings.CHUNK_BACKFILL_BATCH_SIZE = 2
    with tasks.job_lock("backfill-chunk-manifests") as held:
        assert held and chunk_tasks.backfill_chunk_manifests.apply().get() == {"skipped": True}
    assert chunk_tasks.backfill_chunk_manifests.apply().get() == {"built": 2, "bytes_read": 2 * MiB + 3}
    newest = File.objects.filter(chunks_size__gt=0).values_list("version__version", flat=True)
    assert sorted(newest) == ["v1", "v2"]  # newest first
    assert chunk_tasks.backfill_chunk_manifests.apply().get() == {"built": 1, "bytes_read": MiB}
    assert chunk_tasks.backfill_chunk_manifests.apply().get() == {}
    for file in File.objects.filter(size__gte=MiB):
        assert any_store.stat(chunking.manifest_key(file.sha256)).size == file.chunks_size


@pytest.mark.django_db
def test_the_beat_job_skips_what_verify_found_missing_and_goes_on_after_a_failure(local_store, publish, caplog):
    publish("index-tts", "v1", {"gone.pt": noise(50, MiB), "flagged.pt": noise(51, MiB), "ok.pt": noise(52, MiB)})
    forget_manifests(local_store)
    File.objects.filter(path="flagged.pt").update(verification_status=File.Verification.MISSING)
    local_store.delete(File.objects.get(path="gone.pt").key)
    assert chunk_tasks.backfill_chunk_manifests.apply().get() == {"failed": 1, "built": 1, "bytes_read": MiB}
    assert "chunk manifest of" in caplog.text and "index-tts/v1/gone.pt" in caplog.text
    assert list(File.objects.filter(chunks_size__gt=0).values_list("path", flat=True)) == ["ok.pt"]


def test_the_beat_schedule_runs_the_backfill(settings):
    from site_config.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["backfill-chunk-manifests"]
    assert entry["task"] == "releases.chunk_tasks.backfill_chunk_manifests" and entry["task"] in app.tasks
    assert "releases.chunk_tasks" in settings.CELERY_IMPORTS


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_builds_the_manifest_of_a_published_file(local_store, publish, settings):
    import redis

    from site_config.celery import app

    from .servers import CeleryWorker, django_env, wait_until

    redis.Redis.from_url(settings.REDIS_URL).delete(settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_HEAVY_QUEUE)
    worker = CeleryWorker(django_env())
    app.conf.task_always_eager = False
    draft = publish("index-tts", "v1", {"model.pt": noise(60, 2 * MiB)}, draft=True)
    forget_manifests(local_store)
    try:
        services.publish_version(draft)  # its file lacks a manifest: one backfill run is queued
        wait_until(lambda: File.objects.get().chunks_size, 60, what="the worker to build the manifest")
        assert "releases.chunk_tasks.backfill_chunk_manifests" in worker.log()
    finally:
        app.conf.task_always_eager = True
        worker.stop()
    file = File.objects.get()
    assert parse_manifest(stored_manifest(local_store, file.sha256)).file_sha256.hex() == file.sha256


# --- uploads from the admin: one read of the joined object --------------------------------------


@pytest.fixture
def counted_moto(settings, moto_endpoint, s3_bucket, local_store):
    from . import storage_servers

    yield from storage_servers.counted_moto(settings, moto_endpoint, s3_bucket)


@pytest.fixture
def upload_page(admin_client, monkeypatch):
    from releases.services import browser_uploads

    from .factories import VersionFactory
    from .test_direct_upload import Page

    monkeypatch.setattr(browser_uploads, "PART_SIZE", 5 * MiB)
    return Page(admin_client, VersionFactory(model__slug="tts", version="v2"))


def uploaded(page, data: bytes) -> File:
    upload = page.start(data).json()
    page.send(upload, data)
    assert page.complete(upload, data).json()["state"] == "done"
    return File.objects.get()


@pytest.mark.django_db(transaction=True)
def test_an_admin_upload_to_s3_is_hashed_and_chunked_in_one_read_of_the_object(
    counted_moto, upload_page, s3_client, s3_bucket
):
    weights = noise(80, 12 * MiB + 7)
    counted_moto.reset()
    file = uploaded(upload_page, weights)
    seen = counted_moto.reset()
    assert seen.object_reads == [f"/{s3_bucket}/tts/v2/model.safetensors"] and seen.object_bytes_read == len(weights)
    key = chunking.manifest_key(file.sha256)
    raw = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert file.chunks_size == len(raw) and parse_manifest(raw).file_sha256.hex() == file.sha256
    assert chunk_sha_of(weights, parse_manifest(raw)) == [chunk.sha256 for chunk in parse_manifest(raw).chunks]


@pytest.mark.django_db(transaction=True)
def test_an_admin_upload_to_the_local_store_is_chunked_while_its_parts_are_joined(
    local_store, upload_page, monkeypatch
):
    from releases.storage.local import LocalStore

    from .storage_servers import StorageReads

    reads = StorageReads(monkeypatch, LocalStore)
    weights = noise(81, 12 * MiB + 7)
    file = uploaded(upload_page, weights)
    assert reads.keys == []  # the join read the parts; the object was never read back
    monkeypatch.undo()
    raw = stored_manifest(local_store, file.sha256)
    assert file.chunks_size == len(raw) and chunk_sha_of(weights, parse_manifest(raw)) == [
        chunk.sha256 for chunk in parse_manifest(raw).chunks
    ]


# --- manifests follow storage: deleted with the last file, rebuilt when missing -------------------


@pytest.mark.django_db
def test_deleting_a_draft_deletes_the_manifests_no_other_file_uses(local_store, publish):
    shared, own = noise(90, 2 * MiB), noise(91, 2 * MiB)
    publish("index-tts", "v1", {"model.pt": shared})
    draft = publish("index-tts", "v2", {"model.pt": shared, "extra.pt": own}, draft=True)
    shared_key, own_key = (chunking.manifest_key(hashlib.sha256(data).hexdigest()) for data in (shared, own))
    assert local_store.stat(own_key) and local_store.stat(shared_key)
    services.delete_draft(draft)
    assert local_store.stat(own_key) is None  # only the draft had those bytes
    assert local_store.stat(shared_key) is not None  # v1 still has these
    assert File.objects.get().chunks_size == local_store.stat(shared_key).size


@pytest.mark.django_db
def test_removing_a_draft_file_deletes_its_manifest_unless_shared(local_store, publish):
    weights = noise(92, 2 * MiB)
    draft = publish("index-tts", "v1", {"model.pt": weights, "copy.pt": weights}, draft=True)
    key = chunking.manifest_key(hashlib.sha256(weights).hexdigest())
    services.remove_file(draft.files.get(path="copy.pt"))
    assert local_store.stat(key) is not None
    services.remove_file(draft.files.get(path="model.pt"))
    assert local_store.stat(key) is None


@pytest.mark.django_db
def test_verification_notices_a_missing_manifest_and_it_is_rebuilt(
    any_store, publish, caplog, django_capture_on_commit_callbacks
):
    from releases import verification

    weights = noise(93, 3 * MiB)
    publish("index-tts", "v1", {"model.pt": weights})
    publish("other", "v1", {"model.pt": weights})
    file = File.objects.first()
    key = chunking.manifest_key(file.sha256)
    size = any_store.stat(key).size
    any_store.delete(key)  # lost from storage: clients would fall back to whole downloads
    with django_capture_on_commit_callbacks(execute=True):  # the beat job: it notices, and queues the rebuild
        report = tasks.verify_files.apply().get()
    assert report["failed"] == 0 and "missing from storage, queued to be rebuilt: " + file.sha256 in caplog.text
    assert any_store.stat(key).size == size and set(File.objects.values_list("chunks_size", flat=True)) == {size}
    assert "backfill-chunk-manifests: {'built': 1, 'bytes_read': 3145728}" in caplog.text
    assert verification.verify_batch().manifests_missing == []  # found again: nothing to do


@pytest.mark.django_db
def test_a_missing_manifest_waits_for_the_backfill_when_the_broker_is_down(local_store, publish, monkeypatch):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    publish("index-tts", "v1", {"model.pt": noise(94, 2 * MiB)})
    file = File.objects.get()
    local_store.delete(chunking.manifest_key(file.sha256))
    monkeypatch.setattr(chunk_tasks.backfill_chunk_manifests, "delay", broker_down)
    from releases import verification

    assert verification.verify_batch().manifests_missing == [file.sha256]
    file.refresh_from_db()
    assert file.chunks_size is None  # so /chunks/<sha256> answers 404, not a link to nothing; the backfill's to do
    assert services.backfill_chunk_manifests(10)["built"] == 1


@pytest.mark.django_db
def test_the_backfill_says_in_its_log_and_in_metrics_how_many_bytes_it_read(
    local_store, publish, caplog, client, settings
):
    import re

    def metric() -> int:
        text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token").content.decode()
        return int(float(re.search(r"^model_releases_chunk_backfill_read_bytes_total (\S+)$", text, re.M)[1]))

    settings.METRICS_TOKEN = "metrics-token"
    publish("index-tts", "v1", {"a.pt": noise(95, 2 * MiB), "b.pt": noise(96, MiB)})
    before = metric()
    forget_manifests(local_store)
    assert chunk_tasks.backfill_chunk_manifests.apply().get() == {"built": 2, "bytes_read": 3 * MiB}
    assert "backfill-chunk-manifests: {'built': 2, 'bytes_read': 3145728}" in caplog.text
    assert "2097152 bytes read back" in caplog.text and "1048576 bytes read back" in caplog.text
    assert metric() - before == 3 * MiB
