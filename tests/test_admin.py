"""The admin as a maintainer uses it: real forms, posted back the way a browser would."""

import hashlib
import io
from html.parser import HTMLParser

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from releases import services
from releases.models import File, MLModel, Version

from .factories import FileFactory, VersionFactory

pytestmark = pytest.mark.django_db


class FormFields(HTMLParser):
    """The values a browser would submit for the page's main form (admin pages have one)."""

    def __init__(self):
        super().__init__()
        self.data, self._select, self._textarea = {}, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in {"submit", "button", "file", "checkbox"}:
            self.data[name] = attrs.get("value", "")
        elif tag == "input" and name and attrs.get("type") == "checkbox" and "checked" in attrs:
            self.data[name] = attrs.get("value", "on")
        elif tag == "select" and name:
            self._select = name
            self.data.setdefault(name, "")
        elif tag == "option" and self._select and "selected" in attrs:
            self.data[self._select] = attrs.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea] += data.lstrip("\n")


def form_data(response, **overrides):
    parser = FormFields()
    parser.feed(response.content.decode())
    parser.data.pop("_selected_action", None)
    return {**parser.data, **overrides}


def version_url(version, page="change"):
    return reverse(f"admin:releases_version_{page}", args=[version.pk])


def messages_of(response):
    return [str(message) for message in response.context["messages"]]


def test_maintainer_journey_create_upload_publish_yank_withdraw(admin_client, local_store):
    response = admin_client.get(reverse("admin:releases_mlmodel_add"))
    response = admin_client.post(
        reverse("admin:releases_mlmodel_add"), form_data(response, slug="index-tts", name="IndexTTS")
    )
    assert response.status_code == 302, response.content
    model = MLModel.objects.get(slug="index-tts")

    response = admin_client.get(reverse("admin:releases_version_add"))
    data = form_data(response, model=str(model.pk), version="v23", notes="Better prosody.")
    response = admin_client.post(reverse("admin:releases_version_add"), data)
    assert response.status_code == 302, response.content
    version = Version.objects.get(version="v23")
    assert version.status == "draft"

    weights = b"\x00weights" * 4096
    page = admin_client.get(version_url(version))
    data = form_data(page, **{"files-0-path": "checkpoints/model.pt"})
    data["files-0-upload"] = SimpleUploadedFile("model.pt", weights)
    response = admin_client.post(version_url(version), data, follow=True)
    assert response.status_code == 200
    file = File.objects.get(version=version)
    assert (file.path, file.size, file.sha256) == (
        "checkpoints/model.pt",
        len(weights),
        hashlib.sha256(weights).hexdigest(),
    )
    assert local_store.stat(file.key).size == len(weights)

    transition = reverse("admin:releases_version_transition", args=[version.pk, "publish"])
    confirm = admin_client.get(transition)
    assert b"Yes, publish" in confirm.content and b"v23" in confirm.content
    response = admin_client.post(transition, {"confirm": "yes"}, follow=True)
    assert Version.objects.get(pk=version.pk).status == "published"
    assert any("Publish: index-tts v23" in m for m in messages_of(response))

    changelist = reverse("admin:releases_version_changelist")
    action = {"action": "yank_selected", "_selected_action": [version.pk]}
    confirm = admin_client.post(changelist, action)
    assert b'name="reason"' in confirm.content
    missing_reason = admin_client.post(changelist, {**action, "confirm": "yes", "reason": ""})
    assert b"This field is required" in missing_reason.content
    assert Version.objects.get(pk=version.pk).status == "published"
    admin_client.post(changelist, {**action, "confirm": "yes", "reason": "Corrupt vocoder; use v24."})
    version.refresh_from_db()
    assert (version.status, version.yanked_reason) == ("yanked", "Corrupt vocoder; use v24.")

    withdraw = {"action": "withdraw_selected", "_selected_action": [version.pk], "confirm": "yes"}
    assert b"This field is required" in admin_client.post(changelist, {**withdraw, "reason": ""}).content
    assert Version.objects.get(pk=version.pk).status == "yanked"  # withdrawing asks why
    admin_client.post(changelist, {**withdraw, "reason": "Trained on data we may not share."})
    version.refresh_from_db()
    assert (version.status, version.yanked_reason) == ("withdrawn", "Trained on data we may not share.")
    gone = admin_client.get(f"/models/{version.model.slug}/{version.version}/", HTTP_ACCEPT="text/html")
    assert gone.status_code == 410 and b"Trained on data we may not share." in gone.content


