"""CDN backends against real servers: varnishd with the shipped VCL, a Fastly-shaped API
on loopback that checks the request format, and moto's CloudFront."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import boto3
import pytest

from releases import cdn, outbox
from releases.models import File, OutboxEntry

from .data import S3_TEST_CREDENTIALS
from .servers import REPO_ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def get(url: str, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_varnish_caches_pages_and_a_publish_purges_them(settings, varnish, publish):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", varnish.url
    publish("index-tts", "v1", {"model.pt": b"one"})
    page = f"{varnish.url}/models/index-tts/latest/"
    assert get(page)[1]["X-Cache"] == "MISS"
    status, headers, body = get(page)
    assert (status, headers["X-Cache"]) == (200, "HIT") and b'index-tts <span class="version">v1</span>' in body
    api = f"{varnish.url}/api/v1/models/index-tts/versions/latest"
    get(api)
    assert get(api)[1]["X-Cache"] == "HIT"
    assert "xkey" not in {k.lower() for k in headers}  # tags stay inside the cache

    publish("index-tts", "v2", {"model.pt": b"two"})  # purged right after commit (tasks run in-process here)

    status, headers, body = get(page)
    assert headers["X-Cache"] == "MISS" and b'index-tts <span class="version">v2</span>' in body
    assert json.loads(get(api)[2])["version"] == "v2"
    assert not OutboxEntry.objects.filter(state="pending").exists()


def test_varnish_never_caches_redirects_or_staff(settings, varnish, publish):
    publish("index-tts", "v1", {"model.pt": b"one"})
    for method in ("HEAD", "HEAD", "GET", "GET"):
        status, headers = answer(f"{varnish.url}/models/index-tts/v1/model.pt", method=method)
        assert (status, headers["X-Cache"]) == (302, "MISS")
    get(f"{varnish.url}/models/index-tts/")
    assert get(f"{varnish.url}/models/index-tts/", {"Cookie": "sessionid=abc"})[1]["X-Cache"] == "MISS"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_varnish_refuses_purges_from_other_addresses_and_without_keys(varnish):
    request = urllib.request.Request(f"{varnish.url}/", method="PURGE")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 400
    backend = cdn.VarnishCdn(varnish.url)
    assert backend.purge(["models", "model-x"], []) == 1


def test_varnish_refuses_purges_from_addresses_outside_its_acl(live_server):
    from .servers import Varnish

    cache = Varnish(int(live_server.url.rsplit(":", 1)[1]), purgers=("192.0.2.10",))
    try:
        with pytest.raises(cdn.CdnError, match="403"):
            cdn.VarnishCdn(cache.url).purge(["models"], [])
    finally:
        cache.stop()


def test_fastly_purges_by_surrogate_key_in_batches(settings, recording_server):
    recording_server.respond = lambda request: (
        200,
        json.dumps({k: "id" for k in request.headers["surrogate-key"].split()}).encode(),
    )
    backend = cdn.FastlyCdn(recording_server.url, "SERVICE123", "token-abc")
    keys = [f"version-m-v{n}" for n in range(300)]
    assert backend.purge(keys, ["/ignored"]) == 2
    first, second = recording_server.requests
    for request in (first, second):
        assert (request.method, request.path) == ("POST", "/service/SERVICE123/purge")
        assert request.headers["fastly-key"] == "token-abc"
        assert request.headers["fastly-soft-purge"] == "1"
        assert request.headers["accept"] == "application/json"
    assert len(first.headers["surrogate-key"].split()) == 256 and len(second.headers["surrogate-key"].split()) == 44
    assert first.headers["surrogate-key"].split() + second.headers["surrogate-key"].split() == keys


def test_fastly_errors_are_cdn_errors(recording_server):
    recording_server.respond = lambda request: (401, b'{"msg":"Provided credentials are missing or invalid"}')
    with pytest.raises(cdn.CdnError, match="401"):
        cdn.FastlyCdn(recording_server.url, "S", "bad").purge(["models"], [])


def test_cloudfront_invalidates_the_paths_the_keys_cover(settings, moto_endpoint, publish):
    client = boto3.client(
        "cloudfront",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=S3_TEST_CREDENTIALS["secret_key"],
    )
    distribution = client.create_distribution(
        DistributionConfig={
            "CallerReference": "tests",
            "Comment": "",
            "Enabled": True,
            "Origins": {"Quantity": 1, "Items": [{"Id": "site", "DomainName": "models.example.org",
                        "CustomOriginConfig": {"HTTPPort": 80, "HTTPSPort": 443, "OriginProtocolPolicy": "https-only"}}]},
            "DefaultCacheBehavior": {"TargetOriginId": "site", "ViewerProtocolPolicy": "https-only", "MinTTL": 0,
                                     "ForwardedValues": {"QueryString": True, "Cookies": {"Forward": "none"}}},
        }
    )["Distribution"]  # fmt: skip
    settings.CDN_BACKEND, settings.CLOUDFRONT_DISTRIBUTION_ID = "cloudfront", distribution["Id"]
    settings.AWS_CLOUDFRONT_ENDPOINT_URL = moto_endpoint
    settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY = (
        S3_TEST_CREDENTIALS["access_key"],
        S3_TEST_CREDENTIALS["secret_key"],
    )
    settings.CDN_BASE_URL = "https://cdn.example.org"
    version = publish("index-tts", "v1", {"model.pt": b"one"})
    from releases import services

    services.yank_version(version, "broken")
    invalidations = client.list_invalidations(DistributionId=distribution["Id"])["InvalidationList"]["Items"]
    assert len(invalidations) == 2  # one per change, not one per key or file
    paths = [
        client.get_invalidation(DistributionId=distribution["Id"], Id=item["Id"])["Invalidation"]["InvalidationBatch"][
            "Paths"
        ]["Items"]
        for item in invalidations
    ]
    everything = {path for batch in paths for path in batch}
    assert {"/", "/api/v1/models", "/models/index-tts/*", "/models/index-tts/v1/*"} <= everything


def test_none_backend_sends_nothing():
    assert cdn.Cdn().purge(["models"], ["/"]) == 0


def test_warming_fetches_new_files_through_the_cdn(settings, live_server, publish, recording_server):
    """CDN_BASE_URL is the live server here: the request a CDN would pass to the site is real."""
    settings.CDN_BACKEND, settings.CDN_PURGE_URL, settings.CDN_BASE_URL = (
        "varnish",
        recording_server.url,
        live_server.url,
    )
    version = publish("index-tts", "v1", {"model.pt": b"weights" * 1000, "sub/c.yaml": b"a: 1\n"})
    files = File.objects.filter(version=version)
    assert all(file.warmed_at is not None for file in files)
    assert not OutboxEntry.objects.filter(kind="warm").exclude(state="done").exists()


def test_warming_reports_a_short_body(settings, live_server, publish, local_store):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL, settings.CDN_BASE_URL = (
        "varnish",
        "http://127.0.0.1:9",
        live_server.url,
    )
    settings.OUTBOX_MAX_ATTEMPTS = 5
    version = publish("index-tts", "v1", {"model.pt": b"weights" * 1000})
    file = File.objects.get(version=version)
    import io

    local_store.upload(
        file.key, io.BytesIO(b"short"), content_type="application/octet-stream"
    )  # corrupted behind our back
    OutboxEntry.objects.filter(kind="warm").update(state="pending", next_attempt_at="2000-01-01T00:00Z")
    result = outbox.drain("warm")
    assert result.retried == 1
    assert "gave 5 bytes, expected 7000" in OutboxEntry.objects.get(kind="warm").last_error


@pytest.fixture
def production_site(settings, tmp_path, publish):
    """gunicorn with DJANGO_ENV=production (HTTPS redirects on), behind varnishd with the shipped VCL."""
    from .servers import Gunicorn, Varnish, django_env

    publish("index-tts", "v1", {"model.pt": b"one"})
    env = django_env(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY="x7" * 30 + "kQ9",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        STATIC_ROOT=tmp_path / "static",
        STORAGE_BACKEND="local",
    )
    collected = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert collected.returncode == 0, collected.stderr
    site = Gunicorn(env)
    cache = Varnish(site.port)
    yield cache
    cache.stop()
    site.stop()


def answer(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict]:
    """Status and headers, without following redirects."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}, method=method), timeout=10) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


