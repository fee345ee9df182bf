"""Public pages, stable URLs and the local file server, through Django's test client."""

import re
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.urls import reverse

from releases.rendering import render_markdown

from .data import WEIGHTS
from .factories import sha256

pytestmark = pytest.mark.django_db


# --- stable URLs ----------------------------------------------------------------------------


def test_stable_url_redirects_to_a_fresh_signed_link(client, catalogue):
    response = client.get("/models/index-tts/v9/sub/config.yaml")
    assert response.status_code == 302
    assert response["Cache-Control"] == "no-store"
    content = WEIGHTS["sub/config.yaml"] + b"v9"
    assert response["X-Artifact-SHA256"] == sha256(content)
    assert response["X-Artifact-Size"] == str(len(content))
    assert response["X-Artifact-Version"] == "v9"
    assert response["Location"].startswith("http://testserver/files/index-tts/v9/sub/config.yaml?expires=")
    downloaded = client.get(response["Location"])
    assert b"".join(downloaded.streaming_content) == content
    assert downloaded["Content-Disposition"] == 'attachment; filename="config.yaml"'


def test_head_answers_like_get(client, catalogue):
    get, head = client.get("/models/index-tts/latest/model.pt"), client.head("/models/index-tts/latest/model.pt")
    assert head.status_code == 302
    for header in ("Location", "X-Artifact-SHA256", "X-Artifact-Size", "X-Artifact-Version", "Cache-Control"):
        assert head[header] == get[header]


def test_latest_skips_prereleases_yanked_withdrawn_and_drafts(client, catalogue):
    response = client.get("/models/index-tts/latest/model.pt")
    assert response["X-Artifact-Version"] == "v10"


def test_yanked_versions_stay_downloadable_by_exact_version(client, catalogue):
    assert client.get("/models/index-tts/v11/model.pt").status_code == 302


@pytest.mark.parametrize(
    "url, status",
    [
        ("/models/nope/v1/model.pt", 404),
        ("/models/index-tts/v99/model.pt", 404),
        ("/models/index-tts/v9/nope.pt", 404),
        ("/models/index-tts/v13/model.pt", 404),  # draft
        ("/models/hidden-model/latest/model.pt", 404),  # only drafts: unknown
        ("/models/hidden-model/v1/model.pt", 404),
        ("/models/index-tts/v12/model.pt", 410),  # withdrawn
        ("/models/index-tts/v9/../v12/model.pt", 404),
        ("/models/index-tts/v9/sub/../model.pt", 404),
        ("/models/index-tts/v9/..%2F..%2Fhidden-model%2Fv1%2Fmodel.pt", 404),
        ("/models/index-tts/v9/%2e%2e/v12/model.pt", 404),
        ("/models/index-tts/v9/model.pt%00", 404),
    ],
)
def test_stable_url_refusals(client, catalogue, url, status):
    response = client.get(url)
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/plain")
    assert response["Cache-Control"] == "no-store"
    assert "Location" not in response


def test_an_encoded_slash_names_the_same_file_and_nothing_else(client, catalogue):
    response = client.get("/models/index-tts/v9/sub%2Fconfig.yaml")
    assert response.status_code == 302 and response["X-Artifact-Version"] == "v9"


def test_staff_may_fetch_drafts(admin_client, catalogue):
    response = admin_client.get("/models/index-tts/v13/model.pt")
    assert response.status_code == 302


def test_stable_urls_use_site_url_when_set(client, catalogue, settings):
    settings.SITE_URL = "https://models.example.org"
    response = client.get("/models/index-tts/v9/model.pt")
    assert response["Location"].startswith("https://models.example.org/files/")


# --- local file server ----------------------------------------------------------------------------


def signed_link(client, url="/models/index-tts/v9/model.pt"):
    return client.get(url)["Location"]


def test_range_requests_resume_downloads(client, catalogue):
    link, content = signed_link(client), WEIGHTS["model.pt"] + b"v9"
    partial = client.get(link, HTTP_RANGE="bytes=100-199")
    assert partial.status_code == 206
    assert partial["Content-Range"] == f"bytes 100-199/{len(content)}"
    assert partial["Accept-Ranges"] == "bytes"
    assert b"".join(partial.streaming_content) == content[100:200]
    rest = client.get(link, HTTP_RANGE="bytes=4000-")
    assert b"".join(rest.streaming_content) == content[4000:]
    tail = client.get(link, HTTP_RANGE="bytes=-10")
    assert b"".join(tail.streaming_content) == content[-10:]
    beyond = client.get(link, HTTP_RANGE=f"bytes={len(content)}-")
    assert (beyond.status_code, beyond["Content-Range"]) == (416, f"bytes */{len(content)}")
    whole = client.get(link, HTTP_RANGE="lines=1-2")
    assert whole.status_code == 200 and int(whole["Content-Length"]) == len(content)
    reversed_range = client.get(link, HTTP_RANGE="bytes=5-3")  # invalid: ignored, as RFC 9110 says
    assert reversed_range.status_code == 200 and int(reversed_range["Content-Length"]) == len(content)
    absurd = client.get(link, HTTP_RANGE="bytes=" + "9" * 5000 + "-")
    assert absurd.status_code == 200


