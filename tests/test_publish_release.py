"""publish_release, in-process on both backends and as a real subprocess for exit codes and stderr."""

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from releases.models import File, MLModel, Version

from .data import S3_TEST_CREDENTIALS
from .factories import sha256


@pytest.fixture
def release_dir(write_file):
    write_file("d/model.pt", b"weights" * 1000)
    write_file("d/sub/c.yaml", b"a: 1\n")
    return write_file("d/model.pt", b"weights" * 1000).parent


def publish(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("publish_release", *map(str, args), stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_publishes_with_paths_relative_to_the_deepest_common_directory(any_store, release_dir):
    output = publish("index-tts", "v1", release_dir / "model.pt", release_dir / "sub" / "c.yaml")
    assert "index-tts v1 published: 2 uploaded" in output
    version = Version.objects.get()
    assert version.status == "published"
    assert {f.path: f.sha256 for f in version.files.all()} == {
        "model.pt": sha256(b"weights" * 1000),
        "sub/c.yaml": sha256(b"a: 1\n"),
    }
    for file in version.files.all():
        assert any_store.stat(file.key).size == file.size
    again = publish("index-tts", "v1", release_dir / "model.pt", release_dir / "sub" / "c.yaml")
    assert "already published with these 2 files; nothing to do" in again


@pytest.mark.django_db
def test_root_notes_prerelease_and_draft(release_dir, write_file):
    notes = write_file("notes.md", "# Changes\n\n* faster vocoder ✓\n".encode())
    publish(
        "index-tts",
        "2.0.0rc1",
        release_dir / "model.pt",
        "--root",
        release_dir.parent,
        "--notes",
        notes,
        "--prerelease",
        "--draft",
    )
    version = Version.objects.get()
    assert (version.status, version.prerelease, version.notes) == ("draft", True, "# Changes\n\n* faster vocoder ✓\n")
    assert list(version.files.values_list("path", flat=True)) == ["d/model.pt"]


@pytest.mark.django_db
def test_a_single_file_is_published_under_its_own_name(release_dir):
    publish("index-tts", "v1", release_dir / "sub" / "c.yaml")
    assert File.objects.get().path == "c.yaml"


@pytest.mark.django_db
def test_refusals_raise_command_error_in_process(release_dir):
    with pytest.raises(CommandError, match="not inside --root"):
        publish("m", "v1", release_dir / "model.pt", "--root", release_dir / "sub")
    with pytest.raises(CommandError, match="--root .*no such directory"):
        publish("m", "v1", release_dir / "model.pt", "--root", release_dir / "nope")
    assert not MLModel.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "args, message",
    [
        (["Index TTS", "v1", "{d}/model.pt"], "is not a valid model name"),
        (["index-tts", "v 1", "{d}/model.pt"], "is not a valid version"),
        (["index-tts", "latest", "{d}/model.pt"], "'latest' is reserved"),
        (["index-tts", "v1", "{d}/missing.pt"], "missing.pt: no such file"),
        (["index-tts", "v1", "{d}/model.pt", "--notes", "{d}/nonotes.md"], "--notes"),
        (["index-tts", "v1", "{d}/model.pt", "--root", "{d}/sub"], "is not inside --root"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(manage, release_dir, tmp_path, args, message):
    result = manage("publish_release", *[arg.format(d=release_dir) for arg in args])
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not MLModel.objects.exists() and not Version.objects.exists()
    assert not (tmp_path / "objects").exists()


@pytest.mark.django_db(transaction=True)
def test_republishing_other_files_is_refused_and_changes_nothing(manage, release_dir, write_file):
    first = manage("publish_release", "index-tts", "v1", str(release_dir / "model.pt"))
    assert first.returncode == 0, first.stderr
    assert "index-tts v1 published" in first.stdout
    write_file("d/model.pt", b"retrained")
    second = manage("publish_release", "index-tts", "v1", str(release_dir / "model.pt"))
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        "CommandError: index-tts v1 is already published with other files (first difference: model.pt); "
        "publish a new version instead."
    ]
    assert File.objects.get().sha256 == sha256(b"weights" * 1000)
    same = manage("publish_release", "index-tts", "v1", str(release_dir / "model.pt"), "--root", str(release_dir))
    assert same.returncode == 1  # still other content


@pytest.mark.django_db(transaction=True)
def test_s3_backend_configured_from_the_environment(manage, release_dir, moto_endpoint, s3_client, s3_bucket):
    env = {
        "STORAGE_BACKEND": "s3",
        "AWS_STORAGE_BUCKET_NAME": s3_bucket,
        "AWS_S3_ENDPOINT_URL": moto_endpoint,
        "AWS_S3_REGION_NAME": "us-east-1",
        "AWS_ACCESS_KEY_ID": S3_TEST_CREDENTIALS["access_key"],
        "AWS_SECRET_ACCESS_KEY": S3_TEST_CREDENTIALS["secret_key"],
    }
    result = manage(
        "publish_release", "index-tts", "v1", str(release_dir / "model.pt"), str(release_dir / "sub/c.yaml"), env=env
    )
    assert result.returncode == 0, result.stderr
    body = s3_client.get_object(Bucket=s3_bucket, Key="index-tts/v1/sub/c.yaml")["Body"].read()
    assert body == b"a: 1\n"
    assert File.objects.get(path="model.pt").sha256 == sha256(b"weights" * 1000)
    again = manage(
        "publish_release", "index-tts", "v1", str(release_dir / "model.pt"), str(release_dir / "sub/c.yaml"), env=env
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.django_db
def test_a_symlink_out_of_the_root_is_refused_and_nothing_is_written(release_dir, tmp_path, local_store):
    secret = tmp_path / "elsewhere" / "secret_key"
    secret.parent.mkdir()
    secret.write_bytes(b"do not publish me")
    (release_dir / "key.bin").symlink_to(secret)
    with pytest.raises(CommandError, match=r"key.bin is a symbolic link to .*secret_key, outside --root"):
        publish("index-tts", "v1", release_dir / "model.pt", release_dir / "key.bin")
    (release_dir / "sub-link").symlink_to(secret.parent, target_is_directory=True)  # a folder on the way
    with pytest.raises(CommandError, match="outside --root"):
        publish("index-tts", "v1", "--root", release_dir, release_dir / "sub-link" / "secret_key")
    assert not Version.objects.exists() and not MLModel.objects.exists()
    assert not [path for path in Path(local_store.storage.location).rglob("*") if path.is_file()]


@pytest.mark.django_db
def test_a_symlink_inside_the_root_is_published_under_its_own_name(release_dir):
    (release_dir / "alias.pt").symlink_to(release_dir / "model.pt")
    publish("index-tts", "v1", release_dir / "model.pt", release_dir / "alias.pt")
    files = {f.path: f.sha256 for f in File.objects.all()}
    assert files["alias.pt"] == files["model.pt"] == sha256(b"weights" * 1000)


@pytest.mark.django_db
def test_paths_equal_after_unicode_normalisation_are_one_path(write_file, local_store):
    nfc, nfd = write_file("d/caf\u00e9.bin", b"one"), write_file("d/cafe\u0301.bin", b"two")
    with pytest.raises(CommandError, match="the same name once Unicode is normalised"):
        publish("index-tts", "v1", nfc, nfd)
    assert not Version.objects.exists()
    publish("index-tts", "v1", nfd)
    assert File.objects.get().path == "caf\u00e9.bin"  # stored in NFC


# --- chunk manifests: built from the bytes sent, nothing read back ----------------------------------


@pytest.fixture
def counted_moto(settings, moto_endpoint, s3_bucket, local_store):
    from . import storage_servers

    yield from storage_servers.counted_moto(settings, moto_endpoint, s3_bucket)


@pytest.fixture
def weights_dir(write_file):
    """One file sent in parts (13 MiB, 5 MiB parts), one in one PUT (2 MiB), one too small for a manifest."""
    import random

    write_file("w/model.pt", random.Random(1).randbytes(13 * 1024 * 1024 + 5))
    write_file("w/vocoder.bin", random.Random(2).randbytes(2 * 1024 * 1024))
    return write_file("w/config.yaml", b"rate: 24000\n").parent


def check_manifests_recorded(weights_dir: Path, stored_manifest) -> None:
    from releases.chunking import build_manifest

    files = {file.path: file for file in File.objects.all()}
    assert files["config.yaml"].chunks_size is None  # under 1 MiB: none
    for path in ("model.pt", "vocoder.bin"):
        expected = build_manifest(weights_dir / path)  # what the backfill would build from the whole file
        assert files[path].chunks_size == len(expected)
        assert stored_manifest(files[path].sha256) == expected


@pytest.mark.django_db(transaction=True)
def test_publishing_to_s3_records_the_manifests_with_the_files_and_reads_nothing_back(
    counted_moto, weights_dir, s3_client, s3_bucket
):
    from releases.chunking import manifest_key

    publish("tts", "v1", *sorted(weights_dir.iterdir()))  # the embedded default: tasks run in-process
    seen = counted_moto.reset()  # every request of the publish, counted at the proxy in front of moto
    assert Version.objects.get().status == "published"
    assert (seen.object_reads, seen.object_bytes_read) == ([], 0)
    assert seen.requests["PutPart"] == 3 and seen.requests["PutObject"] == 4  # 2 files, 2 manifests

    def stored(sha):
        return s3_client.get_object(Bucket=s3_bucket, Key=manifest_key(sha))["Body"].read()

    check_manifests_recorded(weights_dir, stored)


@pytest.mark.django_db(transaction=True)
def test_publishing_locally_records_the_manifests_and_reads_no_object(local_store, weights_dir, monkeypatch):
    from releases.chunking import manifest_key
    from releases.storage.local import LocalStore

    from .storage_servers import StorageReads

    reads = StorageReads(monkeypatch, LocalStore)
    publish("tts", "v1", *sorted(weights_dir.iterdir()))
    assert Version.objects.get().status == "published" and reads.keys == []
    monkeypatch.undo()
    check_manifests_recorded(weights_dir, lambda sha: b"".join(local_store.iter_bytes(manifest_key(sha))))


@pytest.mark.django_db(transaction=True)
def test_the_same_bytes_published_again_share_their_manifest(counted_moto, weights_dir):
    publish("tts", "v1", weights_dir / "vocoder.bin")
    counted_moto.reset()
    publish("other", "v1", weights_dir / "vocoder.bin")
    seen = counted_moto.reset()
    assert seen.requests["PutObject"] == 1 and seen.object_bytes_read == 0  # the file; its manifest is shared
    assert len(set(File.objects.values_list("chunks_size", flat=True))) == 1


@pytest.mark.django_db(transaction=True)
def test_a_refused_publish_leaves_no_manifest_behind(local_store, weights_dir, monkeypatch):
    from releases.chunking import manifest_key
    from releases.services import versions

    def refused(version):
        raise versions.ReleaseError("refused for the test")

    monkeypatch.setattr("releases.services.local_release.publish_version", refused)
    with pytest.raises(CommandError, match="refused for the test"):
        publish("tts", "v1", weights_dir / "model.pt", weights_dir / "vocoder.bin")
    assert not File.objects.exists() and not Version.objects.exists()
    for path in ("model.pt", "vocoder.bin"):
        assert local_store.stat(manifest_key(sha256((weights_dir / path).read_bytes()))) is None
