"""Uploads of large files from the admin, straight to storage in parts (services/browser_uploads.py).

A row lives while its file is on the way: it names the draft, the path and exact object key the
file will have, its size, and the storage upload holding the parts. Once the stored object's size
and SHA-256 are checked it becomes a File and the row says so; a failed or aborted upload keeps its
row (and why) for the maintainer to read.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from .catalog import File, Version
from .rules import MAX_PATH_LENGTH


class BrowserUpload(models.Model):
    class State(models.TextChoices):
        UPLOADING = "uploading", "uploading"
        HASHING = "hashing", "checking its SHA-256"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        ABORTED = "aborted", "aborted"

        @classmethod
        def active(cls) -> list[str]:
            return [cls.UPLOADING, cls.HASHING]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)  # unguessable: it is in URLs
    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="browser_uploads")
    path = models.CharField(max_length=MAX_PATH_LENGTH)
    key = models.CharField("object key", max_length=MAX_PATH_LENGTH)
    size = models.BigIntegerField()
    part_size = models.BigIntegerField()
    content_type = models.CharField(max_length=255)
    expected_sha256 = models.CharField(max_length=64, blank=True, help_text="Given by the uploader, if known.")
    storage_upload_id = models.CharField(max_length=1024)
    # The base64 SHA-256 each part's URL was signed for, by part number: a store that does not list
    # part checksums (moto) still tells which stored part is which bytes.
    part_checksums = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.UPLOADING)
    detail = models.TextField(blank=True)
    file = models.ForeignKey(File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                "key", condition=models.Q(state__in=["uploading", "hashing"]), name="one_active_upload_per_key"
            ),
            models.CheckConstraint(condition=models.Q(size__gt=0), name="browser_upload_size_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.path} ({self.state})"

    @property
    def part_count(self) -> int:
        return -(-self.size // self.part_size)

    def part_length(self, number: int) -> int:
        return min(self.part_size, self.size - (number - 1) * self.part_size)
