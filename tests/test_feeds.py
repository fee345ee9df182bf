"""Atom feeds of releases: read back by a real feed parser, cacheable, purged with pages."""

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
        "index-tts v12 withdrawn", "index-tts v23 released",
    }  # fmt: skip
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
