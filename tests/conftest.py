"""Shared fixtures: real services on loopback, storage per test, factories.

Every test gets release storage of its own (local, under tmp_path) unless it
asks for `s3_store`, which points the site at a fresh bucket on a moto server
running in server mode on a free loopback port.
"""

import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from releases.storage import release_store

from .clients import FILES
from .data import S3_TEST_CREDENTIALS, WEIGHTS
from .servers import REPO_ROOT

# Modules whose tests start servers or processes: the slow tier (`make test` runs every tier).
SLOW_MODULES = {
    "test_beat", "test_browser", "test_cdn", "test_checked_s3", "test_client", "test_client_life",
    "test_client_reports", "test_demo", "test_deploy", "test_faults", "test_fetch_model", "test_fetch_model_hostile",
    "test_fetch_model_record", "test_fetch_model_reports", "test_fuzz", "test_live", "test_redis",
    "test_run_alert_live", "test_run_reports_fuzz", "test_settings", "test_tasks", "test_upload_browser",
}  # fmt: skip


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES or "manage" in item.fixturenames:  # `manage` runs manage.py in a process
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3/CloudFront server on a free loopback port, for the whole session."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def localstack_endpoint(tmp_path_factory):
    """LocalStack's S3, which checks signatures and expiry (moto checks neither), for the session.

    Its virtualenv is built by `make localstack` (part of `make test`); here only if missing.
    """
    from . import localstack
    from .servers import free_port

    python = localstack.ensure_venv(REPO_ROOT / ".venv-localstack")
    port = free_port()
    process = localstack.start(python, port, tmp_path_factory.mktemp("localstack"))
    try:
        localstack.wait_ready(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        localstack.stop(process)


@pytest.fixture(autouse=True)
def local_store(settings, tmp_path):
    """Release objects go to a folder of this test's own."""
    settings.DATA_DIR = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.RELEASE_STORAGE = {"BACKEND": "local", "OPTIONS": {"location": str(tmp_path / "objects")}}
    return release_store()


def s3_storage_options(endpoint: str, bucket: str) -> dict:
    return {
        "bucket_name": bucket,
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "addressing_style": "path",
        **S3_TEST_CREDENTIALS,
    }


@pytest.fixture
def s3_client(moto_endpoint):
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_CREDENTIALS["access_key"],
        aws_secret_access_key=S3_TEST_CREDENTIALS["secret_key"],
    )


@pytest.fixture
def s3_bucket(s3_client):
    bucket = f"releases-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_store(settings, moto_endpoint, s3_bucket, local_store):
    """Point the site's release storage at a fresh bucket on the moto server."""
    settings.RELEASE_STORAGE = {"BACKEND": "s3", "OPTIONS": s3_storage_options(moto_endpoint, s3_bucket)}
    return release_store()


@pytest.fixture
def localstack_store(settings, localstack_endpoint):
    """The release storage on a fresh bucket of LocalStack's S3, which checks signatures and expiry
    and reports when each upload started (moto does neither)."""
    bucket = f"releases-{uuid.uuid4().hex[:12]}"
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    boto3.client("s3", endpoint_url=localstack_endpoint, region_name="us-east-1", **credentials).create_bucket(
        Bucket=bucket
    )
    options = {**s3_storage_options(localstack_endpoint, bucket), "access_key": "test", "secret_key": "test"}
    settings.RELEASE_STORAGE = {"BACKEND": "s3", "OPTIONS": options}
    return release_store()


@pytest.fixture(params=["local", "s3"])
def any_store(request):
    """Run a test once against each storage backend."""
    return request.getfixturevalue("local_store" if request.param == "local" else "s3_store")


@pytest.fixture
def write_file(tmp_path):
    """Write a local source file under tmp_path/src and return its Path."""

    def write(relative: str, content: bytes) -> Path:
        path = tmp_path / "src" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    return write


@pytest.fixture
def manage(tmp_path):
    """Run manage.py in a subprocess against this test's database and DATA_DIR."""
    from .servers import django_env

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        environment = {**django_env(DATA_DIR=tmp_path), **(env or {})}
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


@pytest.fixture
def publish(tmp_path):
    """Publish real bytes through the services: publish("m", "v1", {"model.pt": b"..."}, prerelease=False)."""
    from releases.services import LocalFile, release_local_files

    def run(model: str, version: str, files: dict[str, bytes], **options):
        root = tmp_path / "publish" / model / version
        local = []
        for path, content in files.items():
            source = root / path
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(content)
            local.append(LocalFile(path, source))
        return release_local_files(model, version, local, **options).version

    return run


