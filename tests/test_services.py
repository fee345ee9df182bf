"""Services: the only writers. Each refusal is one clear sentence and leaves nothing behind."""

import io
import threading

import pytest

from releases import services
from releases.models import File, MLModel, Version
from releases.services import LocalFile, ReleaseError
from releases.storage import StorageError

from .factories import FileFactory, VersionFactory, sha256
from .servers import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def draft():
    return services.create_version(services.get_or_create_model("index-tts"), "v1", notes="First.")


def test_create_version_validates_and_refuses_duplicates(draft):
    assert (draft.status, draft.model.slug, bytes.fromhex(draft.sort_key)) == ("draft", "index-tts", b"v011")
    with pytest.raises(ReleaseError, match="already has version v1"):
        services.create_version(draft.model, "V1")
    with pytest.raises(ReleaseError, match="reserved"):
        services.create_version(draft.model, "latest")
    with pytest.raises(ReleaseError, match="not a valid model name"):
        services.get_or_create_model("Bad Slug")
    assert Version.objects.count() == 1


def test_add_file_uploads_and_records_size_and_checksum(any_store, draft):
    data = b"weights" * 1000
    file = services.add_file(draft, "sub/model.pt", io.BytesIO(data))
    assert (file.key, file.size, file.sha256) == ("index-tts/v1/sub/model.pt", len(data), sha256(data))
    assert file.content_type == "application/octet-stream"
    assert any_store.stat(file.key).size == len(data)


@pytest.mark.parametrize(
    "path, message",
    [("../escape", "'..'"), ("/abs", "relative"), ("a\\b", "backslash"), ("a//b", "empty segment")],
)
def test_add_file_refuses_bad_paths_before_uploading(local_store, draft, path, message, tmp_path):
    with pytest.raises(ReleaseError, match=message):
        services.add_file(draft, path, io.BytesIO(b"x"))
    assert not (tmp_path / "objects").exists()


def test_add_file_refuses_a_second_file_at_the_same_path(draft):
    services.add_file(draft, "model.pt", io.BytesIO(b"one"))
    with pytest.raises(ReleaseError, match="already has a file model.pt"):
        services.add_file(draft, "model.pt", io.BytesIO(b"two"))
    assert File.objects.get().sha256 == sha256(b"one")


def test_files_can_only_be_added_to_drafts():
    version = VersionFactory(published=True)
    with pytest.raises(ReleaseError, match="files can only be added to a draft"):
        services.add_file(version, "late.bin", io.BytesIO(b"x"))


def test_register_object_reads_size_and_full_checksum_from_s3(s3_store, s3_client, s3_bucket, draft):
    data = b"x" * 4096
    s3_client.put_object(Bucket=s3_bucket, Key="index-tts/shared/vocoder.bin", Body=data, ChecksumAlgorithm="SHA256")
    file = services.register_object(draft, "vocoder.bin", "index-tts/shared/vocoder.bin")
    assert (file.size, file.sha256, file.managed_object) == (len(data), sha256(data), False)


def test_register_object_hashes_by_streaming_when_storage_has_no_checksum(any_store, draft):
    data = b"streamed" * 5000
    any_store.upload("index-tts/v1/config.yaml", io.BytesIO(data), content_type="text/yaml")
    file = services.register_object(draft, "config.yaml")
    assert (file.size, file.sha256, file.content_type) == (len(data), sha256(data), "application/yaml")


def test_register_object_refusals(draft):
    with pytest.raises(ReleaseError, match="no object index-tts/v1/missing.bin"):
        services.register_object(draft, "missing.bin")
    with pytest.raises(ReleaseError, match="must start with the model's prefix"):
        services.register_object(draft, "x.bin", "other-model/v1/x.bin")
    assert not File.objects.exists()


