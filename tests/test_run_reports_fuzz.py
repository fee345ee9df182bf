"""Schemathesis against the live test server, on the run-report endpoint only: generated reports,
valid and not, every check (no 5xx, answers as the OpenAPI document declares them)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_report_endpoint_survives_fuzzing_and_matches_its_schema(live_server, publish, settings, tmp_path):
    publish("tts", "v1", {"model.pt": b"one"})
    settings.RUN_REPORTS_PER_MINUTE = 100_000  # the fuzzer sends from one address; the limit has its own test
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [
            schemathesis, "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
            "run", f"{live_server.url}/api/openapi.json",
            "--url", live_server.url,
            "--include-path", "/api/v1/reports",
            "--checks", "all",
            "--max-examples", "200",
            "--seed", "20261203",
            "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
