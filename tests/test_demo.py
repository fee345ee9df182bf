"""The embedded default: the demo data and `make run` with no external service."""

import os
import signal
import subprocess
import urllib.request
from io import StringIO

import pytest
from django.core.management import call_command

from releases.models import MLModel, Version

from .servers import REPO_ROOT, free_port, wait_until


@pytest.mark.django_db
def test_seed_demo_publishes_two_versions_once(local_store):
    out = StringIO()
    call_command("seed_demo", stdout=out)
    call_command("seed_demo", stdout=out)
    model = MLModel.objects.get(slug="demo-tts")
    assert list(model.versions.natural_order().values_list("version", "status")) == [
        ("v2", "published"),
        ("v1", "published"),
    ]
    assert Version.objects.latest_for(model).version == "v2"
    assert out.getvalue().count("already there") == 2
    for file in model.versions.get(version="v2").files.all():
        assert local_store.compute_sha256(file.key) == (file.sha256, file.size)


def wait_for_http(url: str, process: subprocess.Popen, deadline_seconds: float) -> int:
    def answer():
        if process.poll() is not None:
            raise AssertionError(f"make run exited early with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except OSError:
            return None

    return wait_until(answer, deadline_seconds, interval=0.25, what=url)


def test_make_run_serves_the_embedded_default_without_external_services(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "STORAGE_BACKEND", "DJANGO_SETTINGS_MODULE"}
    }
    env["DATA_DIR"] = str(tmp_path / "data")
    env["DRAIN_OUTBOX_INTERVAL"] = "1"
    log = open(tmp_path / "make-run.log", "w+")
    process = subprocess.Popen(
        ["make", "run", f"RUN_ADDR={address}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for_http(f"http://{address}/healthz", process, 180) == 200
        with urllib.request.urlopen(f"http://{address}/admin/login/") as login:
            page = login.read().decode()
        assert "Model Releases" in page
        css = page.split('href="/static/admin/css/base.', 1)[1].split('"', 1)[0]
        with urllib.request.urlopen(f"http://{address}/static/admin/css/base.{css}") as stylesheet:
            assert stylesheet.status == 200  # collected and served by WhiteNoise, hashed name
        with urllib.request.urlopen(f"http://{address}/api/v1/models/demo-tts/versions/latest") as api:
            assert b'"version":"v2"' in api.read()
        wait_until(
            lambda: "drain-outbox: {" in (tmp_path / "make-run.log").read_text(), 60, what="a beat job in the log"
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.seek(0)
        output = log.read()
    assert "demo-tts v1: published" in output and "demo-tts v2: published" in output, output
    assert (tmp_path / "data" / "db.sqlite3").exists()
    assert (tmp_path / "data" / "objects" / "demo-tts" / "v2" / "checkpoints" / "vocoder.bin").exists()
