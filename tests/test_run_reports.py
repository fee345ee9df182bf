"""Run reports (docs/run-reports.md): the endpoint checks every field and refuses what it cannot
take with a sentence that names the field, counting nothing; one client address is limited per
minute; the operator's off switch; counts folded into hourly rows against the real Redis and
PostgreSQL, and without Redis; unreadable records quarantined; what the version JSON and the
sha256sums response tell the clients."""

import json

import pytest

from releases import observability, process_logs, report_fold, run_reports
from releases.models import RunOutcomeHour, RunReportFold, Version
from releases.report_records import COUNTS_KEY, FOLDING_PREFIX, QUARANTINE_KEY, RATE_PREFIX

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_run_reports")]

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
    run_reports._redis_warning = process_logs.Every()
    run_reports._log.unwritable = process_logs.Every()
    observability._unreachable_until.clear()
    observability._local.clear()


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


def nothing_counted() -> bool:
    counted = observability.redis_client().hgetall(COUNTS_KEY) if observability.settings.REDIS_URL else {}
    runs = {name: value for name, value in observability.counters().items() if name.startswith("runs:")}
    return not counted and not runs and report_fold.fold() == 0 and not RunOutcomeHour.objects.exists()


BAD_FIELDS = [
    ({"model": "nope"}, "model: no model 'nope' here"),
    ({"model": "TTS"}, "model: String should match pattern"),
    ({"model": 7}, "model: Input should be a valid string"),
    ({"model": ...}, "model: required"),
    ({"requested": "../v1"}, "requested:"),
    ({"requested": None}, "requested:"),
    ({"version": "v9"}, "version: tts has no version 'v9'"),
    ({"version": "v 2"}, "version:"),
    ({"version": ...}, "version: required"),
    ({"client": "curl"}, "client:"),
    ({"client_version": ""}, "client_version:"),
    ({"client_version": "x" * 33}, "client_version:"),
    ({"outcome": 7}, "outcome:"),
    ({"outcome": "0"}, "outcome:"),
    ({"outcome": True}, "outcome:"),
    ({"outcome_name": "fine"}, "outcome_name:"),
    ({"outcome": 4}, "outcome_name: outcome 4 is 'network'"),
    ({"run_kind": "second"}, "run_kind:"),
    ({"tries": -1}, "tries:"),
    ({"tries": 10_001}, "tries:"),
    ({"tries": 1.5}, "tries:"),
    ({"fresh_links": None}, "fresh_links:"),
    ({"bytes_downloaded": 2**53 + 1}, "bytes_downloaded:"),
    ({"bytes_reused": -5}, "bytes_reused:"),
    ({"bytes_delta": "0"}, "bytes_delta:"),
    ({"duration_ms": 7 * 86400 * 1000 + 1}, "duration_ms:"),
    ({"os": "beos"}, "os:"),
    ({"resumed": 0}, "resumed:"),
    ({"resumed": "false"}, "resumed:"),
    ({"hostname": "laptop"}, "hostname: not a field of a run report"),
]


@pytest.mark.parametrize("changes, detail", BAD_FIELDS, ids=[str(changes)[:40] for changes, _ in BAD_FIELDS])
def test_each_bad_field_is_refused_by_name_and_counts_nothing(client, tts, changes, detail):
    response = post(client, report(**changes))
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(detail), response.json()
    assert nothing_counted()


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'"text"', b"\xff\xfe", b"[" * 100_0 + b"]" * 100_0], ids=repr
)
def test_a_body_that_is_no_json_object_is_refused(client, tts, body):
    response = post(client, body)
    assert response.status_code == 400 and "JSON object" in response.json()["detail"]
    assert nothing_counted()


def test_drafts_are_unknown(client, tts, publish):
    publish("tts", "v3", {"model.pt": b"three"}, draft=True)
    publish("secret", "v1", {"model.pt": b"s"}, draft=True)
    assert post(client, report(version="v3")).json() == {"detail": "version: tts has no version 'v3'"}
    assert post(client, report(model="secret", version=None)).json() == {"detail": "model: no model 'secret' here"}
    assert nothing_counted()


def test_a_body_over_4_kib_is_refused_whatever_its_length_header_says(client, tts):
    padded = json.dumps(report()).replace("{", "{" + " " * 4096, 1)
    assert post(client, padded).status_code == 413
    assert post(client, padded, CONTENT_LENGTH="100").status_code in (400, 413)  # cut at the stated length
    just_fits = json.dumps(report()).replace("{", "{" + " " * (4096 - len(json.dumps(report()))), 1)
    assert len(just_fits) == 4096 and post(client, just_fits).status_code == 202


def test_one_address_is_limited_per_minute_and_others_are_not(client, tts, settings):
    settings.RUN_REPORTS_PER_MINUTE = 3
    assert [post(client, report()).status_code for _ in range(4)] == [202, 202, 202, 429]
    assert post(client, report()).json() == {"detail": "too many run reports from this address; try again in a minute"}
    assert post(client, report(), address="198.51.100.9").status_code == 202
    assert post(client, report(), address="2001:db8:1:2::5").status_code == 202
    assert post(client, report(), address="2001:db8:1:2::6").status_code == 202  # the same /64
    assert post(client, report(), address="2001:db8:1:2::7").status_code == 202
    assert post(client, report(), address="2001:db8:1:2::8").status_code == 429
    assert report_fold.fold() == 7