def test_publish_needs_files_present_in_storage_with_their_size(local_store, draft):
    with pytest.raises(ReleaseError, match="has no files"):
        services.publish_version(draft)
    file = services.add_file(draft, "model.pt", io.BytesIO(b"12345"))
    local_store.delete(file.key)
    with pytest.raises(ReleaseError, match="missing from storage"):
        services.publish_version(draft)
    local_store.upload(file.key, io.BytesIO(b"1234"), content_type="application/octet-stream")
    with pytest.raises(ReleaseError, match="has 4 bytes in storage, expected 5"):
        services.publish_version(draft)
    assert Version.objects.get(pk=draft.pk).status == "draft"
    local_store.upload(file.key, io.BytesIO(b"12345"), content_type="application/octet-stream")
    published = services.publish_version(draft)
    assert published.status == "published" and published.published_at is not None


def test_yank_needs_a_reason_and_a_published_version(draft):
    services.add_file(draft, "model.pt", io.BytesIO(b"x"))
    with pytest.raises(ReleaseError, match="draft and cannot become yanked"):
        services.yank_version(draft, "bad weights")
    services.publish_version(draft)
    with pytest.raises(ReleaseError, match="needs a reason"):
        services.yank_version(draft, "   ")
    yanked = services.yank_version(draft, "bad weights")
    assert (yanked.status, yanked.yanked_reason) == ("yanked", "bad weights")
    restored = services.publish_version(yanked)
    assert (restored.status, restored.yanked_reason) == ("published", "")


def test_withdrawn_is_final():
    version = VersionFactory(status=Version.Status.YANKED, yanked_reason="x")
    assert services.withdraw_version(version).status == "withdrawn"
    for change in (services.publish_version, services.withdraw_version, lambda v: services.yank_version(v, "r")):
        with pytest.raises(ReleaseError, match="is withdrawn and cannot become"):
            change(version)


def test_delete_draft_removes_rows_and_uploaded_objects_only(any_store, draft):
    uploaded = services.add_file(draft, "model.pt", io.BytesIO(b"mine"))
    any_store.upload("index-tts/shared/foreign.bin", io.BytesIO(b"theirs"), content_type="application/octet-stream")
    services.register_object(draft, "foreign.bin", "index-tts/shared/foreign.bin")
    services.delete_draft(draft)
    assert not Version.objects.exists() and not File.objects.exists()
    assert any_store.stat(uploaded.key) is None
    assert any_store.stat("index-tts/shared/foreign.bin").size == 6  # registered, not ours to delete
    with pytest.raises(ReleaseError, match="only drafts can be deleted"):
        services.delete_draft(VersionFactory(published=True))


def test_remove_file_only_from_drafts(local_store, draft):
    file = services.add_file(draft, "model.pt", io.BytesIO(b"x"))
    services.remove_file(file)
    assert local_store.stat(file.key) is None
    published = FileFactory(version=VersionFactory(published=True))
    with pytest.raises(ReleaseError, match="cannot be removed"):
        services.remove_file(published)


def test_metadata_edits(draft):
    model = draft.model
    model.name = "IndexTTS"
    services.save_model_details(model)
    assert MLModel.objects.get().name == "IndexTTS"
    services.update_version_details(draft, notes="New notes", prerelease=True)
    services.add_file(draft, "m.pt", io.BytesIO(b"x"))
    services.publish_version(draft)
    services.update_version_details(draft, notes="Typo fixed", prerelease=True)
    assert Version.objects.get().notes == "Typo fixed"
    with pytest.raises(ReleaseError, match="prerelease flag is fixed"):
        services.update_version_details(draft, notes="x", prerelease=False)
    model.slug = "renamed"
    with pytest.raises(ReleaseError, match="cannot change"):
        services.save_model_details(model)


# --- release_local_files ----------------------------------------------------


@pytest.fixture
def sources(write_file):
    return [
        LocalFile("model.pt", write_file("d/model.pt", b"weights" * 100)),
        LocalFile("sub/config.yaml", write_file("d/sub/config.yaml", b"a: 1\n")),
    ]


def test_release_local_files_publishes_and_is_idempotent(any_store, sources):
    outcome = services.release_local_files("index-tts", "v1", sources, notes="Hi")
    assert outcome.version.status == "published" and sorted(outcome.uploaded) == ["model.pt", "sub/config.yaml"]
    again = services.release_local_files("index-tts", "v1", sources)
    assert again.unchanged and again.version.pk == outcome.version.pk
    assert File.objects.count() == 2


