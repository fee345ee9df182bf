"""No dead ends: styled 404/410/500 for browsers, plain text for other clients, JSON under /api/;
did-you-mean for models, the versions of a model for an unknown version, and versions matched in
any case (the admin treats `V10` and `v10` as one name)."""

import pytest
from django.test import RequestFactory

from releases.views import errors

pytestmark = pytest.mark.django_db

BROWSER = {"HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
CURL = {"HTTP_ACCEPT": "*/*"}


def test_an_unknown_url_is_a_styled_page_for_browsers_and_plain_text_for_curl(client, catalogue):
    page = client.get("/no/such/page", **BROWSER)
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert "<h1>Not found</h1>" in html and 'class="brand"' in html and 'href="/"' in html
    text = client.get("/no/such/page", **CURL)
    assert text.status_code == 404 and text["Content-Type"].startswith("text/plain")
    assert text.content.decode() == "There is nothing at /no/such/page.\n"
    api = client.get("/api/v1/nothing", **BROWSER)
    assert api.status_code == 404 and api.json() == {"detail": "Not found."}


def test_an_unknown_model_suggests_the_closest_names_everywhere(client, catalogue):
    page = client.get("/models/index-ts/", **BROWSER)
    assert page.status_code == 404 and '<a href="/models/index-tts/">index-tts</a>' in page.content.decode()
    api = client.get("/api/v1/models/index-ts/versions/v10")
    assert api.status_code == 404
    assert api.json()["detail"] == "There is no model 'index-ts'. Did you mean 'index-tts'?"
    stable = client.get("/models/index-ts/v10/model.pt", **CURL)
    assert stable.status_code == 404 and b"Did you mean 'index-tts'?" in stable.content
    hidden = client.get("/api/v1/models/hidden-mode")  # a model with only drafts is never suggested
    assert "hidden-model" not in hidden.json()["detail"]


def test_an_unknown_version_lists_the_versions(client, catalogue):
    api = client.get("/api/v1/models/index-tts/versions/v10.1")
    assert api.status_code == 404
    assert api.json()["detail"] == "index-tts has no version 'v10.1'. Its versions: v23, v11, v10, v9 (latest: v10)."
    page = client.get("/models/index-tts/v10.1/", **BROWSER).content.decode()
    assert '<a href="/models/index-tts/v23/">v23</a>' in page and "v13" not in page  # drafts stay hidden
    assert "v12" not in page.split("Versions of")[1]  # withdrawn: not offered


def test_a_version_named_in_another_case_is_that_version(client, catalogue):
    page = client.get("/models/index-tts/V10/", **BROWSER)
    assert (page.status_code, page["Location"]) == (302, "/models/index-tts/v10/")
    api = client.get("/api/v1/models/index-tts/versions/V10")
    assert api.status_code == 200 and api.json()["version"] == "v10"
    sums = client.get("/api/v1/models/index-tts/versions/V10/sha256sums")
    assert sums.status_code == 200 and sums["X-Artifact-Version"] == "v10"
    stable = client.get("/models/index-tts/V10/model.pt?x=1")
    assert (stable.status_code, stable["Location"]) == (302, "/models/index-tts/v10/model.pt?x=1")
    assert client.get("/api/v1/models/index-tts/versions/V13").status_code == 404  # a draft stays unknown


def test_a_withdrawn_version_links_to_the_model_and_its_latest(client, catalogue):
    page = client.get("/models/index-tts/v12/", **BROWSER)
    assert page.status_code == 410
    html = page.content.decode()
    assert '<a href="/models/index-tts/">See every version of index-tts</a>' in html
    assert '<a href="/models/index-tts/v10/">index-tts v10</a>' in html
    plain = client.get("/models/index-tts/v12/model.pt", **CURL)
    assert plain.status_code == 410 and plain["Content-Type"].startswith("text/plain")
    browser = client.get("/models/index-tts/v12/model.pt", **BROWSER)
    assert browser.status_code == 410 and b"See every version of index-tts" in browser.content


def test_a_server_error_is_a_page_that_needs_nothing_that_may_be_broken(django_assert_num_queries):
    factory = RequestFactory()
    with django_assert_num_queries(0):
        page = errors.server_error(factory.get("/models/x/", **BROWSER))
        plain = errors.server_error(factory.get("/models/x/", **CURL))
        api = errors.server_error(factory.get("/api/v1/models", **BROWSER))
    assert page.status_code == 500 and b"<h1>Something went wrong</h1>" in page.content
    assert plain["Content-Type"].startswith("text/plain") and api["Content-Type"].startswith("text/plain")


def test_a_server_error_page_that_cannot_render_falls_back_to_plain_words(monkeypatch):
    def broken(name):
        raise ValueError("Missing staticfiles manifest entry")

    monkeypatch.setattr(errors.loader, "get_template", broken)
    response = errors.server_error(RequestFactory().get("/models/x/", **BROWSER))
    assert response.status_code == 500 and response["Content-Type"].startswith("text/plain")
    assert b"Something went wrong" in response.content