def test_the_rate_limit_keeps_no_address(client, tts):
    post(client, report(), address="203.0.113.77")
    redis = observability.redis_client()
    keys = list(redis.scan_iter(match="model-releases:run-reports*"))
    assert keys and all(0 < redis.ttl(key) <= run_reports.RATE_WINDOW_SECONDS for key in keys if key.startswith(RATE_PREFIX.encode()))  # fmt: skip
    stored = b" ".join(keys + [b" ".join(redis.hgetall(COUNTS_KEY))])
    assert b"203.0.113" not in stored and b"203-0-113" not in stored


def test_the_off_switch_tells_clients_and_refuses_reports(client, tts, settings):
    on = client.get("/api/v1/models/tts/versions/latest")
    assert on.json()["report_url"] == "http://testserver/api/v1/reports"
    assert client.get("/api/v1/models/tts/versions/v1/sha256sums")["X-Report-URL"] == "http://testserver/api/v1/reports"
    settings.RUN_REPORTS = False
    assert client.get("/api/v1/models/tts/versions/latest").json()["report_url"] is None
    assert "X-Report-URL" not in client.get("/api/v1/models/tts/versions/v1/sha256sums")
    response = post(client, report())
    assert response.status_code == 403 and response.json() == {"detail": "this site does not accept run reports"}
    assert nothing_counted()


ENDS = [
    "/api/v1/models/tts/versions/v1",
    "/api/v1/models/tts/versions/v1/sha256sums",
    "/models/tts/v1/model.pt",
]


def test_a_withdrawn_version_says_where_to_report_and_its_reports_are_taken(client, tts, settings):
    from releases.services import withdraw_version

    withdraw_version(Version.objects.get(model__slug="tts", version="v1"), "bad weights")
    for url in ENDS:
        gone = client.get(url, HTTP_ACCEPT="*/*")
        assert gone.status_code == 410, url
        assert (gone["X-Report-URL"], gone["X-Artifact-Version"]) == ("http://testserver/api/v1/reports", "v1"), url
    assert post(client, report(requested="v1", version="v1", outcome=3, outcome_name="not_found")).status_code == 202
    assert report_fold.fold() == 1
    assert rows() == {("v1", "fetch_model.py", "linux", "first", 3): 1}
    settings.RUN_REPORTS = False
    assert all("X-Report-URL" not in client.get(url, HTTP_ACCEPT="*/*") for url in ENDS)


def test_a_404_says_where_to_report_only_for_a_model_the_endpoint_takes(client, tts, publish, settings):
    publish("secret", "v1", {"model.pt": b"s"}, draft=True)
    typo = client.get("/api/v1/models/tts/versions/v9")
    assert typo.status_code == 404 and typo["X-Report-URL"] == "http://testserver/api/v1/reports"
    assert "X-Artifact-Version" not in typo
    assert client.get("/api/v1/models/tts/versions/v9/sha256sums")["X-Report-URL"] == typo["X-Report-URL"]
    for made_up in ("/api/v1/models/nope/versions/v1", "/api/v1/models/secret/versions/v1/sha256sums"):
        unknown = client.get(made_up)
        assert unknown.status_code == 404 and "X-Report-URL" not in unknown, made_up
    assert post(client, report(requested="v9", version=None, outcome=3, outcome_name="not_found")).status_code == 202
    assert post(client, report(model="nope", version=None)).status_code == 400  # what it would have sent
    settings.RUN_REPORTS = False
    assert "X-Report-URL" not in client.get("/api/v1/models/tts/versions/v9")


def test_without_redis_reports_are_limited_counted_and_folded_by_this_process(client, tts, settings):
    settings.REDIS_URL = ""
    settings.RUN_REPORTS_PER_MINUTE = 2
    assert [post(client, report()).status_code for _ in range(3)] == [202, 202, 429]
    assert post(client, report(os="darwin"), address="198.51.100.9").status_code == 202
    assert observability.counters()["runs:tts:v2:fetch_model.py:ok"] == 3
    assert report_fold.fold() == 3
    assert rows() == {
        ("v2", "fetch_model.py", "linux", "first", 0): 2,
        ("v2", "fetch_model.py", "darwin", "first", 0): 1,
    }
    assert report_fold.fold() == 0


def test_while_redis_cannot_be_reached_reports_go_to_the_log_and_are_folded_later(client, tts, settings, caplog):
    reachable = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: refused at once
    try:
        assert post(client, report()).status_code == 202
        assert post(client, report(os="other")).status_code == 202  # skips Redis for a while: no second wait
        assert caplog.text.count("Redis cannot be reached") == 1
    finally:
        settings.REDIS_URL = reachable
        observability._unreachable_until.clear()
    assert report_fold.fold() == 2
    assert rows() == {
        ("v2", "fetch_model.py", "linux", "first", 0): 1,
        ("v2", "fetch_model.py", "other", "first", 0): 1,
    }
