"""The outbox: rows written with the change, coalesced, leased, retried with backoff, failed loudly,
and sent once to each configured cache (two varnishd with the shipped VCL)."""

import urllib.request
from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from releases import outbox, services
from releases.models import OutboxEntry

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit runs the queued tasks


@pytest.fixture
def purge_log(settings, recording_server):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", recording_server.url
    return recording_server


def keys_of(requests):
    return [set(r.headers["xkey-purge"].split()) for r in requests]


def test_publish_records_its_purges_in_the_same_transaction(publish):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("m", "v1", {"a.bin": b"a"})
        assert OutboxEntry.objects.filter(kind="purge").count() == 2
        raise RuntimeError("the change rolls back")
    assert not OutboxEntry.objects.exists()


def test_changes_purge_the_keys_they_make_stale(purge_log, publish):
    version = publish("m", "v1", {"a.bin": b"a"})
    services.yank_version(version, "bad")
    services.withdraw_version(version)
    assert keys_of(purge_log.requests) == [
        {"models", "model-m"},
        {"models", "model-m", "version-m-v1"},
        {"models", "model-m", "version-m-v1"},
    ]
    assert set(OutboxEntry.objects.values_list("state", flat=True)) == {"done"}


def test_a_hundred_file_publish_sends_one_purge_request(purge_log, publish):
    publish("m", "v1", {f"shard-{n:03d}.bin": b"x" for n in range(100)})
    assert len(purge_log.requests) == 1


def test_identical_pending_keys_coalesce():
    from .factories import VersionFactory

    version = VersionFactory(model__slug="m", version="v1", status="published")
    with transaction.atomic():  # looked at before the commit drains them
        outbox.record_change("m", version)
        outbox.record_change("m", version)
        outbox.record_change("m")
        rows = OutboxEntry.objects.filter(state="pending")
        assert sorted(rows.values_list("key", "generation")) == [("model-m", 3), ("models", 3), ("version-m-v1", 2)]


def test_a_key_recorded_again_while_in_flight_stays_pending(purge_log):
    entry = OutboxEntry.objects.create(kind="purge", key="model-m", paths=["/models/m/*"])
    claims = outbox.claim("purge", 10)
    outbox._record("purge", "model-m", paths=["/models/m/*"])  # a newer change commits meanwhile
    result = outbox.DrainResult()
    outbox._settle(claims[0], result)
    entry.refresh_from_db()
    assert (entry.state, entry.generation, result.done) == ("pending", 2, 0)
    assert entry.next_attempt_at <= timezone.now()
    assert outbox.drain("purge").done == 1


def test_claimed_rows_are_leased_and_skipped_by_others():
    OutboxEntry.objects.create(kind="purge", key="models")
    assert len(outbox.claim("purge", 10)) == 1
    assert outbox.claim("purge", 10) == []  # leased: not due until the lease ends
    OutboxEntry.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert len(outbox.claim("purge", 10)) == 1  # a dead worker's lease ran out: picked up again


def test_failures_back_off_then_fail_and_mail_the_admins(settings, recording_server):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", recording_server.url
    settings.OUTBOX_MAX_ATTEMPTS, settings.OUTBOX_BACKOFF_SECONDS = 3, 30
    settings.ADMINS = [("Ops", "ops@example.org")]
    recording_server.respond = lambda request: (503, b"backend fetch failed")
    entry = OutboxEntry.objects.create(kind="purge", key="models")
    delays = []
    for _ in range(3):
        before = timezone.now()
        outbox.drain("purge")
        entry.refresh_from_db()
        delays.append(round((entry.next_attempt_at - before).total_seconds() / 30))
        OutboxEntry.objects.filter(pk=entry.pk).update(next_attempt_at=timezone.now())
    entry.refresh_from_db()
    assert delays[:2] == [1, 2]  # 30 s, then 60 s
    assert (entry.state, entry.attempts) == ("failed", 3)
    assert "503" in entry.last_error
    assert len(mail.outbox) == 1 and "failed" in mail.outbox[0].subject and "models" in mail.outbox[0].body


def test_an_unexpected_error_still_settles_every_claimed_row(monkeypatch, settings):
    from releases import cdn

    def broken():
        raise RuntimeError("bad CDN_BASE_URL")

    monkeypatch.setattr(cdn, "backends", broken)
    OutboxEntry.objects.create(kind="purge", key="models")
    result = outbox.drain("purge")
    entry = OutboxEntry.objects.get()
    assert (result.retried, entry.state, entry.attempts) == (1, "pending", 1)
    assert "RuntimeError: bad CDN_BASE_URL" in entry.last_error
    assert entry.next_attempt_at > timezone.now()  # backing off, not leased forever


