"""Download counts: counted on the request path without the database, folded into daily rows,
shown on pages and in the API; against the real Redis, and with no Redis at all."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from releases import downloads, observability
from releases.models import DailyDownloads, DownloadFold, File

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_counters(settings):
    if settings.REDIS_URL:
        client = observability.redis_client()
        client.delete(downloads.COUNTS_KEY, *client.scan_iter(match=f"{downloads.FOLDING_PREFIX}*"))
    yield


@pytest.fixture
def tts(publish):
    publish("tts", "v1", {"model.pt": b"one", "config.yaml": b"c"})
    return publish("tts", "v2", {"model.pt": b"two"})


def totals():
    return {
        (row.file.path, row.file.version.version): row.count
        for row in DailyDownloads.objects.select_related("file__version")
    }


def test_a_get_of_a_stable_url_counts_once_and_a_head_does_not(client, tts):
    for _ in range(3):
        assert client.get("/models/tts/v2/model.pt").status_code == 302
    assert client.head("/models/tts/v2/model.pt").status_code == 302
    assert client.get("/models/tts/latest/model.pt").status_code == 302  # latest is v2
    assert client.get("/models/tts/v1/config.yaml").status_code == 302
    assert client.get("/models/tts/v2/missing.bin").status_code == 404
    assert DailyDownloads.objects.count() == 0  # nothing written to the database yet
    assert call_command("rollup_downloads") is None
    assert totals() == {("model.pt", "v2"): 4, ("config.yaml", "v1"): 1}


def test_pages_and_api_show_totals_and_the_last_30_days(client, tts):
    model_pt = File.objects.get(version=tts, path="model.pt")
    DailyDownloads.objects.create(file=model_pt, day=timezone.now().date() - timedelta(days=40), count=100)
    client.get("/models/tts/v2/model.pt")
    downloads.fold()
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
    client.get("/models/tts/v2/model.pt")
    assert downloads.fold() == 1
    assert downloads.fold() == 0
    assert totals() == {("model.pt", "v2"): 1}


def test_a_fold_that_died_after_committing_is_not_counted_again(tts, settings):
    """The set-aside hash of a fold whose rows committed is only deleted by the next fold."""
    client = observability.redis_client()
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat()
    committed, unfinished = f"{downloads.FOLDING_PREFIX}dead", f"{downloads.FOLDING_PREFIX}unfinished"
    client.hset(committed, f"{file_id}:{today}", 5)
    DownloadFold.objects.create(name=committed, downloads=5)
    DailyDownloads.objects.create(file_id=file_id, day=timezone.now().date(), count=5)
    client.hset(unfinished, f"{file_id}:{today}", 2)  # set aside, never recorded
    assert downloads.fold() == 2
    assert totals() == {("model.pt", "v2"): 7}
    assert not client.exists(committed) and not client.exists(unfinished)


def test_a_redis_restart_loses_only_the_downloads_since_the_last_fold(client, tts):
    for _ in range(3):
        client.get("/models/tts/v2/model.pt")
    downloads.fold()
    for _ in range(2):
        client.get("/models/tts/v2/model.pt")
    observability.redis_client().delete(downloads.COUNTS_KEY)  # Redis restarted without persistence
    downloads.fold()
    assert totals() == {("model.pt", "v2"): 3}


def test_counting_works_without_redis_across_processes(client, tts, settings, tmp_path):
    settings.REDIS_URL = ""
    settings.DATA_DIR = tmp_path
    client.get("/models/tts/v2/model.pt")
    client.get("/models/tts/v1/model.pt")
    (tmp_path / "downloads" / "other-host-4242.log").write_text(  # another process's log
        f"{File.objects.get(version=tts).pk}:{timezone.now().date().isoformat()}\n"
    )
    assert downloads.fold() == 3
    assert totals() == {("model.pt", "v2"): 2, ("model.pt", "v1"): 1}
    assert list((tmp_path / "downloads").iterdir()) == []
    assert downloads.fold() == 0


def test_malformed_counters_and_deleted_files_are_skipped(tts, settings, caplog):
    client = observability.redis_client()
    file_id = File.objects.get(version=tts).pk
    today = timezone.now().date().isoformat()
    client.hset(downloads.COUNTS_KEY, mapping={f"{file_id}:{today}": 1, "garbage": 3, f"999999:{today}": 4})
    assert downloads.fold() == 1
    assert totals() == {("model.pt", "v2"): 1}
    assert "ignoring a malformed download counter 'garbage'" in caplog.text


def test_the_beat_job_folds(client, tts):
    from releases import tasks

    client.get("/models/tts/v2/model.pt")
    assert tasks.rollup_downloads.delay().get() == {"downloads": 1}
    assert totals() == {("model.pt", "v2"): 1}