@pytest.fixture
def catalogue(publish):
    """index-tts with one version in each state; latest is v10 (v9 < v10; v23 is a prerelease)."""
    from releases import services
    from releases.models import Version

    versions = {
        name: publish("index-tts", name, {path: content + name.encode() for path, content in WEIGHTS.items()})
        for name in ["v9", "v10", "v11", "v12"]
    }
    versions["v23"] = publish("index-tts", "v23", {"model.pt": b"preview"}, prerelease=True)
    versions["v13"] = publish("index-tts", "v13", {"model.pt": b"draft"}, draft=True)
    versions["v11"] = services.yank_version(versions["v11"], "Corrupt vocoder; use v10.")
    versions["v12"] = services.withdraw_version(versions["v12"])
    publish("hidden-model", "v1", {"model.pt": b"x"}, draft=True)
    return {name: Version.objects.get(pk=version.pk) for name, version in versions.items()}


@pytest.fixture(autouse=True)
def quick_password_hashing(settings):
    """Test users' passwords need no key stretching (it cost about half a second per admin test)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def no_download_counts_from_earlier_runs():
    """Each run creates the database afresh, so file ids repeat: counters or de-duplication markers
    that an earlier run left in the test Redis would be taken for this run's files."""
    from django.conf import settings

    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(match="model-releases:downloads*"):
            client.delete(key)


@pytest.fixture(autouse=True)
def tasks_run_in_process(settings):
    """Tasks queued by a test run right after its commit, in-process, as in the embedded default.

    Tests of the real worker on Redis (tests/test_tasks.py) start their own worker process.
    """
    from site_config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = settings.CELERY_TASK_ALWAYS_EAGER


@pytest.fixture
def varnish(live_server, settings):
    """varnishd with the shipped VCL on a free loopback port, in front of the live test server
    (the site's CDN_PURGE_TOKEN is the cache's purge secret)."""
    from .servers import Varnish

    port = int(live_server.url.rsplit(":", 1)[1])
    cache = Varnish(port)
    settings.CDN_PURGE_TOKEN = cache.purge_token
    yield cache
    cache.stop()


@pytest.fixture
def recording_server():
    from .servers import RecordingServer

    server = RecordingServer()
    yield server
    server.stop()


# --- the served clients' site and the faults it can be made to show -------------------------


@pytest.fixture
def served(monkeypatch):
    """Every file response the site sends: (path, Range header, bytes), and a way to replace them."""
    log, real = [], _downloads().file_response

    def recording(request, handle, file):
        response = real(request, handle, file)
        log.append({"path": file.path, "range": request.headers.get("Range"), "bytes": int(response["Content-Length"])})
        return response

    monkeypatch.setattr(_downloads(), "file_response", recording)
    return log


@pytest.fixture
def slow_link(monkeypatch):
    """The site sends file bytes at about 1 MB/s, like a slow link (curl --limit-rate does not
    slow a loopback transfer that fits in the socket buffers)."""
    real, pace = _downloads().file_response, {"slow": True}

    def slowly(request, handle, file):
        response = real(request, handle, file)
        if not pace["slow"]:
            return response
        chunks = response.streaming_content
        response.file_to_stream = None  # no sendfile: through the slow iterator below

        def paced():
            step, sent = 64 * 1024, 0
            for chunk in chunks:
                for start in range(0, len(chunk), step):
                    piece = chunk[start : start + step]
                    if sent // step != (sent + len(piece)) // step:
                        time.sleep(0.05)  # the link's pace (64 KiB per 50 ms), not a wait for a condition
                    sent += len(piece)
                    yield piece

        response.streaming_content = paced()
        return response

    monkeypatch.setattr(_downloads(), "file_response", slowly)
    return pace


@pytest.fixture
def client_site(live_server, publish):
    publish("index-tts", "v1", {"model.pt": b"old weights"})
    publish("index-tts", "v2", FILES)
    return live_server.url


@pytest.fixture
def wrong_body(monkeypatch):
    """The file server answers config.yaml with `body` for the first `times` requests, then rightly."""
    from django.http import HttpResponse

    real, state = _downloads().file_response, {"body": None, "times": 0, "served": 0}

    def sometimes_wrong(request, handle, file):
        if file.path == "config.yaml" and state["served"] < state["times"]:
            state["served"] += 1
            handle.close()
            body, content_type, _ = state["body"]
            return HttpResponse(body, content_type=content_type)
        return real(request, handle, file)

    monkeypatch.setattr(_downloads(), "file_response", sometimes_wrong)
    return state


def _downloads():
    from releases.views import downloads

    return downloads


@pytest.fixture
def fresh_run_reports():
    """This Redis database's run-report keys and the process's memory of them, cleared around a test."""
    from .test_run_reports import forget_reports

    forget_reports()
    yield
    forget_reports()