HTTPS = {"X-Forwarded-Proto": "https"}
PUBLIC_PATHS = [
    "/models/index-tts/",
    "/api/v1/models/index-tts/versions/latest",
    "/fetch-model.sh",
    "/models/index-tts/v1/model.pt",
]


@pytest.mark.parametrize("path", PUBLIC_PATHS)
def test_a_plain_http_request_never_redirects_https_users(production_site, path):
    status, headers = answer(production_site.url + path)
    assert status == 301 and headers["Location"] == f"https://{production_site.url.split('//')[1]}{path}"
    assert answer(production_site.url + path)[1]["X-Cache"] == "MISS"  # the redirect was not stored
    for _ in range(2):
        status, headers = answer(production_site.url + path, HTTPS)
        if path.endswith("model.pt"):  # the stable URL: to a signed link, not to itself over HTTPS
            assert status == 302 and "/files/index-tts/v1/model.pt?expires=" in headers["Location"]
        else:
            assert status == 200


def test_https_pages_are_still_cached_once_per_scheme(production_site):
    page = production_site.url + "/models/index-tts/"
    assert answer(page, HTTPS)[1]["X-Cache"] == "MISS"
    assert answer(page, HTTPS)[1]["X-Cache"] == "HIT"
    assert answer(page, {"X-Forwarded-Proto": "HTTPS "})[0] == 301  # anything but "https" is plain HTTP


def test_withdrawing_purges_the_bytes_varnish_kept(settings, varnish, publish):
    from releases import services

    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", varnish.url
    version = publish("index-tts", "v1", {"model.pt": b"one"})
    link = json.loads(get(f"{varnish.url}/api/v1/models/index-tts/versions/v1")[2])["files"][0]["url"]
    assert link.startswith(f"{varnish.url}/files/index-tts/v1/model.pt?")
    assert get(link)[1]["X-Cache"] == "MISS"
    status, headers, body = get(link)
    assert (status, headers["X-Cache"], body) == (200, "HIT", b"one")

    services.withdraw_version(version)  # purged right after commit (tasks run in-process here)

    status, headers = answer(link)
    assert (status, headers["X-Cache"]) == (410, "MISS")


def test_a_drafts_bytes_are_never_stored(settings, varnish, publish):
    from releases.models import File
    from releases.signing import signer

    publish("index-tts", "v1", {"model.pt": b"draft bytes"}, draft=True)
    file = File.objects.get()
    link = signer().link(file.key, file.name, base_url=varnish.url).url
    for _ in range(2):
        status, headers, body = get(link)
        assert (status, headers["X-Cache"], body) == (200, "MISS", b"draft bytes")
        assert "no-store" in headers["Cache-Control"] and "private" in headers["Cache-Control"]
