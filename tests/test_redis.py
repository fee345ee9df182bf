"""The cache and the Celery broker are the machine's real Redis when REDIS_URL is set (as `make test` does);
download counts survive a Redis of the test's own that stops or stalls."""

import os
import signal
import socket
import subprocess
import uuid

import pytest
import redis
from django.conf import settings
from django.core.cache import cache

from site_config.celery import app

from .servers import RedisServer


def test_cache_round_trips_through_redis():
    assert settings.REDIS_URL, "make test sets REDIS_URL to the machine's Redis"
    key = f"test-{uuid.uuid4().hex}"
    cache.set(key, {"answer": 42}, timeout=30)
    assert cache.get(key) == {"answer": 42}
    direct = redis.Redis.from_url(settings.REDIS_URL)
    assert direct.exists(cache.make_and_validate_key(key)) == 1
    cache.delete(key)


def test_celery_uses_redis_as_broker_and_does_not_run_tasks_eagerly():
    assert app.conf.broker_url == settings.REDIS_URL
    assert settings.CELERY_TASK_ALWAYS_EAGER is False  # (tests flip it per test; workers keep it)
    assert app.conf.task_acks_late is True


# --- download counts while Redis is down or stalled: kept in the local log, never lost ----------------


@pytest.fixture
def own_redis(settings, db):
    """A redis-server of this test's own as the counters' Redis (cache and broker stay as they are)."""
    from releases import downloads, observability

    server = RedisServer().start()
    settings.REDIS_URL = server.url
    downloads._seen, downloads._fallback = downloads._SeenMarkers(), downloads._Fallback()
    observability._unreachable_until.clear()
    yield server
    if server.process and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()
    observability._unreachable_until.clear()


def download(client, address: str, path: str = "/models/tts/v1/model.pt") -> None:
    assert client.get(path, REMOTE_ADDR=address).status_code == 302


def folded_total() -> int:
    from releases.models import DailyDownloads

    return sum(DailyDownloads.objects.values_list("count", flat=True))


def fallback_warnings(caplog) -> list[str]:
    return [r.levelname for r in caplog.records if "Redis cannot be reached" in r.getMessage()]


@pytest.mark.slow  # starts servers or processes
def test_counts_made_while_redis_stalls_go_to_the_local_log_and_none_is_lost(own_redis, client, publish, caplog):
    from releases import download_fold, downloads

    publish("tts", "v1", {"model.pt": b"weights"})
    for n in range(3):
        download(client, f"203.0.113.{n}")
    os.kill(own_redis.process.pid, signal.SIGSTOP)  # stalled: connections open, nothing answered
    try:
        for n in range(3, 9):
            download(client, f"203.0.113.{n}")
        download(client, "203.0.113.1")  # counted before the stall: its marker is in Redis
        download(client, "203.0.113.5")  # counted during the stall, in this process's memory
        assert fallback_warnings(caplog) == ["WARNING"]  # once, not once per request
        assert len(downloads.own_log().read_text().splitlines()) == 7
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert download_fold.fold() == 9
    assert folded_total() == 9
    assert not list(downloads.own_log().parent.glob("*.log")) and download_fold.fold() == 0


@pytest.mark.slow  # starts servers or processes
def test_counts_made_while_redis_is_down_are_sent_when_it_answers_again(
    own_redis, client, publish, caplog, monkeypatch
):
    from django.utils import timezone

    from releases import download_fold, downloads, observability
    from releases.download_records import COUNTS_KEY
    from releases.models import File

    monkeypatch.setattr(observability, "REDIS_RETRY_SECONDS", 0.0)  # try Redis at every request
    publish("tts", "v1", {"model.pt": b"weights"})
    download(client, "203.0.113.1")
    assert download_fold.fold() == 1
    own_redis.stop()
    for n in range(2, 12):
        download(client, f"203.0.113.{n}")
    assert fallback_warnings(caplog) == ["WARNING"]
    recycled = subprocess.Popen(["true"])  # a web worker of this host that was recycled meanwhile
    recycled.wait()
    orphan = downloads.own_log().with_name(f"{socket.gethostname()}-{recycled.pid}.log")
    orphan.write_text("".join(f"{File.objects.get().pk}:{timezone.now().date()} {n:032x}\n" for n in range(2)))
    own_redis.start()  # empty: it kept nothing on disk, and the fold before took what it had
    download(client, "203.0.113.12")  # the first count that reaches Redis sends the logs
    assert not downloads.own_log().exists() and not orphan.exists()
    assert "Redis answers again: sent 10 download counts" in caplog.text
    assert sum(int(v) for v in observability.redis_client().hgetall(COUNTS_KEY).values()) == 13
    assert download_fold.fold() == 13
    assert folded_total() == 14


@pytest.mark.slow  # starts servers or processes
@pytest.mark.django_db(transaction=True)
def test_gunicorn_workers_keep_every_count_through_a_stall(settings, publish):
    """Issue's case: 40 downloads while Redis stalls for a few seconds, served by two gunicorn workers."""
    import urllib.request

    from releases import download_fold

    from .servers import Gunicorn, django_env, wait_until

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def download_from(site, client: str) -> None:
        request = urllib.request.Request(f"{site.url}/models/tts/v1/model.pt", headers={"X-Forwarded-For": client})
        try:
            urllib.request.build_opener(NoRedirect).open(request, timeout=30)
        except urllib.error.HTTPError as answer:
            assert answer.code == 302

    redis_server = RedisServer().start()
    settings.REDIS_URL = redis_server.url
    publish("tts", "v1", {"model.pt": b"weights"})
    site = Gunicorn(django_env(REDIS_URL=redis_server.url, DJANGO_LOG_FORMAT="plain"), workers=2)
    try:
        for n in range(5):
            download_from(site, f"198.51.100.{n}")
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            for n in range(40):
                download_from(site, f"203.0.113.{n}")
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        for n in range(5):
            download_from(site, f"192.0.2.{n}")
        wait_until(lambda: "Redis cannot be reached" in site.log(), 10, what="the warning")
        warnings = [line for line in site.log().splitlines() if "Redis cannot be reached" in line]
        assert 1 <= len(warnings) <= 2 and all(" WARNING " in line for line in warnings)  # one per worker at most
        site.stop()
        site = None
        assert download_fold.fold() == 50  # the workers' logs are sent by the fold on their host
    finally:
        if site:
            site.stop()
        redis_server.stop()
