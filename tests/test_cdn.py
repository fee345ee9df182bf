"""CDN backends against real servers: varnishd with the shipped VCL, a Fastly-shaped API
on loopback that checks the request format, and moto's CloudFront."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import boto3
import pytest

from releases import cdn, outbox
from releases.models import File, OutboxEntry

from .data import S3_TEST_CREDENTIALS
from .servers import PURGE_TOKEN, REPO_ROOT

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


def purge(url: str, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/", method="PURGE", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.reason
    except urllib.error.HTTPError as error:
        return error.code, error.reason


def test_varnish_refuses_purges_without_keys(varnish):
    assert purge(varnish.url, {"X-Purge-Token": varnish.purge_token}) == (
        400,
        "PURGE needs an xkey-purge or xkey-softpurge header",
    )
    backend = cdn.VarnishCdn(varnish.url, varnish.purge_token)
    assert backend.purge(["models", "model-x"], []) == 1


@pytest.mark.parametrize(
    "token",
    [None, "", PURGE_TOKEN[:-1] + "x", PURGE_TOKEN[:-1], PURGE_TOKEN + "-and-more", PURGE_TOKEN.upper(), "t"],
)
def test_a_purge_without_the_sites_token_is_refused_and_changes_nothing(settings, varnish, publish, token):
    """Anyone whose requests come from an address in the ACL (behind a load balancer: everyone)."""
    publish("index-tts", "v1", {"model.pt": b"one"})
    page = f"{varnish.url}/models/index-tts/"
    get(page)
    assert get(page)[1]["X-Cache"] == "HIT"
    headers = {"xkey-purge": "models model-index-tts"} | ({"X-Purge-Token": token} if token is not None else {})
    assert purge(varnish.url, headers) == (403, "PURGE needs the site's X-Purge-Token")
    assert purge(varnish.url, {**headers, "xkey-softpurge": "model-index-tts"})[0] == 403
    assert get(page)[1]["X-Cache"] == "HIT"  # nothing was purged
    assert purge(varnish.url, {**headers, "X-Purge-Token": varnish.purge_token}) == (200, "Purged 1 objects")
    assert get(page)[1]["X-Cache"] == "MISS"


def test_a_site_with_the_wrong_token_purges_nothing_and_keeps_retrying(settings, varnish, publish):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", varnish.url
    version = publish("index-tts", "v1", {"model.pt": b"one"})
    page = f"{varnish.url}/models/index-tts/"
    get(page)
    settings.CDN_PURGE_TOKEN = "not-" + varnish.purge_token
    from releases import services

    services.yank_version(version, "broken")
    status, headers, body = get(page)
    assert headers["X-Cache"] == "HIT" and b"yanked" not in body.lower()
    entries = OutboxEntry.objects.filter(state="pending")
    assert entries.count() == 3 and all("403" in entry.last_error for entry in entries)
    settings.CDN_PURGE_TOKEN = varnish.purge_token
    OutboxEntry.objects.update(next_attempt_at="2000-01-01T00:00Z")
    assert outbox.drain("purge").done == 3
    assert get(page)[1]["X-Cache"] == "MISS"


@pytest.mark.parametrize("configured", [None, ""], ids=["unset", "empty"])
def test_varnishd_without_a_purge_token_refuses_every_purge(live_server, configured):
    from .servers import Varnish

    cache = Varnish(int(live_server.url.rsplit(":", 1)[1]), purge_token=configured)
    try:
        for token in (None, ""):
            headers = {"xkey-purge": "models"} | ({"X-Purge-Token": token} if token is not None else {})
            assert purge(cache.url, headers) == (403, "Purging is off: varnishd has no VARNISH_PURGE_TOKEN")
    finally:
        cache.stop()


def test_the_purge_token_never_reaches_the_site(recording_server):
    from .servers import Varnish

    cache = Varnish(int(recording_server.url.rsplit(":", 1)[1]))
    try:
        get(f"{cache.url}/anything", {"X-Purge-Token": cache.purge_token, "X-Other": "kept"})
        (request,) = recording_server.requests
        assert request.headers["x-other"] == "kept" and "x-purge-token" not in request.headers
    finally:
        cache.stop()


def test_varnish_refuses_purges_from_addresses_outside_its_acl_even_with_the_token(live_server):
    from .servers import Varnish

    cache = Varnish(int(live_server.url.rsplit(":", 1)[1]), purgers=("192.0.2.10",))
    try:
        with pytest.raises(cdn.CdnError, match="403"):
            cdn.VarnishCdn(cache.url, cache.purge_token).purge(["models"], [])
    finally:
        cache.stop()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CDN_PURGE_TOKEN": ""}, "DJANGO_ENV=production with CDN_BACKEND=varnish needs CDN_PURGE_TOKEN"),
        ({"CDN_PURGE_TOKEN": "short"}, "needs CDN_PURGE_TOKEN (32+ random characters"),
        ({"CDN_PURGE_URL": "http://a:80,varnish-b:80"}, "CDN_PURGE_URL must list http:// or https:// addresses"),
    ],
)
def test_production_refuses_purges_it_could_not_send(tmp_path, env, message):
    from .test_settings import load_settings

    production = {
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": "x7" * 30 + "kQ9",
        "DJANGO_ALLOWED_HOSTS": "models.example.org",
        "CDN_BACKEND": "varnish",
        "CDN_PURGE_URL": "http://varnish-a:80,http://varnish-b:80/",
        "CDN_PURGE_TOKEN": "k" * 32,
    }
    assert load_settings(tmp_path, **production).returncode == 0
    result = load_settings(tmp_path, **(production | env))
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_every_address_in_cdn_purge_url_is_a_cache_to_purge(settings):
    settings.CDN_BACKEND, settings.CDN_PURGE_TOKEN = "varnish", "secret"
    settings.CDN_PURGE_URL = "http://varnish-a:80,http://varnish-b:80"
    caches = cdn.backends()
    assert [(c.target, c.token) for c in caches] == [
        ("http://varnish-a:80", "secret"),
        ("http://varnish-b:80", "secret"),
    ]


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


@pytest.fixture
def cloudfront(settings, moto_endpoint):
    """A distribution on moto's CloudFront, the site's CDN; returns a function listing the paths of
    each invalidation batch sent to it, oldest first."""
    client = boto3.client(
        "cloudfront",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=S3_TEST_CREDENTIALS["secret_key"],
    )
    distribution = client.create_distribution(
        DistributionConfig={
            "CallerReference": f"tests-{uuid.uuid4()}",
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
    settings.WARM_MAX_BYTES = 0  # nothing to warm: cdn.example.org is not reachable from here

    def batches() -> list[list[str]]:
        listed = client.list_invalidations(DistributionId=distribution["Id"])["InvalidationList"].get("Items", [])
        found = [client.get_invalidation(DistributionId=distribution["Id"], Id=item["Id"])["Invalidation"]
                 for item in listed]  # fmt: skip
        return [item["InvalidationBatch"]["Paths"]["Items"] for item in sorted(found, key=lambda i: i["CreateTime"])]

    return batches


@pytest.fixture
def cloudfront_signed(settings, cloudfront):
    """Downloads are CloudFront-signed links: the distribution caches storage's objects by key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    settings.CLOUDFRONT_PRIVATE_KEY = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    settings.CLOUDFRONT_KEY_ID = "K2JCJMDEHXQW5F"
    return cloudfront


