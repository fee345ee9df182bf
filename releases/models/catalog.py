"""The release domain: an MLModel (a published model) has Versions, a Version has Files.

Querysets own the two rules everybody else uses: what is *public* and what is
*latest*. Services are the only writers.
"""

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from ..licenses import validate_license
from .rules import (
    MAX_PATH_LENGTH,
    ImmutableError,
    natural_sort_key,
    user_sees_drafts,
    validate_model_slug,
    validate_notes,
    validate_relative_path,
    validate_tag,
    validate_version_string,
)


class MLModelQuerySet(models.QuerySet):
    def public(self):
        """Models with at least one version an anonymous visitor may see."""
        return self.filter(versions__status__in=Version.Status.listed()).distinct()

    def visible_to(self, user):
        return self if user_sees_drafts(user) else self.public()


class Tag(models.Model):
    """A word visitors filter and search models by (e.g. tts, chinese)."""

    name = models.CharField(max_length=50, unique=True, validators=[validate_tag])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MLModel(models.Model):
    slug = models.CharField(
        max_length=100,
        unique=True,
        validators=[validate_model_slug],
        help_text="Lower-case letters, digits and hyphens; part of every URL (e.g. index-tts).",
    )
    name = models.CharField(max_length=200)
    summary = models.CharField(max_length=300, blank=True)
    description = models.TextField(
        blank=True, validators=[validate_notes], help_text="The model card: Markdown, rendered sanitised."
    )
    description_html = models.TextField(blank=True, editable=False)  # rendered from `description` when written
    license = models.CharField(
        max_length=64, blank=True, validators=[validate_license], help_text="An SPDX identifier, e.g. Apache-2.0."
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="models")
    homepage_url = models.URLField("homepage", max_length=500, blank=True)
    source_url = models.URLField("source code", max_length=500, blank=True)
    paper_url = models.URLField("paper", max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = MLModelQuerySet.as_manager()

    class Meta:
        # "Model" would shadow Django's own; visitors and the admin still say "model".
        verbose_name = "model"
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class VersionQuerySet(models.QuerySet):
    def listed(self):
        """Versions shown to anonymous visitors (withdrawn ones are shown, as withdrawn)."""
        return self.filter(status__in=Version.Status.listed())

    def visible_to(self, user):
        return self if user_sees_drafts(user) else self.listed()

    def downloadable(self):
        """Versions whose files may be signed: published or yanked."""
        return self.filter(status__in=Version.Status.downloadable())

    def natural_order(self):
        """Newest first, in natural version order."""
        return self.order_by("-sort_key", "-created_at")

    def latest_candidates(self):
        return self.filter(status=Version.Status.PUBLISHED, prerelease=False).natural_order()

    def latest_for(self, model):
        """The highest published, non-yanked, non-prerelease version of a model, or None."""
        return self.filter(model=model).latest_candidates().first()


class Version(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        YANKED = "yanked", "Yanked"
        WITHDRAWN = "withdrawn", "Withdrawn"

        @classmethod
        def listed(cls):
            return [cls.PUBLISHED, cls.YANKED, cls.WITHDRAWN]

        @classmethod
        def downloadable(cls):
            return [cls.PUBLISHED, cls.YANKED]

    # Which status may follow which; services enforce it.
    TRANSITIONS = {
        Status.DRAFT: {Status.PUBLISHED},
        Status.PUBLISHED: {Status.YANKED, Status.WITHDRAWN},
        Status.YANKED: {Status.PUBLISHED, Status.WITHDRAWN},
        Status.WITHDRAWN: set(),
    }

    model = models.ForeignKey(MLModel, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=64, validators=[validate_version_string])
    sort_key = models.CharField(max_length=400, editable=False, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    prerelease = models.BooleanField(default=False, help_text="Never chosen as latest.")
    notes = models.TextField(
        "release notes", blank=True, validators=[validate_notes], help_text="Markdown; rendered sanitised."
    )
    notes_html = models.TextField(blank=True, editable=False)  # rendered from `notes` when they are written
    yanked_reason = models.TextField(blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = VersionQuerySet.as_manager()

    class Meta:
        ordering = ["model", "-sort_key"]
        constraints = [
            models.UniqueConstraint(
                "model",
                Lower("version"),
                name="unique_version_per_model_case_blind",
                violation_error_message="This model already has that version (versions are case-blind).",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id and self.model.slug} {self.version}"

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        if {"model_id", "version", "status"} <= instance.__dict__.keys():
            instance._stored_identity = (instance.model_id, instance.version, instance.status)
        return instance

    def save(self, *args, **kwargs):
        stored = getattr(self, "_stored_identity", None)
        if stored and stored[2] != self.Status.DRAFT and stored[:2] != (self.model_id, self.version):
            raise ImmutableError(
                f"Version {stored[1]} is {stored[2]}; its model and version string are part of published URLs "
                "and cannot change.",
                code="immutable_version",
            )
        self.sort_key = natural_sort_key(self.version)
        if kwargs.get("update_fields") is not None and "version" in kwargs["update_fields"]:
            kwargs["update_fields"] = {*kwargs["update_fields"], "sort_key"}
        super().save(*args, **kwargs)
        self._stored_identity = (self.model_id, self.version, self.status)

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def is_downloadable(self) -> bool:
        return self.status in self.Status.downloadable()

    def can_become(self, status: str) -> bool:
        return status in self.TRANSITIONS[self.Status(self.status)]


class FileQuerySet(models.QuerySet):
    def published(self):
        return self.filter(version__status__in=Version.Status.downloadable())


class File(models.Model):
    class Verification(models.TextChoices):
        UNVERIFIED = "unverified", "Not verified yet"
        OK = "ok", "OK"
        MISSING = "missing", "Missing"
        MISMATCH = "mismatch", "Mismatch"
        ERROR = "error", "Error"

    # Fixed once the version leaves draft: a change is a new version.
    IMMUTABLE_FIELDS = ("version_id", "path", "key", "size", "sha256")

    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=MAX_PATH_LENGTH, help_text="Relative path, e.g. checkpoints/model.pt.")
    key = models.CharField("object key", max_length=MAX_PATH_LENGTH, unique=True)
    size = models.BigIntegerField(help_text="Bytes.")
    sha256 = models.CharField("SHA-256", max_length=64)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    managed_object = models.BooleanField(
        default=True,
        editable=False,
        help_text="The site uploaded this object, so it may delete it while the version is a draft.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    verification_status = models.CharField(
        max_length=16, choices=Verification.choices, default=Verification.UNVERIFIED, db_index=True
    )
    verified_at = models.DateTimeField(null=True, blank=True, db_index=True)
    verification_detail = models.TextField(blank=True)
    hashed_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="Last time the whole object was read and re-hashed."
    )
    warmed_at = models.DateTimeField(null=True, blank=True, help_text="Last time the CDN fetched it.")
    # Its content-defined chunk manifest (releases.chunking), shared by every file with this SHA-256:
    # null while none was built, 0 when none is kept (it would not stay under 0.1% of the file),
    # else the manifest's bytes in the release storage at `.chunks/<sha256>`. Not immutable: it
    # describes the bytes, it does not change them.
    chunks_size = models.BigIntegerField(
        "chunk manifest bytes", null=True, blank=True, editable=False, help_text="Null until it is built."
    )

    objects = FileQuerySet.as_manager()

    class Meta:
        ordering = ["version", "path"]
        constraints = [
            models.UniqueConstraint("version", "path", name="unique_path_per_version"),
            models.CheckConstraint(condition=models.Q(size__gte=0), name="file_size_not_negative"),
            models.CheckConstraint(condition=models.Q(sha256__regex=r"^[0-9a-f]{64}$"), name="file_sha256_is_hex"),
        ]
        indexes = [models.Index(fields=["sha256"], name="file_sha256")]  # chunk manifests are found by content

    def __str__(self) -> str:
        return self.path

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        # Only what was loaded: reading a deferred field here would load it, from here, forever.
        instance._stored = {name: instance.__dict__[name] for name in cls.IMMUTABLE_FIELDS if name in instance.__dict__}
        return instance

    def changed_immutable_fields(self) -> list[str]:
        stored = getattr(self, "_stored", None)
        if self._state.adding or stored is None:
            return []
        return [name for name in stored if getattr(self, name) != stored[name]]

    def clean(self):
        validate_relative_path(self.path)
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValidationError({"sha256": "SHA-256 must be 64 lower-case hex digits."})
        self.check_mutable()

    def check_mutable(self) -> None:
        changed = self.changed_immutable_fields()
        involved = {self._stored.get("version_id", self.version_id), self.version_id} if changed else set()
        if changed and Version.objects.filter(pk__in=involved, status=Version.Status.DRAFT).count() != len(involved):
            raise ImmutableError(
                f"File {self._stored.get('path', self.path)!r} belongs to a version that is no longer a draft; its "
                f"{', '.join(name.removesuffix('_id') for name in changed)} cannot change. "
                "Publish a new version instead.",
                code="immutable_file",
            )

    def save(self, *args, **kwargs):
        self.check_mutable()
        super().save(*args, **kwargs)
        self._stored = {name: getattr(self, name) for name in self.IMMUTABLE_FIELDS}

    def delete(self, *args, **kwargs):
        if not Version.objects.filter(pk=self.version_id, status=Version.Status.DRAFT).exists():
            raise ImmutableError(
                f"File {self.path!r} belongs to a version that is no longer a draft and cannot be removed; "
                "withdraw the version instead.",
                code="immutable_file",
            )
        return super().delete(*args, **kwargs)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]
