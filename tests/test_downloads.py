"""Download counts: counted on the request path without the database, once per download start and
per client within the window, folded into daily rows, shown on pages and in the API; against the
real Redis, and with no Redis at all. (Unreadable records: test_download_quarantine.py; Redis
down or stalled: test_redis.py.)"""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from releases import download_fold, downloads, observability, process_logs
from releases.client_address import client_address
from releases.download_records import COUNTS_KEY, FOLDING_PREFIX, QUARANTINE_KEY
from releases.models import DailyDownloads, DownloadFold, File

from .servers import wait_until

pytestmark = pytest.mark.django_db


def forget_counts() -> None:
    """The download keys of this Redis database, and what this process remembers of counting."""
    if observability.settings.REDIS_URL:
        client = observability.redis_client()
        keys = [COUNTS_KEY, QUARANTINE_KEY]
        for pattern in (f"{FOLDING_PREFIX}*", f"{downloads.SEEN_PREFIX}*", "model-releases:downloads:not-a-hash:*"):
            keys += list(client.scan_iter(match=pattern))
        client.delete(*keys)
    downloads._seen = downloads._SeenMarkers()
    downloads._fallback = downloads._Fallback()
    downloads._log.unwritable = process_logs.Every()
    observability._unreachable_until.clear()


@pytest.fixture(autouse=True)
def fresh_counters():
    forget_counts()
    yield
    forget_counts()


@pytest.fixture
def tts(publish):
    publish("tts", "v1", {"model.pt": b"one", "config.yaml": b"c"})
    return publish("tts", "v2", {"model.pt": b"two"})


def totals():
    return {
        (row.file.path, row.file.version.version): row.count
        for row in DailyDownloads.objects.select_related("file__version")
    }


def get(client, path, address="203.0.113.7", **headers):
    response = client.get(path, REMOTE_ADDR=address, headers=headers)
    assert response.status_code == 302, response
    return response


def test_a_get_of_a_stable_url_counts_and_a_head_does_not(client, tts):
    get(client, "/models/tts/v2/model.pt", "203.0.113.1")
    assert client.head("/models/tts/v2/model.pt", REMOTE_ADDR="203.0.113.2").status_code == 302
    get(client, "/models/tts/latest/model.pt", "203.0.113.3")  # latest is v2
    get(client, "/models/tts/v1/config.yaml", "203.0.113.1")
    assert client.get("/models/tts/v2/missing.bin").status_code == 404
    assert DailyDownloads.objects.count() == 0  # nothing written to the database yet
    assert call_command("rollup_downloads") is None
    assert totals() == {("model.pt", "v2"): 2, ("config.yaml", "v1"): 1}


@pytest.mark.parametrize(
    "range_header, counts",
    [
        ("", True),
        ("bytes=0-", True),
        ("bytes=0-8388607", True),
        ("bytes = 0-0", True),
        ("bytes=0-99, 200-299", True),  # the first range starts the file
        ("bytes=8388608-16777215", False),  # a later segment of a parallel download
        ("bytes=1-", False),  # a resumed download
        ("bytes=-100", False),  # the end of the file
        ("bytes=200-299, 0-99", False),
        ("bytes=abc", True),  # unreadable: the file server ignores it and sends the whole file
        ("items=5-9", True),  # not bytes: ignored, the whole file
    ],
)
def test_only_a_get_that_starts_a_download_counts(client, tts, range_header, counts):
    get(client, "/models/tts/v2/model.pt", **({"Range": range_header} if range_header else {}))
    assert download_fold.fold() == (1 if counts else 0)


def test_a_parallel_download_in_segments_counts_once(client, tts):
    """As the Python client fetches a large file: the first segment from byte 0, then the others."""
    segment = 8 * 1024 * 1024
    for index in range(26):
        get(client, "/models/tts/v2/model.pt", Range=f"bytes={index * segment}-{(index + 1) * segment - 1}")
    assert download_fold.fold() == 1


def test_the_same_client_and_file_within_the_window_count_once_whatever_the_query(client, tts):
    for query in ("", "?a=1", "?cache-bust=2", "?a=1"):
        get(client, f"/models/tts/v2/model.pt{query}", "203.0.113.7")
    get(client, "/models/tts/v1/model.pt", "203.0.113.7")  # another file
    get(client, "/models/tts/v2/model.pt?a=1", "203.0.113.8")  # another client
    get(client, "/models/tts/v2/model.pt", "2001:db8::8")
    download_fold.fold()
    assert totals() == {("model.pt", "v2"): 3, ("model.pt", "v1"): 1}


