"""Liveness and readiness, and the site keeping working while storage is down."""

import pytest

from .servers import free_port

pytestmark = pytest.mark.django_db


def test_healthz_does_no_io(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_when_everything_answers(client, s3_store):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def dead_s3(settings):
    from botocore.config import Config

    options = {
        **settings.STORAGES["releases"]["OPTIONS"],
        "endpoint_url": f"http://127.0.0.1:{free_port()}",
        "client_config": Config(retries={"max_attempts": 1}, connect_timeout=1),
    }
    settings.STORAGES = {**settings.STORAGES, "releases": {**settings.STORAGES["releases"], "OPTIONS": options}}


def test_readyz_names_storage_when_it_is_down(client, settings, s3_store):
    dead_s3(settings)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
    assert body["detail"].startswith("storage: Could not reach bucket")


def test_readyz_names_the_broker_when_it_is_down(client, settings):
    settings.REDIS_URL = f"redis://:secret@127.0.0.1:{free_port()}/0"
    body = client.get("/readyz").json()
    assert body["detail"].startswith("broker: Redis at redis://***@127.0.0.1:") and "secret" not in body["detail"]


def test_pages_api_and_redirects_keep_working_while_storage_is_down(client, settings, s3_store, publish):
    publish("index-tts", "v1", {"model.pt": b"weights"})
    dead_s3(settings)
    from releases import signing

    signing._signer = None  # a fresh process: nothing cached
    assert client.get("/models/index-tts/").status_code == 200
    assert client.get("/models/index-tts/v1/").status_code == 200
    api = client.get("/api/v1/models/index-tts/versions/latest")
    assert api.status_code == 200 and "X-Amz-Signature=" in api.json()["files"][0]["url"]
    assert client.get("/models/index-tts/latest/model.pt").status_code == 302
    assert client.get("/readyz").status_code == 503
