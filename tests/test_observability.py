"""Request ids in logs and tasks, JSON log lines, and the token-guarded Prometheus metrics."""

import json
import logging

import pytest

from releases import metrics, observability

pytestmark = pytest.mark.django_db


def test_every_response_carries_a_request_id_and_keeps_a_sane_one(client):
    generated = client.get("/healthz")["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/healthz", HTTP_X_REQUEST_ID="lb-1234")["X-Request-ID"] == "lb-1234"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="bad id\n<script>")["X-Request-ID"] != "bad id\n<script>"


def test_json_log_lines_carry_the_request_id():
    record = logging.LogRecord("releases.services", logging.INFO, __file__, 1, "published %s", ("m v1",), None)
    token = observability.request_id_var.set("abc123")
    try:
        observability.RequestIdFilter().filter(record)
    finally:
        observability.request_id_var.reset(token)
    line = json.loads(observability.JsonFormatter().format(record))
    assert line["message"] == "published m v1" and line["request_id"] == "abc123" and line["level"] == "INFO"
    assert line["time"].endswith("Z")


def test_a_task_runs_under_the_request_id_it_was_queued_with(monkeypatch):
    from releases import outbox, tasks

    seen = []
    monkeypatch.setattr(
        outbox, "drain", lambda kind, **kw: seen.append(observability.request_id_var.get()) or outbox.DrainResult()
    )
    tasks.drain_outbox.apply(headers={"request_id": "from-headers"})  # as a worker receives it
    token = observability.request_id_var.set("req-42")
    try:
        tasks.drain_outbox.apply()  # queued in-process by a request (the embedded default)
    finally:
        observability.request_id_var.reset(token)
    assert seen == ["from-headers", "req-42"]


def test_request_id_travels_in_task_headers():
    from celery.signals import before_task_publish

    headers = {}
    token = observability.request_id_var.set("req-7")
    try:
        before_task_publish.send(sender="releases.tasks.process_outbox", headers=headers, body=None)
    finally:
        observability.request_id_var.reset(token)
    assert headers["request_id"] == "req-7"


def test_metrics_need_the_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_metrics_count_redirects_signing_backlog_and_verify_failures(client, settings, publish):
    import redis

    redis.Redis.from_url(settings.REDIS_URL).delete(observability.KEY)
    settings.METRICS_TOKEN = "s3cret"
    publish("index-tts", "v1", {"model.pt": b"x", "config.yaml": b"y"})
    for _ in range(3):
        client.get("/models/index-tts/latest/model.pt")
    client.get("/api/v1/models/index-tts/versions/v1")
    from releases.models import File, OutboxEntry

    File.objects.filter(path="config.yaml").update(verification_status="missing")
    OutboxEntry.objects.create(kind="purge", key="x", state="failed")
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").content.decode()
    samples = parsed(text)
    assert samples["model_releases_redirects_total", (("model", "index-tts"),)] == 3
    hits, misses = (
        samples["model_releases_signing_cache_hits_total", ()],
        samples["model_releases_signing_cache_misses_total", ()],
    )
    assert hits + misses == 5 and misses >= 1
    assert samples["model_releases_outbox_entries", (("state", "failed"),)] == 1
    assert samples["model_releases_verify_failures", ()] == 1


def parsed(text: str) -> dict:
    """{(sample name, sorted labels): value}, read by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_label_values_are_escaped(settings):
    settings.REDIS_URL = ""  # this process's counters
    odd = 'a"b\\c\nd'
    observability.count(**{f"redirects:{odd}": 2})
    assert parsed(metrics.prometheus_text())["model_releases_redirects_total", (("model", odd),)] == 2


def test_a_request_writes_its_counts_once_after_the_response(settings):
    settings.REDIS_URL = ""  # this process's counters, read without a round trip
    before = observability.counters().get("signing_hits", 0)
    seen_during = []

    def view(request):
        observability.count(signing_hits=1)
        observability.count(signing_hits=2)
        seen_during.append(observability.counters().get("signing_hits", 0))
        return "response"

    assert observability.CountsMiddleware(view)(object()) == "response"
    assert seen_during == [before]  # nothing written while the request ran
    assert observability.counters()["signing_hits"] == before + 3


def test_counts_outside_a_request_are_written_at_once(settings):
    settings.REDIS_URL = ""
    before = observability.counters().get("signing_misses", 0)
    observability.count(signing_misses=2)
    assert observability.counters()["signing_misses"] == before + 2
