"""Signers: windowed expiry bounds, the cache, local HMAC links, SigV4 recomputed by botocore, CloudFront."""

from urllib.parse import parse_qs, quote, urlsplit

import boto3
import botocore.auth
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from releases import aws, signing
from releases.signing import CloudFrontSigner, LinkRefused, LocalSigner, S3Signer, Window, verify_local_link
from releases.storage.s3 import S3Config, S3Store

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


def local_link() -> tuple[str, str, str]:
    """(path, expires, signature) of a fresh local link."""
    link = LocalSigner(TTL).link("m/v1/sub/model.pt", "model.pt", base_url="https://site")
    parts = urlsplit(link.url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return parts.path, query["expires"], query["signature"]


def test_a_local_link_covers_the_whole_path():
    path, expires, signature = local_link()
    assert path == "/files/m/v1/sub/model.pt"
    verify_local_link(path, expires, signature)


def _other_hex(text: str) -> str:
    return text[:-1] + ("1" if text[-1] == "0" else "0")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, e, s: ("/files/m/v1/sub/other.pt", e, s), "does not match"),
        (lambda p, e, s: (p, str(int(e) + 1), s), "does not match"),
        (lambda p, e, s: (p, e, _other_hex(s)), "does not match"),
        (lambda p, e, s: (p, "soon", s), "malformed"),
        (lambda p, e, s: (p, None, None), "malformed"),
    ],
    ids=["another path", "another expiry", "another signature", "a word for the expiry", "nothing"],
)
def test_a_changed_local_link_is_refused(change, message):
    with pytest.raises(LinkRefused, match=message):
        verify_local_link(*change(*local_link()))


def test_an_expired_local_link_is_refused():
    path, expires, signature = local_link()
    with pytest.raises(LinkRefused, match="has expired"):
        verify_local_link(path, expires, signature, now=int(expires))


def static(access_key="AKIDEXAMPLE", secret_key="secret/key+1", token=None, ttl=TTL) -> aws.CredentialKeeper:
    return aws.CredentialKeeper(lambda: aws.CredentialSet(access_key, secret_key, token), ttl)


def s3_store_for(bucket: str, endpoint_url: str | None, region: str, addressing_style: str) -> S3Store:
    return S3Store(
        S3Config(
            bucket_name=bucket,
            endpoint_url=endpoint_url,
            region_name=region,
            addressing_style=addressing_style,
            access_key="AKIDEXAMPLE",
            secret_key="secret/key+1",
        )
    )


def botocore_presigned_url(
    store: S3Store, credentials: aws.CredentialSet, key: str, filename: str, window: Window, monkeypatch
) -> str:
    """The URL botocore itself signs for the same request at the window's start: the oracle."""
    from datetime import UTC, datetime

    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: datetime.fromtimestamp(window.start, UTC).replace(tzinfo=None)
    )
    client = boto3.client(
        "s3",
        endpoint_url=store.storage.endpoint_url,
        region_name=store.storage.region_name,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        config=botocore.config.Config(
            signature_version="s3v4", s3={"addressing_style": store.storage.addressing_style}
        ),
    )
    return client.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": store.bucket,
            "Key": key,
            "ResponseContentDisposition": signing.content_disposition(filename),
        },
        ExpiresIn=window.lifetime,
    )


def same_url(ours: str, theirs: str) -> None:
    """Same scheme, authority, path and query parameters (their order may differ), signature included."""
    a, b = urlsplit(ours), urlsplit(theirs)
    assert (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)
    assert parse_qs(a.query, keep_blank_values=True) == parse_qs(b.query, keep_blank_values=True)


ENDPOINTS = {
    "aws us-east-1": ("models", None, "us-east-1", "auto"),
    "aws eu-west-1": ("models", None, "eu-west-1", "auto"),
    "aws ap-southeast-2 virtual": ("models", None, "ap-southeast-2", "virtual"),
    "aws us-west-2 path style": ("models", None, "us-west-2", "path"),
    "aws dotted bucket": ("models.example.org", None, "eu-central-1", "auto"),
    "aws dotted bucket, virtual asked": ("models.example.org", None, "us-east-1", "virtual"),
    "custom endpoint, path style": ("models", "http://127.0.0.1:9000", "us-east-1", "path"),
    "custom endpoint, explicit https port": ("models", "https://s3.example.org:443", "us-east-1", "path"),
    "custom endpoint, explicit http port": ("models", "http://minio.internal:80", "us-east-1", "path"),
    "custom endpoint, virtual-hosted": ("models", "https://s3.example.org", "eu-west-1", "virtual"),
    "custom endpoint, virtual-hosted with port": ("models", "https://s3.example.org:443", "eu-west-1", "virtual"),
    "custom endpoint behind a path prefix": ("models", "https://gateway.example.org/s3", "us-east-1", "path"),
    "custom endpoint, uncommon port": ("models", "https://s3.example.org:8443", "us-east-1", "path"),
}
KEYS = {
    "plain": "index-tts/v1/model.pt",
    "nested": "index-tts/v1/checkpoints/a/b/config.yaml",
    "spaces": "index-tts/v1/sub dir/my model.bin",
    "unicode nfc": "index-tts/v1/caf\u00e9-\u00fc\u00f1\u00ef.bin",
    "unicode nfd": "index-tts/v1/cafe\u0301-u\u0308.bin",
    "reserved characters": "index-tts/v1/+ % ~ ! $ & ' ( ) * , ; = : @ [ ].bin",
}
CREDENTIALS = {
    "static keys": aws.CredentialSet("AKIDEXAMPLE", "secret/key+1"),
    "session token": aws.CredentialSet("ASIAEXAMPLE", "s3cr3t", token="token/with+chars=="),
}


