"""Run reports from the served clients, folded into hourly counts (docs/run-reports.md); the batches
folded; and the incidents the alert job opened and closed."""

from django.db import models
from django.utils import timezone

from .catalog import MLModel, Version

CLIENTS = ("fetch-model.sh", "fetch_model.py")
SYSTEMS = ("linux", "darwin", "windows", "other")
RUN_KINDS = ("first", "update", "later", "offline")
OUTCOMES = {
    0: "ok",
    1: "usage",
    2: "missing_tool",
    3: "not_found",
    4: "network",
    5: "wrong_content",
    6: "dest_dir",
    130: "interrupted",
    143: "terminated",
}
SUCCESS = 0
NOT_THE_SITES_DOING = (1, 130, 143)  # usage errors and interruptions: left out of success rates


class RunOutcomeHour(models.Model):
    """How many runs of one client, OS and kind ended with one outcome in one UTC hour."""

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="run_outcomes")
    version = models.ForeignKey(Version, on_delete=models.CASCADE, null=True, related_name="run_outcomes")
    hour = models.DateTimeField()
    client = models.CharField(max_length=16, choices=[(name, name) for name in CLIENTS])
    os = models.CharField(max_length=8, choices=[(name, name) for name in SYSTEMS])
    run_kind = models.CharField(max_length=8, choices=[(name, name) for name in RUN_KINDS])
    outcome = models.PositiveSmallIntegerField(choices=sorted(OUTCOMES.items()))
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "model", "version", "hour", "client", "os", "run_kind", "outcome", name="one_run_count_per_kind"
            )
        ]
        indexes = [models.Index(fields=["hour"], name="run_outcome_hour")]

    def __str__(self) -> str:
        return f"{self.model_id}/{self.version_id} {self.hour:%Y-%m-%dT%H} {self.client} {self.outcome}: {self.count}"


class RunReportFold(models.Model):
    """One batch of run counts written to the database, by the name it was set aside under
    (recorded in the same transaction as its counts: a fold that died after committing adds nothing)."""

    name = models.CharField(max_length=200, unique=True)
    runs = models.PositiveBigIntegerField(default=0)
    folded_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class RunAlert(models.Model):
    """An incident: a published version's first runs failing (open while `closed_at` is null)."""

    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="run_alerts")
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    first_runs = models.PositiveIntegerField()
    succeeded = models.PositiveIntegerField()
    failing = models.JSONField(default=dict)  # outcome name -> first runs that ended so, when opened

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "version", condition=models.Q(closed_at__isnull=True), name="one_open_run_alert_per_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.version} since {self.opened_at:%Y-%m-%d %H:%M}"


class RunReportsByModel(MLModel):
    """The admin's list of run reports across models (a proxy: no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = "run reports of a model"
        verbose_name_plural = "run reports"
