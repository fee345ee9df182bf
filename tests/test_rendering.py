"""Release notes: a size limit and a nesting limit enforced where notes are written (services,
so the admin and publish_release alike), rendered once then, and never on a page view."""

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from releases import rendering, services
from releases.models import MLModel, Version

from .test_admin import form_data

pytestmark = pytest.mark.django_db

LIMIT = 4096


@pytest.fixture(autouse=True)
def small_limit(settings):
    settings.RELEASE_NOTES_MAX_BYTES = LIMIT


@pytest.mark.parametrize(
    "notes",
    ["> " * 100 + "deep", "<div>" * 100, "<div></x>" * 100, "".join("  " * i + "- item\n" for i in range(80))],
    ids=["quotes", "open tags", "stray end tags do not close", "nested lists"],
)
def test_notes_that_nest_too_deeply_to_sanitise_are_refused(notes, settings):
    settings.RELEASE_NOTES_MAX_BYTES = 65536
    with pytest.raises(ValidationError, match="nest elements more than 64 deep"):
        rendering.render_markdown(notes)


def test_notes_that_nest_as_deep_as_allowed_render():
    html = rendering.render_markdown("<div>" * 60 + "fine" + "</div>" * 60)
    assert "fine" in html


def test_the_limit_counts_bytes_not_characters():
    rendering.render_markdown("a" * LIMIT)
    with pytest.raises(ValidationError, match=f"are {LIMIT + 1:,} bytes; at most {LIMIT:,}"):
        rendering.render_markdown("é" + "a" * (LIMIT - 1))  # one more byte, as many characters


def test_services_refuse_long_notes_and_keep_what_was_there(publish):
    version = publish("m", "v1", {"a.bin": b"a"}, notes="short")
    with pytest.raises(services.ReleaseError, match="RELEASE_NOTES_MAX_BYTES"):
        services.update_version_details(version, notes="x" * (LIMIT + 1), prerelease=False)
    version.refresh_from_db()
    assert (version.notes, version.notes_html) == ("short", "<p>short</p>\n")
    with pytest.raises(services.ReleaseError, match="RELEASE_NOTES_MAX_BYTES"):
        services.create_version(version.model, "v2", notes="x" * (LIMIT + 1))
    assert not Version.objects.filter(version="v2").exists()


def test_publish_release_refuses_long_notes_with_one_line_and_leaves_nothing(write_file, local_store):
    source = write_file("d/model.pt", b"weights")
    notes = write_file("notes.md", b"x" * (LIMIT + 1))
    with pytest.raises(CommandError, match="Release notes are 4,097 bytes; at most 4,096"):
        call_command("publish_release", "m", "v1", str(source), "--notes", str(notes))
    assert not Version.objects.exists() and not MLModel.objects.exists()
    assert not [path for path in Path(local_store.storage.location).rglob("*") if path.is_file()]


def test_the_admin_shows_the_limit_on_the_form(admin_client):
    model = MLModel.objects.create(slug="m", name="m")
    page = admin_client.get(reverse("admin:releases_version_add"))
    response = admin_client.post(
        reverse("admin:releases_version_add"),
        form_data(page, model=str(model.pk), version="v1", notes="x" * (LIMIT + 1)),
    )
    assert response.status_code == 200  # the form again, not a redirect
    assert "at most 4,096 are allowed" in response.content.decode()
    assert not Version.objects.exists()


def test_a_page_view_never_renders_markdown(client, publish, monkeypatch):
    publish("m", "v1", {"a.bin": b"a"}, notes="**bold** <script>alert('x')</script>")

    def no_rendering(*args, **kwargs):
        raise AssertionError("Markdown rendered during a page view")

    monkeypatch.setattr(rendering.cmarkgfm, "github_flavored_markdown_to_html", no_rendering)
    page = client.get("/models/m/v1/").content.decode()
    assert "<strong>bold</strong>" in page and "<script>alert" not in page


def test_headings_sit_below_the_pages_own_and_code_blocks_carry_no_bogus_language():
    from releases.rendering import render_markdown

    html = render_markdown("# Title\n\n## Part\n\n###### Deep\n\n```python\nx = 1\n```\n")
    assert "<h3>Title</h3>" in html and "<h4>Part</h4>" in html and "<h6>Deep</h6>" in html
    assert "<h1" not in html and "<h2" not in html
    assert "<pre><code>" in html and "lang=" not in html  # `lang="python"` is no language code


def test_html_stored_before_the_demotion_is_demoted_once():
    import importlib

    migration = importlib.import_module("releases.migrations.0010_headings_below_the_page")
    old = '<h1>Title</h1><h2>Part</h2><pre lang="python"><code>x</code></pre>'
    new = migration.demote(old)
    assert new == "<h3>Title</h3><h4>Part</h4><pre><code>x</code></pre>"
    assert migration.demote(new) == new  # run again: unchanged