def test_a_range_past_the_end_is_416_and_a_stale_if_range_gets_the_whole_file(client, catalogue):
    link, content = signed_link(client), WEIGHTS["model.pt"] + b"v9"
    past = client.get(link, HTTP_RANGE=f"bytes={len(content)}-{len(content) + 100}")
    assert (past.status_code, past["Content-Range"]) == (416, f"bytes */{len(content)}")
    current = client.get(link, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=f'"{sha256(content)}"')
    assert current.status_code == 206 and b"".join(current.streaming_content) == content[:10]
    stale = client.get(link, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"' + "0" * 64 + '"')
    assert stale.status_code == 200 and b"".join(stale.streaming_content) == content


@pytest.mark.parametrize(
    "spelling",
    ["+{}", " {} ", "0{}", "{}.0", "\uff11{}"],
    ids=["plus", "spaces", "leading zero", "decimal", "full-width"],
)
def test_expires_has_one_spelling(client, catalogue, spelling):
    link = signed_link(client)
    expires = parse_qs(urlsplit(link).query)["expires"][0]
    other = link.replace(f"expires={expires}", "expires=" + quote(spelling.format(expires)))
    response = client.get(other)
    assert response.status_code == 403 and b"malformed" in response.content
    assert client.get(link).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        lambda link: link.replace("model.pt", "sub/config.yaml"),
        lambda link: link.replace("expires=", "expires=1"),
        lambda link: link.replace("signature=", "signature=ab"),
        lambda link: link.split("?")[0],
    ],
    ids=["another file", "another expiry", "another signature", "no query"],
)
def test_tampered_local_links_are_refused(client, catalogue, tamper):
    response = client.get(tamper(signed_link(client)))
    assert response.status_code == 403
    assert b"ask the stable URL for a fresh one" in response.content


def test_expired_local_links_are_refused(client, catalogue):
    from releases.signing import LocalSigner

    expired = LocalSigner(1).link("index-tts/v9/model.pt", "model.pt", now=1_000_000)
    response = client.get(expired.url)
    assert response.status_code == 403 and b"has expired" in response.content


def test_withdrawn_files_stop_being_served(client, catalogue):
    from releases.signing import signer

    link = signer().link("index-tts/v12/model.pt", "model.pt")
    assert client.get(link.url).status_code == 410


# --- pages ------------------------------------------------------------------------------------


def test_index_lists_public_models_with_their_latest_version(client, catalogue):
    response = client.get("/")
    page = response.content.decode()
    assert "index-tts" in page and "hidden-model" not in page
    assert reverse("releases:version", args=["index-tts", "v10"]) in page


def test_model_page_shows_every_listed_version_with_its_state(client, catalogue):
    page = client.get("/models/index-tts/").content.decode()
    table = page.split("<tbody>", 1)[1]
    for name in ["v23", "v12", "v11", "v10", "v9"]:
        assert f">{name}<" in page
    assert "v13" not in page  # draft
    assert (
        table.index(">v23<") < table.index(">v12<") < table.index(">v11<") < table.index(">v10<") < table.index(">v9<")
    )
    assert "Corrupt vocoder; use v10." in page and "withdrawn" in page and "prerelease" in page
    assert '<span class="badge latest">latest</span>' in page


def test_staff_see_drafts_and_nobody_else_does(client, admin_client, catalogue):
    assert client.get("/models/index-tts/v13/").status_code == 404
    assert client.get("/models/hidden-model/").status_code == 404
    preview = admin_client.get("/models/index-tts/v13/")
    assert preview.status_code == 200 and b"Draft preview" in preview.content
    assert "private" in preview["Cache-Control"]
    assert b"v13" in admin_client.get("/models/index-tts/").content


def test_a_staff_flag_without_the_view_permission_shows_no_drafts(client, django_user_model, catalogue):
    client.force_login(django_user_model.objects.create_user("intern", is_staff=True))
    assert client.get("/models/index-tts/v13/").status_code == 404
    assert client.get("/api/v1/models/index-tts/versions/v13").status_code == 404
    assert client.get("/models/index-tts/v13/model.pt").status_code == 404
    assert b"v13" not in client.get("/models/index-tts/").content


