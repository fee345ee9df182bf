"""What maintainers see of run reports, against the real Redis and PostgreSQL: the admin's list and
panels, /metrics, the public rate when the operator allows it, and the alert job's mails (one when
a version's first runs fail, one when they recover) and /readyz; unreadable records quarantined."""

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.template import Context, Template
from django.utils import timezone

from releases import observability, report_fold, run_alerts, run_reports, run_stats
from releases.models import MLModel, RunAlert
from releases.report_records import COUNTS_KEY, QUARANTINE_KEY
from releases.report_tasks import rollup_run_reports

from .test_run_reports import post, report, rows

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_run_reports")]


@pytest.fixture
def tts(publish):
    publish("tts", "v1", {"model.pt": b"one"})
    return publish("tts", "v2", {"model.pt": b"two"})


def send(http, times=1, **changes):
    for _ in range(times):
        assert post(http, report(**changes)).status_code == 202


@pytest.fixture
def mixed(client, tts, settings):
    """Five first runs of v2 (four fine, one network failure), a later run, a run that never resolved."""
    settings.RUN_REPORTS_PER_MINUTE = 100
    send(client, 4)
    send(client, outcome=4, outcome_name="network", os="windows", client="fetch-model.sh")
    send(client, run_kind="later")
    send(client, outcome=1, outcome_name="usage")  # a person's doing: not in the rate
    send(client, version=None, outcome=3, outcome_name="not_found")
    assert report_fold.fold() == 8