def test_published_versions_are_read_only(admin_client):
    file = FileFactory(version=VersionFactory(published=True, version="v1"))
    version = file.version
    page = admin_client.get(version_url(version))
    assert b'name="files-0-upload"' not in page.content
    assert b'name="version"' not in page.content  # shown, not editable
    assert file.sha256.encode() in page.content
    data = form_data(page, version="v999", notes="Typo fixed.")
    admin_client.post(version_url(version), data)
    version.refresh_from_db()
    assert (version.version, version.notes) == ("v1", "Typo fixed.")
    assert admin_client.get(version_url(version, "delete")).status_code == 403


def test_publish_refusal_is_shown_and_changes_nothing(admin_client):
    version = VersionFactory()
    response = admin_client.post(
        reverse("admin:releases_version_transition", args=[version.pk, "publish"]), {"confirm": "yes"}, follow=True
    )
    assert any("has no files" in m for m in messages_of(response))
    assert Version.objects.get(pk=version.pk).status == "draft"


def test_register_an_existing_object_through_the_inline(admin_client, local_store):
    version = VersionFactory(version="v2")
    key = f"{version.model.slug}/shared/vocoder.bin"
    local_store.upload(key, io.BytesIO(b"vocoder"), content_type="application/octet-stream")
    page = admin_client.get(version_url(version))
    admin_client.post(version_url(version), form_data(page, **{"files-0-existing_key": key}))
    file = File.objects.get()
    assert (file.path, file.key, file.sha256) == ("vocoder.bin", key, hashlib.sha256(b"vocoder").hexdigest())