def test_the_marker_expires_with_the_window_and_holds_no_address(client, tts, settings):
    settings.DOWNLOAD_DEDUPE_SECONDS = 1
    get(client, "/models/tts/v2/model.pt", "203.0.113.7")
    redis = observability.redis_client()
    markers = list(redis.scan_iter(match=f"{downloads.SEEN_PREFIX}*"))
    assert len(markers) == 1 and 0 < redis.pttl(markers[0]) <= 1000
    everything = b" ".join(markers + [redis.get(markers[0])] + list(redis.hgetall(COUNTS_KEY)))
    assert b"203.0.113" not in everything and b"113.7" not in everything
    field = f"{File.objects.get(version=tts).pk}:{timezone.now().date().isoformat()}".encode()

    def counted_again():
        get(client, "/models/tts/v2/model.pt", "203.0.113.7")
        return int(redis.hget(COUNTS_KEY, field)) == 2

    wait_until(counted_again, 10, what="the window to end")


def test_markers_rotate_daily_and_depend_on_the_secret(settings):
    today = downloads._marker(7, "203.0.113.7", "2026-12-03")
    assert today == downloads._marker(7, "203.0.113.7", "2026-12-03")
    assert today != downloads._marker(7, "203.0.113.7", "2026-12-04")
    assert today != downloads._marker(8, "203.0.113.7", "2026-12-03")
    assert today != downloads._marker(7, "203.0.113.8", "2026-12-03")
    settings.SECRET_KEY = "another-secret-key-of-enough-length-for-django-0123456789"
    assert today != downloads._marker(7, "203.0.113.7", "2026-12-03")


def test_an_ipv6_client_is_its_64_network():
    assert downloads._marker(7, "2001:db8:1:2::1", "2026-12-03") == downloads._marker(
        7, "2001:db8:1:2:aa::9", "2026-12-03"
    )
    assert downloads._marker(7, "2001:db8:1:2::1", "2026-12-03") != downloads._marker(
        7, "2001:db8:1:3::1", "2026-12-03"
    )
    assert downloads._marker(7, "", "2026-12-03")  # no address at all (a Unix socket) still counts


def test_a_process_keeps_a_bounded_number_of_markers(monkeypatch):
    monkeypatch.setattr(downloads, "MAX_LOCAL_MARKERS", 2)
    seen = downloads._SeenMarkers()
    assert [seen.first_time(marker) for marker in ("a", "b", "a", "c", "a")] == [True, True, False, True, True]


def test_a_download_costs_one_round_trip_to_redis(client, tts, monkeypatch):
    """The count, its marker and the request's metrics go in one pipeline, and nothing else is sent."""
    import redis

    sent = []
    execute, command = redis.client.Pipeline.execute, redis.Redis.execute_command
    monkeypatch.setattr(redis.client.Pipeline, "execute", lambda self, *a, **k: sent.append("pipeline") or execute(self, *a, **k))  # fmt: skip
    monkeypatch.setattr(redis.Redis, "execute_command", lambda self, *a, **k: sent.append(a[0]) or command(self, *a, **k))  # fmt: skip
    get(client, "/models/tts/v2/model.pt")
    get(client, "/models/tts/v2/model.pt")  # the same client again: still one round trip, not counted
    assert sent == ["pipeline", "pipeline"]
    monkeypatch.undo()
    assert download_fold.fold() == 1