def test_release_local_files_refuses_other_content_for_a_published_version(any_store, sources, write_file):
    services.release_local_files("index-tts", "v1", sources)
    changed = [sources[0], LocalFile("sub/config.yaml", write_file("e/config.yaml", b"a: 2\n"))]
    with pytest.raises(ReleaseError, match="already published with other files .first difference: sub/config.yaml"):
        services.release_local_files("index-tts", "v1", changed)
    with pytest.raises(ReleaseError, match="already published with other files"):
        services.release_local_files("index-tts", "v1", sources[:1])
    assert File.objects.count() == 2


def test_release_local_files_completes_an_existing_draft(any_store, sources):
    services.release_local_files("index-tts", "v1", sources[:1], draft=True)
    outcome = services.release_local_files("index-tts", "v1", sources)
    assert (outcome.kept, outcome.uploaded, outcome.version.status) == (["model.pt"], ["sub/config.yaml"], "published")


def test_a_failed_upload_leaves_nothing_behind(any_store, sources, monkeypatch):
    real_upload, calls = type(any_store).upload, []

    def failing_second_upload(self, key, *args, **kwargs):
        calls.append(key)
        if len(calls) == 2:
            raise StorageError(f"Could not upload object {key!r}: connection reset.")
        return real_upload(self, key, *args, **kwargs)

    monkeypatch.setattr(type(any_store), "upload", failing_second_upload)
    with pytest.raises(ReleaseError, match="connection reset"):
        services.release_local_files("index-tts", "v1", sources)
    assert not MLModel.objects.exists() and not Version.objects.exists() and not File.objects.exists()
    assert any_store.stat(calls[0]) is None  # the first, finished upload was removed again


def test_a_refused_publish_leaves_nothing_behind(any_store, sources, monkeypatch):
    store, uploads = type(any_store), []
    real_upload, real_stat = store.upload, store.stat

    def upload(self, key, *args, **kwargs):
        stored = real_upload(self, key, *args, **kwargs)
        uploads.append(key)
        return stored

    def stat(self, key):  # once every file is uploaded, storage has lost them: publishing refuses
        return None if len(uploads) == len(sources) else real_stat(self, key)

    monkeypatch.setattr(store, "upload", upload)
    monkeypatch.setattr(store, "stat", stat)
    with pytest.raises(ReleaseError, match="is missing from storage"):
        services.release_local_files("index-tts", "v1", sources)
    assert not MLModel.objects.exists() and not File.objects.exists()
    assert [key for key in uploads if real_stat(any_store, key) is not None] == []  # really gone from storage


@pytest.mark.parametrize(
    "model, version, files, message",
    [
        ("Bad", "v1", ["good"], "not a valid model name"),
        ("m", "v 1", ["good"], "not a valid version"),
        ("m", "v1", [], "at least one file"),
        ("m", "v1", ["missing"], "no such file"),
        ("m", "v1", ["good", "same path"], "would both be published"),
        ("m", "v1", ["climbing"], "'..'"),
    ],
)
def test_release_local_files_input_checks(write_file, tmp_path, model, version, files, message):
    good = write_file("model.pt", b"x")
    kinds = {
        "good": LocalFile("model.pt", good),
        "missing": LocalFile("gone.pt", tmp_path / "gone.pt"),
        "same path": LocalFile("model.pt", write_file("other/model.pt", b"y")),
        "climbing": LocalFile("../model.pt", good),
    }
    with pytest.raises(ReleaseError, match=message):
        services.release_local_files(model, version, [kinds[kind] for kind in files])
    assert not MLModel.objects.exists()


def test_a_refusal_never_deletes_an_object_owned_by_another_file(any_store, write_file):
    any_store.upload("m/v1/model.pt", io.BytesIO(b"registered"), content_type="application/octet-stream")
    v2 = services.create_version(services.get_or_create_model("m"), "v2")
    services.register_object(v2, "model.pt", "m/v1/model.pt")  # v2 owns the object at v1's default key
    with pytest.raises(ReleaseError, match="already belongs to another file"):
        services.release_local_files("m", "v1", [LocalFile("model.pt", write_file("model.pt", b"new"))])
    assert any_store.stat("m/v1/model.pt").size == len(b"registered")
    assert not Version.objects.filter(version="v1").exists()