def test_an_empty_file_is_added_through_the_inline(admin_client, local_store):
    version = VersionFactory()
    data = form_data(admin_client.get(version_url(version)), **{"files-0-path": "sub/.gitkeep"})
    data["files-0-upload"] = SimpleUploadedFile(".gitkeep", b"")
    response = admin_client.post(version_url(version), data, follow=True)
    assert any("changed successfully" in message for message in messages_of(response)), response.content.decode()
    file = File.objects.get()
    assert (file.path, file.size, file.sha256) == ("sub/.gitkeep", 0, hashlib.sha256(b"").hexdigest())
    assert local_store.stat(file.key).size == 0


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"files-0-path": "../escape.bin", "upload": True}, "must not contain"),
        ({"files-0-path": "x.bin"}, "Choose a file to upload or give an existing object key"),
        ({"files-0-existing_key": "elsewhere/x.bin", "upload": True}, "not both"),
    ],
)
def test_bad_inline_input_is_refused_with_a_form_error(admin_client, tmp_path, fields, error):
    version = VersionFactory()
    page = admin_client.get(version_url(version))
    data = form_data(page, **{k: v for k, v in fields.items() if k != "upload"})
    if fields.get("upload"):
        data["files-0-upload"] = SimpleUploadedFile("x.bin", b"x")
    response = admin_client.post(version_url(version), data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not File.objects.exists() and not (tmp_path / "objects").exists()


def test_a_duplicate_path_is_one_clear_error_and_nothing_is_saved(admin_client):
    version = VersionFactory()
    FileFactory(version=version, path="model.pt")
    page = admin_client.get(version_url(version))
    data = form_data(page, notes="Edited notes.", **{"files-1-path": "model.pt"})
    data["files-1-upload"] = SimpleUploadedFile("model.pt", b"other")
    response = admin_client.post(version_url(version), data, follow=True)
    html = response.content.decode()
    assert response.status_code == 200 and "Two files cannot share the path &#x27;model.pt&#x27;" in html
    assert "changed successfully" not in html and not messages_of(response)
    assert File.objects.count() == 1 and Version.objects.get(pk=version.pk).notes != "Edited notes."


def test_two_new_rows_for_one_path_are_refused_together(admin_client):
    version = VersionFactory()
    page = admin_client.get(version_url(version))
    data = form_data(page, **{"files-0-path": "a.bin", "files-TOTAL_FORMS": "2", "files-1-path": "a.bin"})
    data["files-0-upload"] = SimpleUploadedFile("a.bin", b"one")
    data["files-1-upload"] = SimpleUploadedFile("a.bin", b"two")
    response = admin_client.post(version_url(version), data)
    assert response.status_code == 200 and "another new row has it" in response.content.decode()
    assert not File.objects.exists()


def test_the_version_page_offers_view_on_site_and_one_delete(admin_client):
    version = VersionFactory(version="v3")
    html = admin_client.get(version_url(version)).content.decode()
    assert f'href="/models/{version.model.slug}/v3/"' in html and "View on site" in html
    assert "Delete draft" not in html and html.count("deletelink") == 1


def test_delete_draft_action_removes_its_uploaded_objects(admin_client, local_store):
    version = VersionFactory()
    file = services.add_file(version, "model.pt", io.BytesIO(b"draft bytes"))
    published = VersionFactory(published=True)
    changelist = reverse("admin:releases_version_changelist")
    admin_client.post(
        changelist,
        {"action": "delete_selected_drafts", "_selected_action": [version.pk, published.pk], "confirm": "yes"},
    )
    assert list(Version.objects.all()) == [published]
    assert local_store.stat(file.key) is None


def test_lists_search_and_filters(admin_client):
    FileFactory(version=VersionFactory(version="v7", published=True), verification_status=File.Verification.MISSING)
    FileFactory(version=VersionFactory(version="v8"))
    versions = admin_client.get(reverse("admin:releases_version_changelist"), {"status__exact": "published"})
    assert b"v7" in versions.content and b">v8<" not in versions.content
    assert b"v8" in admin_client.get(reverse("admin:releases_version_changelist"), {"q": "v8"}).content
    files = admin_client.get(reverse("admin:releases_file_changelist"), {"verification_status__exact": "missing"})
    assert files.context["cl"].result_count == 1
    assert admin_client.get(reverse("admin:releases_mlmodel_changelist")).status_code == 200


def test_the_inline_field_refuses_a_large_file_and_points_to_the_large_file_page(admin_client, monkeypatch):
    from releases import admin_files

    monkeypatch.setattr(admin_files, "INLINE_UPLOAD_LIMIT", 1024)
    version = VersionFactory()
    data = form_data(admin_client.get(version_url(version)))
    data["files-0-upload"] = SimpleUploadedFile("big.bin", b"x" * 2048)
    response = admin_client.post(version_url(version), data)
    assert "big.bin is 2.0 KiB; this field takes files up to 1.0 KiB" in response.content.decode()
    assert "Upload large files" in response.content.decode() and not File.objects.exists()


def test_the_markdown_preview_renders_and_sanitises_like_the_site(admin_client, client):
    url = reverse("admin:releases_markdown_preview")
    shown = admin_client.post(url, {"text": "# Notes\n\n<script>x()</script>\n\n**bold**"}).json()["html"]
    assert "<h3>Notes</h3>" in shown and "<strong>bold</strong>" in shown and "<script" not in shown
    assert admin_client.post(url, {"text": "x" * 300_000}).status_code == 400
    assert client.post(url, {"text": "# x"}).status_code == 302  # staff only: the login page