def check_against_botocore(endpoint, key, credentials, monkeypatch):
    store = s3_store_for(*ENDPOINTS[endpoint])
    signer = S3Signer(TTL, store.signing_location(), aws.CredentialKeeper(lambda: credentials, TTL))
    filename = key.rsplit("/", 1)[-1]
    link = signer.link(key, filename)
    same_url(link.url, botocore_presigned_url(store, credentials, key, filename, Window.current(TTL), monkeypatch))


@pytest.mark.parametrize("credentials", CREDENTIALS, ids=str)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_every_endpoint_form_signs_like_botocore(endpoint, credentials, monkeypatch):
    check_against_botocore(endpoint, KEYS["reserved characters"], CREDENTIALS[credentials], monkeypatch)


@pytest.mark.parametrize("key", KEYS, ids=str)
@pytest.mark.parametrize(
    "endpoint",
    ["aws eu-west-1", "custom endpoint, explicit https port", "custom endpoint behind a path prefix"],
    ids=str,
)
def test_every_key_signs_like_botocore(endpoint, key, monkeypatch):
    check_against_botocore(endpoint, KEYS[key], CREDENTIALS["session token"], monkeypatch)


def test_default_ports_are_not_signed_and_path_prefixes_are_kept():
    """The cases botocore and real servers differ on from a naive reading of the endpoint."""
    with_port = s3_store_for(*ENDPOINTS["custom endpoint, explicit https port"]).signing_location()
    assert with_port.host == "s3.example.org"
    prefixed = s3_store_for(*ENDPOINTS["custom endpoint behind a path prefix"]).signing_location()
    assert prefixed.prefix == "/s3/models/"
    dotted = s3_store_for(*ENDPOINTS["aws dotted bucket"]).signing_location()
    assert "models.example.org" not in dotted.host and dotted.prefix == "/models.example.org/"


def test_sigv4_refuses_lifetimes_beyond_seven_days():
    location = s3_store_for(*ENDPOINTS["aws eu-west-1"]).signing_location()
    credentials = CREDENTIALS["static keys"]
    with pytest.raises(ValueError, match="7 days"):
        signing.presign_s3_get(location, credentials, "k", signed_at=0, expires_in=604801, params={})
    link = S3Signer(302400, location, static(ttl=302400)).link("k", "k")  # the largest TTL still fits
    assert "X-Amz-Expires=604800" in link.url


def test_content_disposition_keeps_non_ascii_names():
    assert signing.content_disposition("model.pt") == 'attachment; filename="model.pt"'
    assert (
        signing.content_disposition('vö"x.bin') == "attachment; filename=\"v__x.bin\"; filename*=UTF-8''v%C3%B6%22x.bin"
    )


@pytest.mark.parametrize(
    "key", ["index-tts/v1/model.pt", "index-tts/v1/sub dir/caf\u00e9 +.bin"], ids=["plain", "encoded"]
)
def test_cloudfront_links_are_the_ones_botocore_signs(key):
    """botocore's CloudFrontSigner is the oracle: same URL, same canned policy, same RSA-SHA1 signature."""
    from datetime import UTC, datetime

    from botocore.signers import CloudFrontSigner as BotocoreCloudFrontSigner

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    link = CloudFrontSigner(TTL, "https://cdn.example.org/", "K2JCJMDEHXQW5F", pem).link(key, key.rsplit("/", 1)[-1])

    oracle = BotocoreCloudFrontSigner(
        "K2JCJMDEHXQW5F", lambda message: private.sign(message, padding.PKCS1v15(), hashes.SHA1())
    )
    resource = link.url.split("?", 1)[0]
    assert resource == "https://cdn.example.org/" + quote(key, safe="/")
    expected = oracle.generate_presigned_url(
        resource, date_less_than=datetime.fromtimestamp(link.expires_at.timestamp(), UTC)
    )
    assert link.url == expected


def test_signer_follows_settings(settings, s3_store, tmp_path):
    signing.SIGNER.set(None)
    assert signing.signer().name == "s3"
    settings.RELEASE_STORAGE = {"BACKEND": "local", "OPTIONS": {"location": str(tmp_path)}}
    assert signing.signer().name == "local"
    settings.SIGNED_URL_TTL = 60
    assert signing.signer().ttl == 60


def test_warm_signing_signs_once_per_window():
    signer = LocalSigner(TTL)
    links = {signer.link("m/v1/a", "a").url for _ in range(1000)}
    assert len(links) == 1 and (signer.hits, signer.misses) == (999, 1)  # its cost is shown by `make bench`
