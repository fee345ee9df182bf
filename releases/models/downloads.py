"""Download counts folded from the request-path counters into daily rows (see releases/downloads.py)."""

from django.db import models
from django.utils import timezone

from .catalog import File


class DailyDownloads(models.Model):
    file = models.ForeignKey(File, on_delete=models.CASCADE, related_name="daily_downloads")
    day = models.DateField()
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "daily downloads"
        constraints = [models.UniqueConstraint("file", "day", name="one_count_per_file_and_day")]
        indexes = [models.Index(fields=["day"], name="daily_downloads_day")]

    def __str__(self) -> str:
        return f"{self.file_id} {self.day}: {self.count}"


class DownloadFold(models.Model):
    """One batch of counters written to the database, by the name it was set aside under. Recorded
    in the same transaction as its counts, so a fold that died after committing is not counted twice."""

    name = models.CharField(max_length=200, unique=True)
    downloads = models.PositiveBigIntegerField(default=0)
    folded_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name
