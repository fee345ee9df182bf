"""Signed links against an S3 that checks signatures and expiry: LocalStack's S3 with signature
validation on (moto checks neither). Published with publish_release, downloaded by plain HTTP."""

import json
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import botocore.config
import pytest
from django.core.management import call_command

from releases import aws, signing

from .servers import wait_until
from .test_aws import Provider, signed_by

pytestmark = pytest.mark.django_db(transaction=True)

# LocalStack accepts any access key id signed with the secret "test".
SECRET = "test"
CONTENT = bytes(range(256)) * 400


def http_get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def checked_s3(settings, localstack_endpoint):
    """The site's release storage on a fresh LocalStack bucket."""
    from releases.storage import release_store

    bucket = f"releases-{uuid.uuid4().hex[:12]}"
    config = botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"})
    boto3.client("s3", endpoint_url=localstack_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key=SECRET, config=config).create_bucket(Bucket=bucket)  # fmt: skip
    options = {"bucket_name": bucket, "endpoint_url": localstack_endpoint, "region_name": "us-east-1",
               "addressing_style": "path", "access_key": "test", "secret_key": SECRET}  # fmt: skip
    settings.RELEASE_STORAGE = {"BACKEND": "s3", "OPTIONS": options}
    signing.SIGNER.set(None)
    return release_store()


@pytest.fixture
def published(checked_s3, write_file):
    source = write_file("release/model.pt", CONTENT)
    write_file("release/sub/config.yaml", b"sample_rate: 24000\n")
    call_command("publish_release", "index-tts", "v1", str(source), str(source.parent / "sub" / "config.yaml"))
    return checked_s3


def fresh_link(client, path="model.pt") -> str:
    response = client.get(f"/models/index-tts/v1/{path}")
    assert response.status_code == 302
    return response["Location"]


def test_the_stable_url_leads_to_the_published_bytes(client, published, localstack_endpoint):
    link = fresh_link(client)
    assert link.startswith(f"{localstack_endpoint}/") and "X-Amz-Signature=" in link
    assert http_get(link) == (200, CONTENT)
    api = client.get("/api/v1/models/index-tts/versions/v1").json()
    assert {file["path"]: http_get(file["url"]) for file in api["files"]} == {
        "model.pt": (200, CONTENT),
        "sub/config.yaml": (200, b"sample_rate: 24000\n"),
    }


def test_a_range_of_a_signed_link(client, published):
    assert http_get(fresh_link(client), {"Range": "bytes=1000-1999"}) == (206, CONTENT[1000:2000])


def changed(link: str, name: str) -> str:
    """The link with one character of query parameter `name` changed."""
    value = parse_qs(urlsplit(link).query)[name][0]
    other = value[:-1] + ("0" if value[-1] != "0" else "1")
    return link.replace(f"{name}={quote(value, safe='-_.~')}", f"{name}={quote(other, safe='-_.~')}")


@pytest.mark.parametrize("name", ["X-Amz-Signature", "X-Amz-Expires", "X-Amz-Date", "response-content-disposition"])
def test_one_changed_character_is_refused(client, published, name):
    link = fresh_link(client)
    tampered = changed(link, name)
    assert tampered != link
    status, body = http_get(tampered)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert http_get(link)[0] == 200


def test_an_expired_link_is_refused_and_the_stable_url_hands_out_a_fresh_one(client, published, settings):
    settings.SIGNED_URL_TTL = 1
    link = fresh_link(client)
    expires = signed_by(link)[2]
    assert http_get(link)[0] == 200
    wait_until(lambda: time.time() > expires + 1, timeout=10, what="the link's expiry")
    status, body = http_get(link)
    assert status == 403 and b"expired" in body
    again = fresh_link(client)
    assert again != link and http_get(again) == (200, CONTENT)


def test_a_session_token_link(client, published, settings):
    options = {**settings.RELEASE_STORAGE["OPTIONS"], "security_token": "session/token+value="}
    settings.RELEASE_STORAGE = {**settings.RELEASE_STORAGE, "OPTIONS": options}
    link = fresh_link(client)
    assert parse_qs(urlsplit(link).query)["X-Amz-Security-Token"] == ["session/token+value="]
    assert http_get(link) == (200, CONTENT)
    assert http_get(changed(link, "X-Amz-Security-Token"))[0] == 403  # the token is signed too


def test_short_lived_credentials_give_links_that_work_until_their_expiry(live_server, published):
    """Credentials that live 8 s, links of at least 3 s, for 25 s of requests against a live server.

    Every link works when handed out and just before its expires_at, is refused after it, and
    never outlives the credentials that signed it; no request fetches credentials.
    """
    ttl, provider = 3, Provider(lifetime=8)  # 2 x ttl + a little: links are often cut at the credentials

    def slow_sts() -> aws.CredentialSet:
        time.sleep(0.5)  # a provider that takes its time: a request waiting on it would show
        issued = provider()
        return aws.CredentialSet(issued.access_key, SECRET, issued.token, issued.expires_at)

    keeper = aws.CredentialKeeper(slow_sts, ttl)
    signing.SIGNER.set(signing.S3Signer(ttl, published.signing_location(), keeper))
    keeper.start()

    checks, results = [], []
    api = f"{live_server.url}/api/v1/models/index-tts/versions/v1"
    end = time.time() + 25
    while time.time() < end or checks:
        now = time.time()
        if now < end:
            with urllib.request.urlopen(api, timeout=10) as response:
                link = json.load(response)["files"][0]["url"]
            access_key, _, expires = signed_by(link)
            assert expires - now >= ttl - 1, "a link handed out with less than the TTL"
            assert expires <= provider.issued[access_key], "a link that outlives its credentials"
            results.append(("handed out", link, http_get(link)[0], 200))
            checks += [(expires - 1.0, link, 200), (expires + 1.5, link, 403)]
        due = [check for check in checks if check[0] <= time.time()]
        for check in due:
            checks.remove(check)
            results.append(("checked", check[1], http_get(check[1])[0], check[2]))
        time.sleep(0.25)  # the pace of requests, not a wait for a condition

    wrong = [result for result in results if result[2] != result[3]]
    assert not wrong, wrong[:3]
    assert len({signed_by(link)[0] for _, link, _, _ in results}) >= 2  # the credentials did rotate
    assert set(provider.threads[1:]) == {"aws-credentials"}  # only the first fetch, at start, was not in the background
