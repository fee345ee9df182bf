"""Signers: windowed expiry bounds, the cache, local HMAC links, SigV4 recomputed by botocore, CloudFront."""

import base64
import json
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.auth
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from releases import signing
from releases.signing import CloudFrontSigner, LinkRefused, LocalSigner, S3Signer, Window, verify_local_link
from releases.storage import S3Location

TTL = 3600


@pytest.mark.parametrize("offset", [0, 1, 1799, 3599, 3599.999])
def test_every_link_lives_between_ttl_and_twice_ttl(offset):
    now = 1_800_000_000 - 1_800_000_000 % TTL + offset
    window = Window.current(TTL, now)
    assert TTL < window.expires - now <= 2 * TTL


def test_the_cache_reuses_a_link_within_its_window_and_renews_it_after():
    signer = LocalSigner(TTL)
    start = 1_800_000_000 - 1_800_000_000 % TTL
    first = signer.link("m/v1/model.pt", "model.pt", base_url="https://x", now=start + 5)
    again = signer.link("m/v1/model.pt", "model.pt", base_url="https://x", now=start + TTL - 1)
    later = signer.link("m/v1/model.pt", "model.pt", base_url="https://x", now=start + TTL)
    assert first is again and later.url != first.url
    assert (signer.hits, signer.misses) == (1, 2)
    assert LocalSigner(TTL).link("m/v1/model.pt", "model.pt", base_url="https://x", now=start + 7).url == first.url


def test_local_links_cover_the_whole_path_and_the_expiry():
    link = LocalSigner(TTL).link("m/v1/sub/model.pt", "model.pt", base_url="https://site")
    parts = urlsplit(link.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/files/m/v1/sub/model.pt"
    verify_local_link(parts.path, query["expires"], query["signature"])
    refusals = [
        ("/files/m/v1/sub/other.pt", query["expires"], query["signature"], "does not match"),
        (parts.path, str(int(query["expires"]) + 1), query["signature"], "does not match"),
        (parts.path, query["expires"], query["signature"][:-1] + ("1" if query["signature"][-1] == "0" else "0"), "does not match"),
        (parts.path, "soon", query["signature"], "malformed"),
        (parts.path, None, None, "malformed"),
    ]
    for path, expires, signature, message in refusals:
        with pytest.raises(LinkRefused, match=message):
            verify_local_link(path, expires, signature)
    with pytest.raises(LinkRefused, match="has expired"):
        verify_local_link(parts.path, query["expires"], query["signature"], now=int(query["expires"]))


def botocore_presigned_url(location: S3Location, key: str, filename: str, window: Window, monkeypatch) -> str:
    """The URL botocore itself signs for the same request at the window's start."""
    from datetime import UTC, datetime

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.fromtimestamp(window.start, UTC).replace(tzinfo=None))
    client = boto3.client(
        "s3",
        endpoint_url=location.endpoint_url,
        region_name=location.region,
        aws_access_key_id=location.access_key,
        aws_secret_access_key=location.secret_key,
        aws_session_token=location.session_token,
        config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": location.addressing_style}),
    )
    return client.generate_presigned_url(
        "get_object",
        Params={"Bucket": location.bucket, "Key": key, "ResponseContentDisposition": signing.content_disposition(filename)},
        ExpiresIn=window.lifetime,
    )


def same_url(ours: str, theirs: str) -> None:
    a, b = urlsplit(ours), urlsplit(theirs)
    assert (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)
    assert parse_qs(a.query) == parse_qs(b.query)


@pytest.mark.parametrize(
    "location",
    [
        S3Location("models", "us-east-1", "http://127.0.0.1:9000", "path", "AKIDEXAMPLE", "secret/key+1"),
        S3Location("models", "eu-west-1", None, "virtual", "AKIDEXAMPLE", "s3cr3t", session_token="token/with+chars="),
    ],
    ids=["path-style endpoint", "aws virtual host with session token"],
)
@pytest.mark.parametrize("key", ["index-tts/v1/model.pt", "index-tts/v1/sub dir/ünïcode+plus&amp;.bin"])
def test_sigv4_links_match_botocores_signature(location, key, monkeypatch):
    window = Window.current(TTL)
    filename = key.rsplit("/", 1)[-1]
    ours = S3Signer(TTL, location).link(key, filename).url
    same_url(ours, botocore_presigned_url(location, key, filename, window, monkeypatch))


def test_rotating_credentials_are_fetched_again_each_window():
    fetched = []

    def refresh():
        fetched.append(1)
        return S3Location("models", "us-east-1", None, "virtual", f"ASIA{len(fetched)}", "s", session_token="t")

    signer = S3Signer(TTL, refresh(), refresh=refresh)
    start = 1_800_000_000 - 1_800_000_000 % TTL
    first = signer.link("k", "k", now=start + 1)
    signer.link("other", "other", now=start + 2)  # same window: same credentials
    later = signer.link("k", "k", now=start + TTL)
    assert "ASIA2" in first.url and "ASIA3" in later.url and len(fetched) == 3


def test_sigv4_refuses_lifetimes_beyond_seven_days():
    location = S3Location("models", "us-east-1", None, "virtual", "a", "b")
    with pytest.raises(ValueError, match="7 days"):
        signing.presign_s3_get(location, "k", signed_at=0, expires_in=604801, params={})
    S3Signer(302400, location).link("k", "k")  # the largest TTL still fits


def test_content_disposition_keeps_non_ascii_names():
    assert signing.content_disposition("model.pt") == 'attachment; filename="model.pt"'
    assert signing.content_disposition('vö"x.bin') == "attachment; filename=\"v__x.bin\"; filename*=UTF-8''v%C3%B6%22x.bin"


def test_cloudfront_links_carry_a_canned_policy_signature_that_verifies():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signer = CloudFrontSigner(TTL, "https://cdn.example.org/", "K2JCJMDEHXQW5F", pem)
    link = signer.link("index-tts/v1/model.pt", "model.pt")
    parts = urlsplit(link.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://cdn.example.org/index-tts/v1/model.pt"
    assert query["Key-Pair-Id"] == "K2JCJMDEHXQW5F" and int(query["Expires"]) == int(link.expires_at.timestamp())
    policy = json.dumps(
        {"Statement": [{"Resource": "https://cdn.example.org/index-tts/v1/model.pt",
                        "Condition": {"DateLessThan": {"AWS:EpochTime": int(query["Expires"])}}}]},
        separators=(",", ":"),
    )  # fmt: skip
    raw = base64.b64decode(query["Signature"].replace("-", "+").replace("_", "=").replace("~", "/"))
    private.public_key().verify(raw, policy.encode(), padding.PKCS1v15(), hashes.SHA1())


def test_signer_follows_settings(settings, s3_store):
    signing._signer = None
    assert signing.signer().name == "s3"
    settings.STORAGES = {**settings.STORAGES, "releases": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}
    assert signing.signer().name == "local"
    settings.SIGNED_URL_TTL = 60
    assert signing.signer().ttl == 60


def test_warm_signing_signs_once_per_window():
    signer = LocalSigner(TTL)
    links = {signer.link("m/v1/a", "a").url for _ in range(1000)}
    assert len(links) == 1 and (signer.hits, signer.misses) == (999, 1)  # its cost is shown by `make bench`
