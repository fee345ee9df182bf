"""Run reports (docs/run-reports.md): the endpoint checks every field and refuses what it cannot
take with a sentence that names the field, counting nothing; one client address is limited per
minute; the operator's off switch; counts folded into hourly rows against the real Redis and
PostgreSQL, and without Redis; unreadable records quarantined; what the version JSON and the
sha256sums response tell the clients."""

import json

import pytest

from releases import observability, report_fold, run_reports
from releases.models import RunOutcomeHour, RunReportFold
from releases.report_records import COUNTS_KEY, FOLDING_PREFIX, QUARANTINE_KEY, RATE_PREFIX

pytestmark = pytest.mark.django_db

URL = "/api/v1/reports"


def forget_reports() -> None:
    """This Redis database's run-report keys, and what this process remembers of them."""
    if observability.settings.REDIS_URL:
        client = observability.redis_client()
        keys = [COUNTS_KEY, QUARANTINE_KEY, observability.KEY]
        for pattern in (f"{FOLDING_PREFIX}*", f"{RATE_PREFIX}*", "model-releases:run-reports:not-a-hash:*"):
            keys += list(client.scan_iter(match=pattern))
        client.delete(*keys)
    run_reports._local_limit = run_reports._LocalLimit()
    observability._local.clear()


@pytest.fixture(autouse=True)
def fresh_reports():
    forget_reports()
    yield
    forget_reports()


@pytest.fixture
def tts(publish):
    publish("tts", "v1", {"model.pt": b"one"})
    return publish("tts", "v2", {"model.pt": b"two"})


def report(**changes) -> dict:
    body = {
        "model": "tts", "requested": "latest", "version": "v2", "client": "fetch_model.py",
        "client_version": "3", "outcome": 0, "outcome_name": "ok", "run_kind": "first", "tries": 1,
        "fresh_links": 0, "bytes_downloaded": 3, "bytes_reused": 0, "bytes_delta": 0, "duration_ms": 120,
        "os": "linux", "resumed": False,
    }  # fmt: skip
    body.update(changes)
    return {key: value for key, value in body.items() if value is not ...}


def post(client, body, address="203.0.113.7", **extra):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(URL, data, content_type="application/json", REMOTE_ADDR=address, **extra)


def rows():
    return {
        (row.version.version if row.version else None, row.client, row.os, row.run_kind, row.outcome): row.count
        for row in RunOutcomeHour.objects.select_related("version")
    }


def test_a_report_is_recorded_counted_and_folded(client, tts):
    response = post(client, report())
    assert response.status_code == 202 and response.json() == {"detail": "recorded"}
    assert post(client, report(outcome=4, outcome_name="network", os="windows")).status_code == 202
    assert post(client, report(version=None, outcome=3, outcome_name="not_found", client="fetch-model.sh")).status_code == 202  # fmt: skip
    assert report_fold.fold() == 3
    assert rows() == {
        ("v2", "fetch_model.py", "linux", "first", 0): 1,
        ("v2", "fetch_model.py", "windows", "first", 4): 1,
        (None, "fetch-model.sh", "linux", "first", 3): 1,
    }
    assert report_fold.fold() == 0 and RunReportFold.objects.count() == 1