def test_the_admin_lists_models_and_shows_the_panel(admin_client, mixed):
    listing = admin_client.get("/admin/releases/runreportsbymodel/").content.decode()
    # 4 of 6 first runs: at the model's level the run that never resolved a version counts too
    assert ">tts</a>" in listing and '<td class="field-first_run_success_30d">66.7%</td>' in listing
    assert '<td class="field-runs_30d">8</td>' in listing and '<td class="field-failed_30d">3</td>' in listing
    page = admin_client.get(f"/admin/releases/runreportsbymodel/{MLModel.objects.get(slug='tts').pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200 and "Run reports of this model" in html
    assert '<td class="rate">66.7%</td>' in html and "network (1), not_found (1), usage (1)" in html
    assert "fetch-model.sh" in html and "windows" in html


def test_the_version_panel_shows_the_versions_own_runs(mixed, tts):
    html = Template("{% load run_reports %}{% run_reports_panel version %}").render(Context({"version": tts}))
    assert "Run reports of this version" in html and '<td class="runs">7</td>' in html
    assert '<td class="first-runs">5</td>' in html and '<td class="rate">80.0%</td>' in html
    assert "network (1), usage (1)" in html and "not_found" not in html  # that run never resolved v2


def test_metrics_count_runs_by_model_version_client_and_outcome(client, mixed, settings):
    settings.METRICS_TOKEN = "t" * 32
    text = client.get("/metrics", headers={"Authorization": "Bearer " + "t" * 32}).content.decode()
    assert 'model_releases_run_reports_total{client="fetch_model.py",model="tts",outcome="ok",version="v2"} 5.0' in text
    assert 'model_releases_run_reports_total{client="fetch-model.sh",model="tts",outcome="network",version="v2"} 1.0' in text  # fmt: skip
    assert 'model_releases_run_reports_total{client="fetch_model.py",model="tts",outcome="not_found",version=""} 1.0' in text  # fmt: skip


def test_the_public_rate_only_when_the_operator_allows_it(mixed, tts, settings):
    assert run_stats.public_first_runs(tts) is None
    settings.RUN_REPORTS_PUBLIC = True
    shown = run_stats.public_first_runs(tts)
    assert shown.rate_text == "80.0%" and shown.first_runs == 5
    assert run_stats.public_first_runs(tts.model).rate_text == "66.7%"  # the unresolved run is the model's
    assert run_stats.public_first_runs(MLModel.objects.get(slug="tts").versions.get(version="v1")) is None


def test_the_pages_show_the_public_rate_only_when_the_operator_allows_it(client, mixed, settings):
    assert "first runs:" not in client.get("/models/tts/v2/").content.decode()
    settings.RUN_REPORTS_PUBLIC = True
    assert "first runs: 80.0% succeeded in the last 30 days" in client.get("/models/tts/v2/").content.decode()
    assert "first runs: 66.7% succeeded in the last 30 days" in client.get("/models/tts/").content.decode()


def test_the_admin_version_page_carries_the_run_reports_panel(admin_client, mixed, tts):
    html = admin_client.get(f"/admin/releases/version/{tts.pk}/change/").content.decode()
    assert "Run reports of this version" in html and '<td class="rate">80.0%</td>' in html


@pytest.mark.slow  # starts a process
@pytest.mark.parametrize(
    "env, message",
    [
        ({"RUN_REPORTS": "maybe"}, "RUN_REPORTS must be one of on, off"),
        ({"RUN_REPORTS_PUBLIC": "sometimes"}, "RUN_REPORTS_PUBLIC must be a boolean"),
        ({"RUN_ALERT_THRESHOLD": "101"}, "RUN_ALERT_THRESHOLD must be between 1 and 100"),
        ({"RUN_ALERT_MIN_RUNS": "0"}, "RUN_ALERT_MIN_RUNS must be between 1 and 1000000"),
        ({"RUN_REPORTS_PER_MINUTE": "lots"}, "RUN_REPORTS_PER_MINUTE must be a whole number"),
    ],
)
def test_settings_refuse_bad_run_report_values(tmp_path, env, message):
    from .test_settings import load_settings

    result = load_settings(tmp_path, **env)
    assert result.returncode != 0 and message in result.stderr


def test_the_command_folds_and_checks(client, tts, settings, capsys):
    from django.core.management import call_command

    settings.ADMINS = [("Ops", "ops@example.org")]
    settings.RUN_ALERT_MIN_RUNS = 1
    send(client, outcome=6, outcome_name="dest_dir")
    call_command("rollup_run_reports")
    assert capsys.readouterr().out.splitlines() == [
        "Folded 1 run report.",
        "First runs of tts v2 are failing: ADMINS were mailed.",
    ]
    assert len(mail.outbox) == 1


def test_unreadable_records_are_set_aside_and_the_rest_is_folded(client, tts, caplog):
    send(client)
    hour = timezone.now().strftime("%Y-%m-%dT%H")
    good = next(iter(observability.redis_client().hgetall(COUNTS_KEY)))
    observability.redis_client().hset(
        COUNTS_KEY,
        mapping={
            good: 2,  # a second report of the same kind (value 1 + this: replaced, see below)
            f"{tts.model_id}:{tts.pk}:{hour}:curl:linux:first:0": 1,
            f"{tts.model_id}:{tts.pk}:{hour}:fetch_model.py:linux:first:7": 1,
            f"{tts.model_id}:{tts.pk}:2026-13-01T00:fetch_model.py:linux:first:0": 1,
            f"99999999999999999999:0:{hour}:fetch_model.py:linux:first:0": 1,
            f"{tts.model_id}:0:{hour}:fetch_model.py:linux:first:0": "abc",
            f"{tts.model_id}:0:{hour}:fetch_model.py:linux:first:0\xff".encode("latin-1"): 1,
        },
    )
    assert report_fold.fold() == 2
    assert rows() == {("v2", "fetch_model.py", "linux", "first", 0): 2}
    quarantined = [json.loads(entry) for entry in observability.redis_client().lrange(QUARANTINE_KEY, 0, -1)]
    reasons = sorted(entry["reason"] for entry in quarantined)
    assert reasons == ["bad_count", "bad_field", "bad_field", "bad_hour", "bad_outcome", "not_ascii"]
    assert "set aside 6 unreadable run report records" in caplog.text
    assert observability.counters()["run_reports_quarantined:bad_field"] == 2


def test_without_redis_unreadable_log_lines_go_to_the_quarantine_file(client, tts, settings, tmp_path):
    settings.REDIS_URL = ""
    send(client)
    log = run_reports.own_log()
    with open(log, "ab") as out:
        out.write(b"garbage\n\xff\xfe\n1:0:2026-02-30T00:fetch_model.py:linux:first:0\n")
    assert report_fold.fold() == 1
    lines = (tmp_path / "run-reports" / "quarantine.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["reason"] for line in lines) == ["bad_field", "bad_hour", "not_ascii"]


@pytest.fixture
def at(monkeypatch):
    """Reports arrive at a moment the test names (the hour they count in)."""
    moment = {"now": timezone.now()}
    monkeypatch.setattr(run_reports, "clock", lambda: moment["now"])
    return moment


def test_failing_first_runs_mail_once_and_recovery_mails_once(client, tts, settings, at, caplog):
    settings.ADMINS = [("Ops", "ops@example.org")]
    settings.RUN_REPORTS_PER_MINUTE = 100
    settings.METRICS_TOKEN = "t" * 32
    start = timezone.now().replace(minute=10) - timedelta(hours=3)
    at["now"] = start
    send(client, 19, outcome=4, outcome_name="network")
    send(client, 1)
    send(client, 5, outcome=130, outcome_name="interrupted")  # not the site's doing: not counted either way
    report_fold.fold()
    assert run_alerts.check(start) == {"alerts_opened": ["tts v2"], "alerts_recovered": []}
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ops@example.org"]
    assert "5.0% of 20 first runs" in mail.outbox[0].body and "network: 19" in mail.outbox[0].body
    assert "First runs of tts v2 are failing" in caplog.text
    assert run_alerts.check(start + timedelta(minutes=20))["alerts_opened"] == []  # once per incident
    ready = client.get("/readyz", headers={"Authorization": "Bearer " + "t" * 32}).json()
    assert ready["run_alerts"][0] | {"since": None} == {
        "model": "tts", "version": "v2", "since": None, "first_runs": 20, "succeeded": 1, "failing": {"network": 19},
    }  # fmt: skip
    assert "run_alerts" not in client.get("/readyz").json()  # not for anyone else
    at["now"] = start + timedelta(hours=2)
    send(client, 19)  # one short of RUN_ALERT_MIN_RUNS: not yet a recovery
    report_fold.fold()
    assert run_alerts.check(at["now"])["alerts_recovered"] == []
    send(client, 1)
    report_fold.fold()
    assert run_alerts.check(at["now"]) == {"alerts_opened": [], "alerts_recovered": ["tts v2"]}
    assert run_alerts.check(at["now"]) == {"alerts_opened": [], "alerts_recovered": []}
    assert len(mail.outbox) == 2 and "succeed again: 100.0% of 20" in mail.outbox[1].body
    assert RunAlert.objects.get().closed_at is not None
    assert "run_alerts" not in client.get("/readyz", headers={"Authorization": "Bearer " + "t" * 32}).json()


def test_the_beat_job_folds_and_checks(client, tts, settings):
    settings.ADMINS = [("Ops", "ops@example.org")]
    settings.RUN_ALERT_MIN_RUNS = 2
    send(client, 2, outcome=5, outcome_name="wrong_content")
    assert rollup_run_reports.delay().get() == {"runs": 2, "alerts_opened": ["tts v2"], "alerts_recovered": []}
    assert len(mail.outbox) == 1 and "wrong_content: 2" in mail.outbox[0].body


def test_the_admin_list_costs_the_same_queries_for_one_model_or_many(
    admin_client, mixed, publish, django_assert_max_num_queries
):
    with django_assert_max_num_queries(12) as one:
        admin_client.get("/admin/releases/runreportsbymodel/")
    queries_for_one = len(one.captured_queries)
    assert queries_for_one > 0
    for name in ("a", "b", "c"):
        publish(name, "v1", {"model.pt": name.encode()})
        send(admin_client, model=name, version="v1")
    report_fold.fold()
    with django_assert_max_num_queries(queries_for_one):
        listing = admin_client.get("/admin/releases/runreportsbymodel/").content.decode()
    assert listing.count('<td class="field-runs_30d">1</td>') == 3