@pytest.mark.parametrize(
    "trusted, meta, expected",
    [
        (["127.0.0.1"], {"REMOTE_ADDR": "203.0.113.7"}, "203.0.113.7"),
        (["127.0.0.1"], {"REMOTE_ADDR": "203.0.113.7", "HTTP_X_FORWARDED_FOR": "198.51.100.1"}, "203.0.113.7"),
        (["127.0.0.1"], {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7"}, "203.0.113.7"),
        (
            ["127.0.0.1", "10.0.0.0/8"],
            {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.1.2.3"},
            "203.0.113.7",
        ),  # fmt: skip
        (["127.0.0.1"], {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.1.2.3"}, "10.1.2.3"),
        (
            ["*"],
            {"REMOTE_ADDR": "172.18.0.3", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7, 10.0.0.5"},
            "203.0.113.7",
        ),  # fmt: skip
        (["*"], {"REMOTE_ADDR": "198.51.100.9", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}, "198.51.100.9"),
        (["::1"], {"REMOTE_ADDR": "::1", "HTTP_X_FORWARDED_FOR": "[2001:db8::7]:443"}, "2001:db8::7"),
        (["127.0.0.1"], {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7:5555, junk"}, "127.0.0.1"),
        (["127.0.0.1"], {"REMOTE_ADDR": "127.0.0.1"}, "127.0.0.1"),
        (["10.0.0.0/8"], {"REMOTE_ADDR": "::ffff:10.0.0.5", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}, "203.0.113.7"),
    ],
)
def test_the_client_is_read_behind_trusted_proxies_only(settings, trusted, meta, expected):
    import ipaddress

    settings.FORWARDED_ALLOW_IPS = trusted
    settings.TRUSTED_PROXY_NETWORKS = [ipaddress.ip_network(item) for item in trusted if item != "*"]
    assert client_address(meta) == expected


@pytest.mark.slow  # starts servers or processes
@pytest.mark.parametrize(
    "env, message",
    [
        ({"FORWARDED_ALLOW_IPS": "127.0.0.1,proxy.internal"}, "FORWARDED_ALLOW_IPS must be addresses"),
        ({"DOWNLOAD_DEDUPE_SECONDS": "0"}, "DOWNLOAD_DEDUPE_SECONDS must be between 1 and 86400"),
        ({"DOWNLOAD_DEDUPE_SECONDS": "ten"}, "DOWNLOAD_DEDUPE_SECONDS must be a whole number"),
    ],
)
def test_settings_refuse_a_bad_proxy_list_or_window(tmp_path, env, message):
    from .test_settings import load_settings

    result = load_settings(tmp_path, **env)
    assert result.returncode != 0 and message in result.stderr


def test_clients_behind_one_proxy_are_told_apart(client, tts, settings):
    settings.FORWARDED_ALLOW_IPS = ["*"]
    for forwarded in ("203.0.113.7", "203.0.113.8", "6.6.6.6, 203.0.113.7"):  # the last one forged its header
        client.get("/models/tts/v2/model.pt", REMOTE_ADDR="172.18.0.3", HTTP_X_FORWARDED_FOR=forwarded)
    assert download_fold.fold() == 2


@pytest.mark.slow  # starts servers or processes
@pytest.mark.django_db(transaction=True)
def test_through_varnish_each_client_counts_once(varnish, publish):
    """The shipped VCL in front: Varnish appends its peer to X-Forwarded-For, and a load balancer in
    front of it (played by the header sent here) names the client."""
    import http.client

    publish("tts", "v1", {"model.pt": b"weights"})

    def get_through_varnish(client: str, query: str = "") -> None:
        connection = http.client.HTTPConnection("127.0.0.1", varnish.port, timeout=10)
        connection.request("GET", f"/models/tts/v1/model.pt{query}", headers={"X-Forwarded-For": client})
        assert connection.getresponse().status == 302
        connection.close()

    for client, query in [("203.0.113.7", ""), ("203.0.113.7", "?bust=1"), ("203.0.113.8", ""), ("203.0.113.7", "")]:
        get_through_varnish(client, query)
    assert download_fold.fold() == 2


def test_pages_and_api_show_totals_and_the_last_30_days(client, tts):
    model_pt = File.objects.get(version=tts, path="model.pt")
    DailyDownloads.objects.create(file=model_pt, day=timezone.now().date() - timedelta(days=40), count=100)
    get(client, "/models/tts/v2/model.pt")
    download_fold.fold()
    api = client.get("/api/v1/models/tts/versions/v2").json()
    assert api["downloads"] == {"total": 101, "last_30_days": 1}
    model = client.get("/api/v1/models/tts").json()
    assert model["downloads"] == {"total": 101, "last_30_days": 1}
    assert {v["version"]: v["downloads"]["total"] for v in model["versions"]} == {"v2": 101, "v1": 0}
    assert "101 downloads (1 in the last 30 days)" in client.get("/models/tts/v2/").content.decode()
    assert "<strong>101</strong> downloads · 1 in the last 30 days" in client.get("/models/tts/").content.decode()
    listing = client.get("/api/v1/models").json()["models"]
    assert listing[0]["downloads"] == {"total": 101, "last_30_days": 1}


def test_folding_twice_counts_once(client, tts):
    get(client, "/models/tts/v2/model.pt")
    assert download_fold.fold() == 1
    assert download_fold.fold() == 0
    assert totals() == {("model.pt", "v2"): 1}


def test_a_fold_that_died_after_committing_is_not_counted_again(tts):
    """The set-aside hash of a fold whose rows committed is only deleted by the next fold."""
    client = observability.redis_client()
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat()
    committed, unfinished = f"{FOLDING_PREFIX}dead", f"{FOLDING_PREFIX}unfinished"
    client.hset(committed, f"{file_id}:{today}", 5)
    DownloadFold.objects.create(name=committed, downloads=5)
    DailyDownloads.objects.create(file_id=file_id, day=timezone.now().date(), count=5)
    client.hset(unfinished, f"{file_id}:{today}", 2)  # set aside, never recorded
    assert download_fold.fold() == 2
    assert totals() == {("model.pt", "v2"): 7}
    assert not client.exists(committed) and not client.exists(unfinished)


def test_a_redis_restart_loses_only_the_downloads_since_the_last_fold(client, tts):
    for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        get(client, "/models/tts/v2/model.pt", address)
    download_fold.fold()
    for address in ("203.0.113.4", "203.0.113.5"):
        get(client, "/models/tts/v2/model.pt", address)
    observability.redis_client().delete(COUNTS_KEY)  # Redis restarted without persistence
    download_fold.fold()
    assert totals() == {("model.pt", "v2"): 3}


def test_counting_works_without_redis_across_processes_and_counts_a_client_once(client, tts, settings, tmp_path):
    settings.REDIS_URL = ""
    settings.DATA_DIR = tmp_path
    for address in ("203.0.113.1", "203.0.113.1", "203.0.113.2"):
        get(client, "/models/tts/v2/model.pt?x=" + address, address)
    get(client, "/models/tts/v2/model.pt", "203.0.113.1", Range="bytes=100-")
    get(client, "/models/tts/v1/model.pt")
    (tmp_path / "downloads" / "other-host-4242.log").write_text(  # another process's log
        f"{File.objects.get(version=tts).pk}:{timezone.now().date().isoformat()}\n"
    )
    assert download_fold.fold() == 4
    assert totals() == {("model.pt", "v2"): 3, ("model.pt", "v1"): 1}
    assert list((tmp_path / "downloads").iterdir()) == []
    assert download_fold.fold() == 0


def test_a_log_that_cannot_be_written_fails_no_download_and_is_said_once(client, tts, settings, tmp_path, caplog):
    settings.REDIS_URL = ""
    (tmp_path / "downloads").write_text("a file where the folder should be")
    for n in range(5):
        get(client, "/models/tts/v2/model.pt", f"203.0.113.{n}")
    said = [r.levelname for r in caplog.records if "could not keep 1 download count in" in r.getMessage()]
    assert said == ["WARNING"]


def test_deleted_files_are_skipped(tts):
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat()
    observability.redis_client().hset(COUNTS_KEY, mapping={f"{file_id}:{today}": 1, f"999999:{today}": 4})
    assert download_fold.fold() == 1
    assert totals() == {("model.pt", "v2"): 1}


def test_the_beat_job_folds(client, tts):
    from releases import tasks

    get(client, "/models/tts/v2/model.pt")
    assert tasks.rollup_downloads.delay().get() == {"downloads": 1}
    assert totals() == {("model.pt", "v2"): 1}


# --- records that cannot be read: set aside, never a stop ----------------------------------------------


def quarantined_metric() -> dict:
    from releases import metrics

    from .test_observability import parsed

    samples = parsed(metrics.prometheus_text())
    name = "model_releases_download_records_quarantined_total"
    return {labels[0][1]: value for (sample, labels), value in samples.items() if sample == name}


def quarantine_list() -> list[dict]:
    import json

    return [json.loads(entry) for entry in observability.redis_client().lrange(QUARANTINE_KEY, 0, -1)]


def test_unreadable_redis_counters_are_set_aside_and_the_rest_is_folded(tts, caplog):
    observability.redis_client().delete(observability.KEY)
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat()
    observability.redis_client().hset(
        COUNTS_KEY,
        mapping={
            f"{file_id}:{today}": 2,
            f"{file_id}:2026-11-30": "abc",
            b"\xff\xfe:" + today.encode(): 1,  # not UTF-8
            f"{2**63}:{today}": 1,  # beyond PostgreSQL's bigint
            f"{file_id}:2026-02-30": 1,
            f"{file_id}:{today}:x": 1,
            f"{file_id}:2026-11-29": -3,
        },
    )
    assert download_fold.fold() == 2
    assert totals() == {("model.pt", "v2"): 2}
    reasons = sorted(entry["reason"] for entry in quarantine_list())
    assert reasons == ["bad_count", "bad_count", "bad_day", "bad_field", "file_id_out_of_range", "not_ascii"]
    raw = {entry["reason"]: entry for entry in quarantine_list()}
    assert raw["not_ascii"]["record"] == f"\\xff\\xfe:{today}=1"
    assert raw["bad_count"]["batch"].startswith(FOLDING_PREFIX)
    assert "set aside 6 unreadable download records" in caplog.text
    assert [r.levelname for r in caplog.records if "unreadable download" in r.message] == ["WARNING"]
    assert quarantined_metric() == {
        "bad_count": 2, "bad_day": 1, "bad_field": 1, "file_id_out_of_range": 1, "not_ascii": 1
    }  # fmt: skip
    assert download_fold.fold() == 0
    assert not list(observability.redis_client().scan_iter(match=f"{FOLDING_PREFIX}*"))


def test_unreadable_log_lines_are_set_aside_and_the_rest_is_folded(tts, settings, tmp_path, caplog):
    import base64
    import json

    settings.REDIS_URL = ""
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat().encode()
    log = tmp_path / "downloads" / "web-1-77.log"
    log.parent.mkdir()
    bad = [b"\xff" + str(file_id).encode() + b":" + today, str(2**63).encode() + b":" + today, b"garbage", b"7:" + today + b" zz"]  # fmt: skip
    log.write_bytes(
        b"\n".join([str(file_id).encode() + b":" + today, *bad, str(file_id).encode() + b":" + today]) + b"\n"
    )
    assert download_fold.fold() == 2
    assert totals() == {("model.pt", "v2"): 2}
    entries = [json.loads(line) for line in (tmp_path / "downloads" / "quarantine.jsonl").read_text().splitlines()]
    assert [base64.b64decode(entry["raw"]) for entry in entries] == bad  # the exact bytes, to inspect
    assert [entry["reason"] for entry in entries] == ["not_ascii", "file_id_out_of_range", "bad_field", "bad_line"]
    assert "set aside 4 unreadable download records of web-1-77.folding-" in caplog.text
    assert quarantined_metric()["not_ascii"] >= 1
    assert sorted(path.name for path in (tmp_path / "downloads").iterdir()) == ["quarantine.jsonl"]


def test_the_set_aside_batches_that_stopped_earlier_folds_are_folded_now(tts, settings, tmp_path):
    """Batches that a fold before this one set aside and then crashed on (`int('abc')`, a `\\xff` line)."""
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat()
    redis = observability.redis_client()
    redis.hset(f"{FOLDING_PREFIX}crashed-on-abc", mapping={f"{file_id}:{today}": 3, f"{file_id}:{today}x": "abc"})
    redis.set(f"{FOLDING_PREFIX}not-a-hash", "5")
    log = tmp_path / "downloads" / "web-1-77.folding-crashed"  # a fallback log set aside by a crashed fold
    log.parent.mkdir()
    marker = "0" * 32
    # A line without a marker (as written before markers, or without Redis) counts as it is.
    log.write_bytes(f"{file_id}:{today} {marker}\n{file_id}:{today}\n".encode() + b"\xff\xff\n")
    assert download_fold.fold() == 5
    assert totals() == {("model.pt", "v2"): 5}
    assert sorted(entry["reason"] for entry in quarantine_list()) == ["bad_field", "not_a_hash", "not_ascii"]
    assert redis.get(next(redis.scan_iter(match="model-releases:downloads:not-a-hash:*"))) == b"5"  # kept whole
    assert not list(redis.scan_iter(match=f"{FOLDING_PREFIX}*")) and not log.exists()
    assert download_fold.fold() == 0


def test_the_quarantine_list_is_capped(tts, monkeypatch):
    from releases import record_quarantine

    monkeypatch.setattr(record_quarantine, "QUARANTINE_KEEP", 3)
    today = timezone.now().date().isoformat()
    observability.redis_client().hset(COUNTS_KEY, mapping={f"{n}:{today}": "abc" for n in range(1, 6)})
    assert download_fold.fold() == 0
    assert len(quarantine_list()) == 3
