"""CDN work recorded in the same transaction as the change that causes it (see releases/outbox.py)."""

from django.db import models
from django.utils import timezone

from .catalog import File


class OutboxEntry(models.Model):
    """CDN work caused by a change, written in the change's own transaction and drained after commit.

    One pending row per (kind, key): recording the same key again bumps its
    generation instead of adding a row, and a worker only marks a row done if
    nothing bumped it while the work was in flight. A purge reaches every configured cache; the
    caches it has reached are kept in `done_targets`, so a retry purges only those that failed.
    """

    class Kind(models.TextChoices):
        PURGE = "purge", "Purge"
        WARM = "warm", "Warm"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    key = models.CharField(max_length=400, help_text="Surrogate key to purge, or file-<id> to warm.")
    paths = models.JSONField(default=list, blank=True, help_text="URL paths the key covers, for CDNs without keys.")
    done_targets = models.JSONField(
        default=list, blank=True, help_text="Caches already purged for this generation (a retry skips them)."
    )
    file = models.ForeignKey(File, null=True, blank=True, on_delete=models.CASCADE, related_name="outbox_entries")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING, db_index=True)
    generation = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "CDN outbox entry"
        verbose_name_plural = "CDN outbox"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "key"], condition=models.Q(state="pending"), name="one_pending_entry_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({self.state})"