def test_cloudfront_invalidates_the_paths_the_keys_cover_with_every_query(cloudfront, publish):
    from releases import services

    version = publish("index-tts", "v1", {"model.pt": b"one"})
    services.yank_version(version, "broken")
    published, yanked = cloudfront()  # one invalidation per change, not one per key or file
    for batch in (published, yanked):
        assert {"/", "/?*", "/api/v1/models", "/api/v1/models?*", "/feeds/releases.atom"} <= set(batch)
        assert {"/models/index-tts/*", "/api/v1/models/index-tts", "/api/v1/models/index-tts?*"} <= set(batch)
        assert len(batch) == len(set(batch))
    assert "/files/index-tts/v1/*" in yanked
    # Covered by /models/index-tts/* and /api/v1/models/index-tts/*: CloudFront allows 15 wildcards in progress.
    assert "/models/index-tts/v1/*" not in yanked and "/api/v1/models/index-tts/versions/v1/*" not in yanked
    assert sum(path.endswith("*") for path in yanked) == 6


def test_paths_a_wildcard_covers_are_left_out():
    assert cdn.uncovered(["/m/*", "/m/v1/*", "/m", "/m?*", "/m/a.bin", "/", "/?*", "/n/x", "/m/*"]) == [
        "/", "/?*", "/m", "/m/*", "/m?*", "/n/x",
    ]  # fmt: skip


def test_withdrawing_invalidates_the_objects_cloudfront_signed_downloads_cached(cloudfront_signed, publish):
    from releases import services

    version = publish("index-tts", "v1", {"model.pt": b"one", "sub/c onfig.yaml": b"a: 1\n"})
    from releases.signing import signer

    file = File.objects.get(path="model.pt")
    assert signer().link(file.key, file.name).url.startswith("https://cdn.example.org/index-tts/v1/model.pt?Expires=")
    services.yank_version(version, "broken")  # yanked bytes stay downloadable: nothing to drop
    services.withdraw_version(version)
    published, yanked, withdrawn = cloudfront_signed()
    objects = {"/index-tts/v1/model.pt", "/index-tts/v1/sub/c%20onfig.yaml"}
    assert not objects & set(published + yanked)
    assert objects <= set(withdrawn)


def test_deleting_a_draft_invalidates_its_objects_at_cloudfront(cloudfront_signed, publish):
    from releases import services

    version = publish("index-tts", "v2", {"model.pt": b"draft"}, draft=True)
    services.delete_draft(version)
    (deleted,) = cloudfront_signed()
    assert "/index-tts/v2/model.pt" in deleted and "/files/index-tts/v2/*" in deleted


def test_without_cloudfront_signed_downloads_no_object_is_invalidated(cloudfront, publish):
    """The bytes CloudFront keeps are then the site's /files/ answers, covered by their own path."""
    from releases import services

    services.withdraw_version(publish("index-tts", "v1", {"model.pt": b"one"}))
    assert not any(path.startswith("/index-tts/") for batch in cloudfront() for path in batch)


def test_none_backend_sends_nothing(settings):
    settings.CDN_BACKEND = "none"
    assert cdn.backends() == [] and cdn.Cdn().purge(["models"], ["/"]) == 0


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
