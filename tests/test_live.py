"""Over real HTTP: the live test server, and signed S3 links fetched from the moto server without boto3."""

import hashlib
import json
import urllib.request

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url: str, headers: dict | None = None, follow: bool = True):
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def weights(publish):
    content = bytes(range(256)) * 4096  # 1 MiB
    publish("index-tts", "v1", {"model.pt": content, "sub/config.yaml": b"a: 1\n"})
    return content


def test_s3_signed_links_from_the_api_download_the_right_bytes(live_server, s3_store, weights):
    status, _, body = fetch(f"{live_server.url}/api/v1/models/index-tts/versions/latest")
    assert status == 200
    for file in json.loads(body)["files"]:
        assert file["url"].startswith(s3_store.signing_location().origin)
        assert "X-Amz-Signature=" in file["url"] and "response-content-disposition=" in file["url"]
        status, headers, downloaded = fetch(file["url"])  # plain HTTP, no boto3
        assert status == 200
        assert hashlib.sha256(downloaded).hexdigest() == file["sha256"] and len(downloaded) == file["size"]
    assert hashlib.sha256(weights).hexdigest() == json.loads(body)["files"][0]["sha256"]


def test_stable_url_to_s3_over_http(live_server, s3_store, weights):
    status, headers, _ = fetch(f"{live_server.url}/models/index-tts/latest/model.pt", follow=False)
    assert status == 302 and headers["X-Artifact-Version"] == "v1"
    status, _, downloaded = fetch(headers["Location"])
    assert status == 200 and downloaded == weights


def test_local_links_resume_with_range_over_http(live_server, weights):
    status, headers, _ = fetch(f"{live_server.url}/models/index-tts/v1/model.pt", follow=False)
    link = headers["Location"]
    assert link.startswith(f"{live_server.url}/files/index-tts/v1/model.pt?")
    status, headers, first = fetch(link, {"Range": "bytes=0-499999"})
    assert status == 206 and headers["Content-Range"] == f"bytes 0-499999/{len(weights)}"
    status, headers, rest = fetch(link, {"Range": "bytes=500000-"})
    assert status == 206 and first + rest == weights
    status, _, body = fetch(link.replace("signature=", "signature=f"))
    assert status == 403 and b"signature does not match" in body
