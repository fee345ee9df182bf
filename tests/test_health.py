"""Liveness and readiness, and the site keeping working while storage is down."""

import time

import pytest

from .servers import free_port

pytestmark = pytest.mark.django_db


def test_healthz_does_no_io(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize("host", ["10.0.0.5:8000", "127.0.0.1:8000", "127.0.0.1"])
def test_probes_answer_on_the_address_a_probe_uses_and_other_paths_keep_the_host_check(
    client, settings, s3_store, host
):
    """Docker's HEALTHCHECK and load balancers probe a node by its address, which ALLOWED_HOSTS does not list."""
    settings.ALLOWED_HOSTS = ["models.example.org"]
    settings.SECURE_SSL_REDIRECT = True  # as in production: the probes speak plain HTTP
    assert client.get("/healthz", HTTP_HOST=host).status_code == 200
    ready = client.get("/readyz", HTTP_HOST=host)
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}
    for path in ("/", "/api/v1/models", "/fetch-model.sh", "/healthz/", "/metrics"):
        assert client.get(path, HTTP_HOST=host).status_code == 400, path
    assert client.get("/", HTTP_HOST="models.example.org").status_code == 301  # to https


TOKEN = {"HTTP_AUTHORIZATION": "Bearer t0ken"}


@pytest.fixture
def metrics_token(settings):
    settings.METRICS_TOKEN = "t0ken"


def test_readyz_when_everything_answers(client, s3_store, metrics_token):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    detailed = client.get("/readyz", **TOKEN).json()
    assert detailed == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok", "signing": "ok"}}


def dead_s3(settings):
    from botocore.config import Config

    options = {
        **settings.RELEASE_STORAGE["OPTIONS"],
        "endpoint_url": f"http://127.0.0.1:{free_port()}",
        "client_config": Config(retries={"max_attempts": 1}, connect_timeout=1),
    }
    settings.RELEASE_STORAGE = {**settings.RELEASE_STORAGE, "OPTIONS": options}


def test_readyz_names_storage_when_it_is_down(client, settings, s3_store, metrics_token):
    dead_s3(settings)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failing": ["storage"]}  # no host, port or path
    body = client.get("/readyz", **TOKEN).json()
    assert body["checks"]["database"] == "ok" and body["detail"].startswith("storage: Could not reach bucket")


def test_readyz_names_the_broker_when_it_is_down(client, settings, metrics_token):
    settings.REDIS_URL = f"redis://:secret@127.0.0.1:{free_port()}/0"
    anonymous = client.get("/readyz")
    assert anonymous.json() == {"status": "unavailable", "failing": ["broker"]}
    assert "127.0.0.1" not in anonymous.content.decode()
    body = client.get("/readyz", HTTP_AUTHORIZATION="Bearer wrong").json()
    assert "detail" not in body
    body = client.get("/readyz", **TOKEN).json()
    assert body["detail"].startswith("broker: Redis at redis://***@127.0.0.1:") and "secret" not in body["detail"]


def test_pages_api_and_redirects_keep_working_while_storage_is_down(client, settings, s3_store, publish):
    publish("index-tts", "v1", {"model.pt": b"weights"})
    dead_s3(settings)
    from releases import signing

    signing.SIGNER.set(None)  # a fresh process: nothing cached
    assert client.get("/models/index-tts/").status_code == 200
    assert client.get("/models/index-tts/v1/").status_code == 200
    api = client.get("/api/v1/models/index-tts/versions/latest")
    assert api.status_code == 200 and "X-Amz-Signature=" in api.json()["files"][0]["url"]
    assert client.get("/models/index-tts/latest/model.pt").status_code == 302
    assert client.get("/readyz").status_code == 503


def lose_aws_credentials(settings, tmp_path, monkeypatch):
    """S3 storage with no keys configured and botocore's chain finding nothing (no profile, no role)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = {k: v for k, v in settings.RELEASE_STORAGE["OPTIONS"].items() if k not in {"access_key", "secret_key"}}
    settings.RELEASE_STORAGE = {**settings.RELEASE_STORAGE, "OPTIONS": options}
    from releases import signing

    signing.SIGNER.set(None)


def test_links_that_cannot_be_signed_are_a_503_that_says_so(client, settings, s3_store, publish, tmp_path, monkeypatch):
    publish("index-tts", "v1", {"model.pt": b"weights"})
    lose_aws_credentials(settings, tmp_path, monkeypatch)
    redirect = client.get("/models/index-tts/v1/model.pt")
    assert redirect.status_code == 503 and redirect["Retry-After"] == "30" and "no-store" in redirect["Cache-Control"]
    assert redirect.content.decode().startswith("Download links cannot be signed right now")
    api = client.get("/api/v1/models/index-tts/versions/v1")
    assert api.status_code == 503 and api.json() == {
        "detail": "Download links cannot be signed right now; try again in a minute."
    }
    assert client.get("/models/index-tts/v1/").status_code == 503
    settings.METRICS_TOKEN = "t0ken"
    ready = client.get("/readyz", **TOKEN)
    assert ready.status_code == 503 and "signing" in ready.json()["failing"]  # (storage too: same credentials)
    assert ready.json()["checks"]["signing"].startswith("no valid AWS credentials (No AWS credentials found")


def test_metrics_show_the_signing_credentials(client, settings, s3_store):
    from releases import signing

    signing.SIGNER.set(None)
    settings.METRICS_TOKEN = "t0ken"
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").content.decode()
    assert "model_releases_signing_credentials_seconds_left +Inf" in text  # static keys never expire
    assert "model_releases_signing_credentials_refresh_failures 0.0" in text


def test_readyz_warns_while_links_would_end_before_the_ttl(client, settings, s3_store, metrics_token):
    from releases import aws, signing

    near_rotation = aws.CredentialKeeper(
        lambda: aws.CredentialSet("ASIA1", "s", "t", expires_at=time.time() + 300), 600
    )
    signing.SIGNER.set(signing.S3Signer(600, s3_store.signing_location(), near_rotation))
    body = client.get("/readyz")
    assert body.status_code == 200 and body.json() == {"status": "ok", "warnings": ["signing"]}
    detail = client.get("/readyz", **TOKEN).json()["warning_details"]["signing"]
    assert detail.startswith("the AWS credentials expire in 29")