def test_completing_a_draft_applies_notes_and_prerelease_and_names_every_file(sources):
    services.release_local_files("index-tts", "v1", sources, draft=True)
    with pytest.raises(ReleaseError, match="also has sub/config.yaml; name every file"):
        services.release_local_files("index-tts", "v1", sources[:1])
    outcome = services.release_local_files("index-tts", "v1", sources, notes="Notes", prerelease=True)
    assert (outcome.version.notes, outcome.version.prerelease, outcome.version.status) == ("Notes", True, "published")


class BlockingSource(io.BytesIO):
    """A file whose first read waits until the test lets it go on: an upload caught in the middle."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reading, self.go_on = threading.Event(), threading.Event()

    def read(self, size=-1):
        self.reading.set()
        assert self.go_on.wait(30), "the test never let the upload go on"
        return super().read(size)


def in_thread(work) -> threading.Thread:
    """Run `work` on its own thread, with its own database connection (closed at the end)."""
    from django.db import connection

    def run():
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def other_sessions() -> list[tuple[str, str, str]]:
    """(state, wait_event_type, wait_event) of the other sessions on this test database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT state, coalesce(wait_event_type, ''), coalesce(wait_event, '') FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["add_file", "release_local_files"])
def test_no_transaction_is_open_while_a_file_uploads(local_store, tmp_path, how, monkeypatch):
    source = BlockingSource(b"")  # stands for the upload: the store reads it first
    real_upload = type(local_store).upload

    def upload_caught_in_the_middle(self, key, fileobj, **kwargs):
        source.read()
        return real_upload(self, key, fileobj, **kwargs)

    monkeypatch.setattr(type(local_store), "upload", upload_caught_in_the_middle)
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    if how == "add_file":
        draft = services.create_version(services.get_or_create_model("m"), "v1")
        work = lambda: services.add_file(draft, "model.pt", io.BytesIO(b"weights"))  # noqa: E731
    else:
        work = lambda: services.release_local_files("m", "v1", [LocalFile("model.pt", path)], draft=True)  # noqa: E731
    uploader = in_thread(work)
    try:
        assert source.reading.wait(10)
        sessions = other_sessions()
        assert sessions, "the uploading thread has a session of its own"
        assert all(state != "idle in transaction" for state, _, _ in sessions), sessions
    finally:
        source.go_on.set()
        uploader.join(30)
    assert File.objects.get().path == "model.pt"


@pytest.mark.django_db(transaction=True)
def test_publishing_waits_for_a_file_being_added(local_store):
    draft = services.create_version(services.get_or_create_model("m"), "v1")
    services.add_file(draft, "a.bin", io.BytesIO(b"a"))
    source = BlockingSource(b"late")
    adder = in_thread(lambda: services.add_file(draft, "late.bin", source))
    assert source.reading.wait(10)
    publisher = in_thread(lambda: services.publish_version(draft))
    try:  # PostgreSQL shows the publisher waiting for the version's lock, which the upload holds
        wait_until(lambda: ("active", "Lock", "advisory") in other_sessions(), 10, what="the publisher to wait")
        assert Version.objects.get().status == "draft"
    finally:
        source.go_on.set()
        adder.join(30)
        publisher.join(30)
    version = Version.objects.get()
    assert version.status == "published"
    assert sorted(version.files.values_list("path", flat=True)) == ["a.bin", "late.bin"]


def test_text_from_a_textarea_is_stored_with_plain_newlines(db):
    model = services.get_or_create_model("crlf-model")
    version = services.create_version(model, "v1", notes="# Notes\r\n\r\n* one\r\n* two\r")
    assert version.notes == "# Notes\n\n* one\n* two\n"
    services.update_version_details(version, notes="a\r\nb", prerelease=False)
    assert Version.objects.get(pk=version.pk).notes == "a\nb"
    model.description = "Line one\r\nLine two"
    services.save_model_details(model)
    assert MLModel.objects.get(pk=model.pk).description == "Line one\nLine two"
