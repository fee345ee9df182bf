"""Pages and API run a constant number of queries, whatever the number of versions and files; the
selectors take any text a visitor sends."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from releases import selectors
from releases.models import Version

from .factories import FileFactory, ModelFactory, VersionFactory

pytestmark = pytest.mark.django_db


def build(slug: str, versions: int, files: int):
    model = ModelFactory(slug=slug)
    for number in range(1, versions + 1):
        version = VersionFactory(model=model, version=f"v{number}", published=True)
        for index in range(files if number == versions else 1):
            FileFactory(version=version, path=f"dir/file-{index}.bin")
    return model


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code in (200, 302), (url, response.status_code)
    return len(captured.captured_queries)


URLS = [
    "/",
    "/models/{m}/",
    "/models/{m}/latest/",
    "/models/{m}/v{last}/",
    "/models/{m}/latest/dir/file-0.bin",
    "/api/v1/models",
    "/api/v1/models/{m}",
    "/api/v1/models/{m}/versions/latest",
    "/api/v1/models/{m}/versions/v{last}",
    "/api/v1/models/{m}/versions/latest/sha256sums",
]


@pytest.mark.parametrize("template", URLS)
def test_query_count_does_not_grow_with_versions_or_files(client, template):
    build("small", versions=1, files=1)
    build("large", versions=100, files=50)
    small = queries(client, template.format(m="small", last=1))
    large = queries(client, template.format(m="large", last=100))
    assert small == large, template
    assert large <= 5, template  # the version page: version, files, changes, downloads, is-latest


def test_latest_resolution_is_one_query(django_assert_num_queries):
    from django.contrib.auth.models import AnonymousUser

    from releases import selectors

    build("m", versions=3, files=1)
    with django_assert_num_queries(1):
        assert selectors.resolve_version("m", "latest", AnonymousUser()).version == "v3"
    assert Version.objects.count() == 3


@pytest.mark.parametrize(
    "typed, searched",
    [
        ("index-tts", "index-tts"),
        ("  index-tts \n", "index-tts"),
        ("index\x00-tts", "index-tts"),
        ("\x00", ""),
        ("a\x01\x1f\x7f\x85\x9fb", "ab"),
        ("\ud800tts\udfff", "tts"),
        ("x" * 500, "x" * 100),
        ("\x00" * 1000 + "tts", ""),  # only a bounded prefix is looked at
        ("模型 café", "模型 café"),
    ],
)
def test_search_text_drops_what_a_search_cannot_hold(typed, searched):
    assert selectors.search_text(typed, selectors.SEARCH_LENGTH) == searched


def test_the_index_selector_takes_any_text_on_postgresql(catalogue):
    """The selector itself is safe for every caller, not only for the page that cleans first."""
    assert [m.slug for m in selectors.models_for_index(None, query="index\x00-tts", tag="\x00", sort="\x00")] == [
        "index-tts"
    ]


def test_downloadable_paths_lists_published_and_yanked_files_only(catalogue):
    listed = {(model, version) for model, version, _ in selectors.downloadable_paths()}
    assert listed == {("index-tts", name) for name in ["v9", "v10", "v11", "v23"]}