def test_failed_entries_are_visible_and_retryable_in_the_admin(admin_client, purge_log):
    failed = OutboxEntry.objects.create(kind="purge", key="models", state="failed", attempts=8, last_error="timeout")
    changelist = reverse("admin:releases_outboxentry_changelist")
    page = admin_client.get(changelist, {"state__exact": "failed"})
    assert b"timeout" in page.content
    admin_client.post(changelist, {"action": "retry_selected", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert (failed.state, failed.attempts) == ("done", 1)
    assert keys_of(purge_log.requests) == [{"models"}]


def test_backlog_counts_pending_and_failed():
    OutboxEntry.objects.create(kind="purge", key="a")
    OutboxEntry.objects.create(kind="purge", key="b", state="failed")
    OutboxEntry.objects.create(kind="purge", key="c", state="done")
    assert outbox.backlog() == {"pending": 1, "failed": 1}


# --- fan-out: every configured cache, each once ------------------------------------------------


def get(url: str) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture
def two_caches(settings, live_server):
    """Two varnishd with the shipped VCL in front of the same site, both in CDN_PURGE_URL."""
    from .servers import Varnish

    port = int(live_server.url.rsplit(":", 1)[1])
    caches = [Varnish(port), Varnish(port)]
    settings.CDN_BACKEND, settings.CDN_PURGE_TOKEN = "varnish", caches[0].purge_token
    settings.CDN_PURGE_URL = ",".join(cache.url for cache in caches)
    yield caches
    for cache in caches:
        cache.stop()


def test_a_yank_purges_every_cache(two_caches, publish):
    version = publish("index-tts", "v1", {"model.pt": b"one"})
    pages = [f"{cache.url}{path}" for cache in two_caches for path in ("/models/index-tts/", "/api/v1/models")]
    for page in pages:
        get(page)
        assert get(page)[1]["X-Cache"] == "HIT"

    services.yank_version(version, "Corrupt vocoder")  # purged right after commit (tasks run in-process here)

    for page in pages:  # the second cache too: no stale HIT from either
        status, headers, body = get(page)
        assert (status, headers["X-Cache"]) == (200, "MISS")
    assert all(b"Corrupt vocoder" in get(f"{cache.url}/models/index-tts/")[2] for cache in two_caches)
    assert [entry.done_targets for entry in OutboxEntry.objects.filter(state="done", key="version-index-tts-v1")] == [
        [cache.url for cache in two_caches]
    ]


def test_a_retry_purges_only_the_caches_that_failed(settings, varnish, publish):
    """One cache is down during a yank: the other is purged at once, and the retry (the beat's drain)
    goes to the one that failed, without purging the first cache again."""
    from .servers import RecordingServer

    down = RecordingServer()
    down.respond = lambda request: (503, b"restarting")
    try:
        settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", f"{varnish.url},{down.url}"
        version = publish("index-tts", "v1", {"model.pt": b"one"})
        page = f"{varnish.url}/models/index-tts/"
        get(page)
        services.yank_version(version, "Corrupt vocoder")
        assert get(page)[1]["X-Cache"] == "MISS"  # the cache that was up is purged at once
        assert get(page)[1]["X-Cache"] == "HIT"
        pending = OutboxEntry.objects.filter(state="pending")
        assert {entry.key for entry in pending} == {"models", "model-index-tts", "version-index-tts-v1"}
        assert all(entry.done_targets == [varnish.url] and "503" in entry.last_error for entry in pending)
        failed_purges = len(down.requests)

        down.respond = None  # back up
        pending.update(next_attempt_at=timezone.now())
        assert outbox.drain("purge").done == 3

        assert get(page)[1]["X-Cache"] == "HIT"  # not purged a second time
        assert len(down.requests) == failed_purges + 1  # one purge with the three keys
        assert set(down.requests[-1].headers["xkey-purge"].split()) == {
            "models",
            "model-index-tts",
            "version-index-tts-v1",
        }
        assert down.requests[-1].headers["x-purge-token"] == varnish.purge_token
    finally:
        down.stop()


def test_a_newer_change_reaches_every_cache_again(settings):
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", "http://127.0.0.1:9,http://127.0.0.1:10"
    entry = OutboxEntry.objects.create(kind="purge", key="models", done_targets=["http://127.0.0.1:9"])
    claims = outbox.claim("purge", 10)
    outbox._record("purge", "models")  # a newer change commits while the retry is in flight
    outbox._settle(claims[0], outbox.DrainResult(), error="refused", done_targets=["http://127.0.0.1:9", "x"])
    entry.refresh_from_db()
    assert (entry.generation, entry.done_targets) == (2, [])  # the newer change has reached no cache yet


def test_a_slow_cache_delays_no_other(settings):
    """The first cache answers only once the second has its purge: sent one after the other, the
    first would give up (503) and the drain would fail."""
    import threading

    from .servers import RecordingServer

    second_purged = threading.Event()

    def after_the_other(request):
        return (200, b"{}") if second_purged.wait(timeout=20) else (503, b"the other purge never came")

    def purged(request):
        second_purged.set()
        return 200, b"{}"

    slow, other = RecordingServer(), RecordingServer()
    slow.respond, other.respond = after_the_other, purged
    try:
        settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", f"{slow.url},{other.url}"
        settings.CDN_TIMEOUT = 30
        OutboxEntry.objects.create(kind="purge", key="models")
        assert outbox.drain("purge").done == 1
        assert OutboxEntry.objects.get().done_targets == [slow.url, other.url]
    finally:
        slow.stop()
        other.stop()
