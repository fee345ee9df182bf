"""The issue's end-to-end promise for run reports: a version whose object is removed from storage
triggers exactly one alert mail, and one recovery mail after the object is restored.

Everything is the real thing: the version is published to an S3 bucket on the moto server,
gunicorn serves it from there, the object is deleted and put back through the storage layer, both
served clients (fetch-model.sh and fetch_model.py) run against the site and send their reports,
and the beat job (rollup_run_reports, in-process as the tests run tasks) folds them and checks for
incidents, mailing ADMINS (Django's mail outbox).

"The last hour" is the current clock hour and the one before (run_alerts.WINDOW, by whole hours),
so every report of this test, even one that straddles an hour's end, stays in the window: nothing
fakes the time. The failing runs therefore still count when the object is back, and recovery needs
enough successful first runs to lift the whole window's rate over the threshold (50% here)."""

import io
import urllib.request

import pytest
from django.core import mail
from django.core.management import call_command

from releases import signing
from releases.report_tasks import rollup_run_reports

from .clients import FILES
from .data import S3_TEST_CREDENTIALS
from .test_client_reports import Site
from .test_client_reports import run as run_shell
from .test_fetch_model import run as run_python

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_run_reports")]

KEY = "index-tts/v2/model.pt"


@pytest.fixture
def s3_site(settings, s3_store, moto_endpoint, s3_bucket, publish):
    """index-tts v2 published to a fresh moto bucket (s3_store) and gunicorn serving it from there;
    ADMINS mailed when 4 or more first runs in the window succeed under 50%."""
    signing.SIGNER.set(None)
    settings.ADMINS = [("Ops", "ops@example.org")]
    settings.RUN_ALERT_MIN_RUNS, settings.RUN_ALERT_THRESHOLD = 4, 50
    publish("index-tts", "v2", FILES)
    site = Site(
        settings, STORAGE_BACKEND="s3", AWS_STORAGE_BUCKET_NAME=s3_bucket, AWS_S3_ENDPOINT_URL=moto_endpoint,
        AWS_S3_REGION_NAME="us-east-1", AWS_ACCESS_KEY_ID=S3_TEST_CREDENTIALS["access_key"],
        AWS_SECRET_ACCESS_KEY=S3_TEST_CREDENTIALS["secret_key"],
    )  # fmt: skip
    yield site
    site.down()


@pytest.fixture
def clients(s3_site, tmp_path):
    """clients(shell=N, python=N): that many first runs of each served client, their exit codes. Each
    run's folder is alone in its parent: a client reuses files from the folders beside DEST that a
    client filled, and such a run would be an update, not a first run."""
    shell_script, python_script = tmp_path / "fetch-model.sh", tmp_path / "fetch_model.py"
    for script in (shell_script, python_script):
        with urllib.request.urlopen(f"{s3_site.url}/{script.name}", timeout=10) as response:
            script.write_bytes(response.read())
    folders = (tmp_path / "runs" / str(number) / "v2" for number in range(1000))
    env = {"FETCH_MODEL_RETRIES": "2", "FETCH_MODEL_NO_REPORT": "", "DO_NOT_TRACK": ""}

    def run(shell: int = 0, python: int = 0) -> list[int]:
        finished = [run_shell(shell_script, s3_site, "index-tts", "v2", next(folders), env=env) for _ in range(shell)]
        finished += [run_python(python_script, "index-tts", "v2", next(folders), env={"MODEL_SITE": s3_site.url, **env})
                  for _ in range(python)]  # fmt: skip
        return [process.returncode for process in finished]

    return run


def test_an_object_removed_from_storage_mails_one_alert_and_one_recovery(s3_site, s3_store, clients):
    s3_store.delete(KEY)
    assert clients(shell=2, python=2) == [4] * 4  # every try of model.pt: 404 from the bucket
    reports = s3_site.proxy.reports()
    assert [(report["client"], report["outcome_name"], report["run_kind"]) for report in reports] == [
        ("fetch-model.sh", "network", "first")] * 2 + [("fetch_model.py", "network", "first")] * 2  # fmt: skip
    assert [post["status"] for post in s3_site.proxy.posts] == [202] * 4
    checked = rollup_run_reports.delay().get()
    assert checked == {"runs": 4, "alerts_opened": ["index-tts v2"], "alerts_recovered": []}
    [alert] = mail.outbox
    assert alert.to == ["ops@example.org"] and alert.subject.endswith("First runs of index-tts v2 are failing (0.0%)")
    assert "0.0% of 4 first runs in the last hour succeeded (threshold 50%)" in alert.body
    assert "Failing outcomes: network: 4." in alert.body, alert.body

    assert clients(shell=1) == [4]  # still failing: the incident is open, no second mail
    call_command("rollup_run_reports")  # the operator's way to run the beat job now
    assert len(mail.outbox) == 1

    s3_store.upload(KEY, io.BytesIO(FILES["model.pt"]), content_type="application/octet-stream")
    assert clients(shell=2, python=1) == [0, 0, 0]
    assert rollup_run_reports.delay().get()["alerts_recovered"] == []  # 3 of 8 first runs: still under 50%
    assert clients(shell=1, python=2) == [0, 0, 0]
    checked = rollup_run_reports.delay().get()
    assert checked == {"runs": 3, "alerts_opened": [], "alerts_recovered": ["index-tts v2"]}
    assert len(mail.outbox) == 2 and len(s3_site.proxy.reports()) == 11
    assert {report["run_kind"] for report in s3_site.proxy.reports()} == {"first"}
    recovery = mail.outbox[1]
    assert recovery.subject.endswith("First runs of index-tts v2 recovered (54.5%)")
    assert "succeed again: 54.5% of 11 first runs in the last hour" in recovery.body
    assert rollup_run_reports.delay().get() == {"runs": 0, "alerts_opened": [], "alerts_recovered": []}
    assert len(mail.outbox) == 2