def test_version_page_has_checksums_stable_urls_and_commands(client, catalogue):
    response = client.get("/models/index-tts/latest/")
    page = response.content.decode()
    content = WEIGHTS["model.pt"] + b"v10"
    assert sha256(content) in page
    assert "http://testserver/models/index-tts/v10/model.pt" in page  # the resolved version, not latest
    assert "/models/index-tts/latest/model.pt" not in page
    assert f"{len(content):,} bytes" in page
    assert "curl -fsSL http://testserver/fetch-model.sh | sh -s -- index-tts v10" in page
    assert 'MODEL_DIR="checkpoints/index-tts/v10"' in page and 'sh "$MODEL_DIR/.fetch-model.sh" index-tts v10' in page
    assert 'MODEL_DIR="checkpoints/index-tts/v10"' in page and "set -e" not in page  # safe in an interactive shell
    assert "curl -fsSL http://testserver/api/v1/models/index-tts/versions/v10/sha256sums -o SHA256SUMS" in page
    assert "curl -fL --create-dirs -o sub/config.yaml http://testserver/models/index-tts/v10/sub/config.yaml" in page
    assert "http://testserver/files/index-tts/v10/model.pt?expires=" in page  # the signed link, for pasting
    assert 'class="download" href="http://testserver/models/index-tts/v10/model.pt"' in page  # counted


def test_copy_paste_commands_quote_paths(client, publish):
    publish("m", "v1", {"sub dir/it's.bin": b"x"})
    page = client.get("/models/m/v1/").content.decode()
    assert (
        "curl -fL --create-dirs -o &#x27;sub dir/it&#x27;&quot;&#x27;&quot;&#x27;s.bin&#x27; http://testserver/models/m/v1/sub%20dir/it%27s.bin"
        in page
    )


def test_yanked_version_page_carries_a_banner(client, catalogue):
    page = client.get("/models/index-tts/v11/").content.decode()
    assert 'class="banner yanked"' in page and "Corrupt vocoder; use v10." in page


@pytest.mark.parametrize(
    "url, status", [("/models/index-tts/v12/", 410), ("/models/nope/", 404), ("/models/index-tts/v99/", 404)]
)
def test_page_errors(client, catalogue, url, status):
    response = client.get(url)
    assert response.status_code == status and response["Content-Type"].startswith("text/html")


def test_pages_are_cacheable_with_surrogate_keys_and_conditional_get(client, catalogue, settings):
    response = client.get("/models/index-tts/v9/")
    assert response["Cache-Control"] == f"public, max-age=60, s-maxage={settings.SIGNED_URL_TTL // 2}"
    assert response["xkey"] == response["Surrogate-Key"] == "model-index-tts version-index-tts-v9"
    again = client.get("/models/index-tts/v9/", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304
    assert client.get("/")["xkey"] == "models"


def test_shared_cache_lifetime_is_half_the_link_ttl(client, catalogue, settings):
    settings.SIGNED_URL_TTL = 600
    assert "s-maxage=300" in client.get("/api/v1/models/index-tts/versions/v9")["Cache-Control"]


def test_pages_only_answer_get_and_head(client, catalogue):
    assert client.post("/models/index-tts/").status_code == 405


@pytest.mark.parametrize(
    "notes, forbidden",
    [
        ("<script>alert(1)</script>", "<script"),
        ("[click](javascript:alert(1))", "javascript:"),
        ('<img src=x onerror="alert(1)">', "onerror"),
        ("<iframe src=//evil></iframe>", "<iframe"),
        ('<a href="x" style="position:fixed">x</a>', "style="),
    ],
)
def test_release_notes_are_rendered_and_sanitised(notes, forbidden):
    html = render_markdown(f"# Changes\n\n* faster\n\n{notes}")
    assert "<h3>Changes</h3>" in html and "<li>faster</li>" in html  # below the page's h1 and h2
    assert forbidden not in html


def test_notes_on_the_page_cannot_inject_script(client, publish):
    publish("m", "v1", {"a.bin": b"a"}, notes="**bold** <script>alert('x')</script>")
    page = client.get("/models/m/v1/").content.decode()
    assert "<strong>bold</strong>" in page and "<script>alert" not in page


def test_index_search_tag_filter_and_sorts(client, publish):
    from releases import services

    publish("alpha", "v1", {"m.pt": b"a"})
    publish("beta", "v1", {"m.pt": b"b"})
    publish("gamma", "v1", {"m.pt": b"c"})
    services.set_model_info("alpha", description="Reads **speech** aloud.", tags=["tts"])
    services.set_model_info("beta", tags=["vision", "tts"])

    def names(url):
        page = client.get(url).content.decode()
        return re.findall(r'<h2><a href="/models/([a-z-]+)/">', page)

    assert names("/?q=speech") == ["alpha"]  # description
    assert names("/?q=GAM") == ["gamma"]  # name, any case
    assert names("/?q=tts") == ["alpha", "beta"]  # tag
    assert names("/?tag=vision") == ["beta"]
    assert names("/?tag=tts&q=speech") == ["alpha"]
    assert names("/?sort=latest") == ["gamma", "beta", "alpha"]  # newest release first
    assert names("/?sort=bogus") == ["alpha", "beta", "gamma"]  # an unknown sort is by name
    assert "No model matches “nothing”" in client.get("/?q=nothing").content.decode()
    assert "Reads speech aloud." in client.get("/").content.decode()  # the card's start, without markup
