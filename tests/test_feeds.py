"""Atom feeds of releases: read back by a real feed parser, cacheable, purged with pages."""

import urllib.error
import urllib.request

import feedparser
import pytest

from releases import caching

pytestmark = pytest.mark.django_db


def feed(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/atom+xml")
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.bozo_exception  # well-formed and valid enough for a real reader
    assert parsed.version == "atom10"
    return response, parsed


def test_the_site_feed_lists_released_yanked_and_withdrawn_versions_but_no_draft(client, catalogue):
    _, parsed = feed(client, "/feeds/releases.atom")
    titles = [entry.title for entry in parsed.entries]
    assert set(titles) == {
        "index-tts v9 released", "index-tts v10 released", "index-tts v11 yanked",
        "index-tts v12 withdrawn", "index-tts v23 prerelease released",
    }  # fmt: skip
    assert all(entry.author == "index-tts" for entry in parsed.entries)  # RFC 4287 requires an author
    assert parsed.feed.author == "Model Releases"
    assert not any("v13" in title or "hidden-model" in title for title in titles)
    yanked = next(entry for entry in parsed.entries if entry.title == "index-tts v11 yanked")
    assert "Corrupt vocoder; use v10." in yanked.summary
    assert yanked.link == "http://testserver/models/index-tts/v11/"
    assert parsed.feed.link == "http://testserver/"


def test_entries_come_newest_change_first(client, catalogue):
    _, parsed = feed(client, "/feeds/releases.atom")
    updated = [entry.updated_parsed for entry in parsed.entries]
    assert updated == sorted(updated, reverse=True)
    assert parsed.entries[0].title == "index-tts v12 withdrawn"  # the catalogue's last change


def test_a_model_feed_holds_only_that_model(client, catalogue, publish):
    publish("other", "v1", {"model.pt": b"o"})
    _, parsed = feed(client, "/models/other/releases.atom")
    assert [entry.title for entry in parsed.entries] == ["other v1 released"]
    assert parsed.feed.title == "other releases"


@pytest.mark.parametrize("url", ["/models/nope/releases.atom", "/models/hidden-model/releases.atom",
                                 "/models/Bad%20Name/releases.atom"])  # fmt: skip
def test_an_unknown_or_unlisted_model_has_no_feed(client, catalogue, url):
    assert client.get(url).status_code == 404


def test_feeds_are_cached_like_pages_and_tagged_for_purges(client, catalogue):
    site, _ = feed(client, "/feeds/releases.atom")
    model, _ = feed(client, "/models/index-tts/releases.atom")
    assert "public" in site["Cache-Control"] and site["xkey"] == caching.index_key()
    assert "public" in model["Cache-Control"] and model["xkey"] == caching.model_key("index-tts")
    stale = caching.stale_after_change("index-tts", "v10")
    assert "/feeds/releases.atom" in stale[caching.index_key()]  # CDNs that purge by path
    assert "/models/index-tts/*" in stale[caching.model_key("index-tts")]


def test_pages_link_to_their_feeds(client, catalogue):
    index = client.get("/").content.decode()
    assert 'rel="alternate" type="application/atom+xml" title="All releases" href="/feeds/releases.atom"' in index
    version = client.get("/models/index-tts/v10/").content.decode()
    assert 'href="/models/index-tts/releases.atom"' in version and 'href="/feeds/releases.atom"' in version


@pytest.mark.parametrize("count", [1, 30])
def test_a_feed_costs_the_same_queries_for_1_or_30_versions(client, publish, django_assert_num_queries, count):
    for number in range(count):
        publish("many", f"v{number}", {"model.pt": b"x"})
    with django_assert_num_queries(2):  # the model, the versions with their model
        feed(client, "/models/many/releases.atom")
    with django_assert_num_queries(1):
        feed(client, "/feeds/releases.atom")


# --- through varnishd with the shipped VCL: a 404 never outlives the model's first publish -----


def answer(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


@pytest.mark.django_db(transaction=True)
def test_a_models_feed_appears_at_once_after_its_first_publish(settings, varnish, publish):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", varnish.url
    feed_url = f"{varnish.url}/models/new-model/releases.atom"
    assert answer(feed_url)[0] == 404
    status, headers = answer(feed_url)
    assert (status, headers["X-Cache"]) == (404, "HIT")  # readers polling a name do not all reach the site
    assert "xkey" not in {name.lower() for name in headers}

    publish("new-model", "v1", {"model.pt": b"one"})

    status, headers = answer(feed_url)
    assert (status, headers["X-Cache"]) == (200, "MISS")


@pytest.mark.django_db(transaction=True)
def test_a_feed_404_is_tagged_with_the_models_key_even_for_a_draft_only_model(client, publish):
    publish("hidden", "v1", {"model.pt": b"draft"}, draft=True)
    response = client.get("/models/hidden/releases.atom")
    assert response.status_code == 404 and response["xkey"] == caching.model_key("hidden")
    assert "s-maxage" in response["Cache-Control"]


NOT_YET = [
    "/models/new-model/",
    "/models/new-model/latest/",
    "/models/new-model/v1/",
    "/api/v1/models/new-model",
    "/api/v1/models/new-model/versions/latest",
    "/api/v1/models/new-model/versions/v1",
    "/api/v1/models/new-model/versions/v1/sha256sums",
    "/models/new-model/v1/model.pt",
]


@pytest.mark.django_db(transaction=True)
def test_pages_and_api_of_a_model_not_yet_published_are_never_kept(settings, varnish, publish):
    """Their 404s carry no key, so they must not be stored: after the first publish they answer at once."""
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", varnish.url
    for path in NOT_YET:
        for _ in range(2):
            status, headers = answer(varnish.url + path)
            assert (status, headers["X-Cache"]) == (404, "MISS"), path
    unknown = f"{varnish.url}/no-such-page/"  # Django's own 404, without Cache-Control
    assert [answer(unknown)[1]["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]

    publish("new-model", "v1", {"model.pt": b"one"})

    for path in NOT_YET:
        assert answer(varnish.url + path)[0] in {200, 302}, path
