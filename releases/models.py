"""The release domain: an MLModel (a published model) has Versions, a Version has Files.

Querysets own the two rules everybody else uses: what is *public* and what is
*latest*. Services (services.py) are the only writers.
"""

import re
import unicodedata

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
RESERVED_VERSIONS = frozenset({"latest"})
MAX_PATH_LENGTH = 1024
_DIGITS = re.compile(r"(\d+)")
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class ImmutableError(ValidationError):
    """A change to something that is published and therefore fixed."""


def validate_model_slug(value: str) -> None:
    if len(value) > 100 or not _SLUG.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a valid model name: use lower-case letters, digits and single hyphens (e.g. index-tts).",
            code="invalid_model_slug",
        )


def validate_version_string(value: str) -> None:
    if not VERSION_PATTERN.fullmatch(value or ""):
        raise ValidationError(
            f"{value!r} is not a valid version: start with a letter or digit, then up to 63 of "
            "letters, digits, '.', '_', '+', '-' (e.g. v23, 2.0.1).",
            code="invalid_version",
        )
    if value.lower() in RESERVED_VERSIONS:
        raise ValidationError(f"{value!r} is reserved and cannot be a version.", code="reserved_version")


def validate_notes(value: str) -> None:
    """Within RELEASE_NOTES_MAX_BYTES and renderable (see rendering.py)."""
    from .rendering import render_markdown

    render_markdown(value)


def canonical_path(value: str) -> str:
    """Paths are stored in Unicode NFC: "café.bin" typed on macOS (NFD) and on Linux (NFC) is one path."""
    return unicodedata.normalize("NFC", value)


def validate_relative_path(value: str, *, what: str = "path") -> None:
    """A relative POSIX path that cannot climb out of its folder."""
    problem = None
    if not value:
        problem = "is empty"
    elif len(value) > MAX_PATH_LENGTH:
        problem = f"is longer than {MAX_PATH_LENGTH} characters"
    elif value.startswith("/"):
        problem = "must be relative (no leading '/')"
    elif "\\" in value:
        problem = "must not contain a backslash"
    elif any(ord(char) < 32 or ord(char) == 127 for char in value):
        problem = "must not contain control characters"
    else:
        segments = value.split("/")
        if any(segment == "" for segment in segments):
            problem = "must not contain an empty segment ('//' or a trailing '/')"
        elif any(segment in {".", ".."} for segment in segments):
            problem = "must not contain '.' or '..' segments"
    if problem:
        raise ValidationError(f"File {what} {value!r} {problem}.", code=f"invalid_{what}")


def validate_object_key(key: str, model_slug: str) -> None:
    """Object keys stay inside the model's prefix, so one model never reaches another's objects."""
    validate_relative_path(key, what="key")
    if not key.startswith(f"{model_slug}/"):
        raise ValidationError(
            f"Object key {key!r} must start with the model's prefix {model_slug + '/'!r}.", code="key_outside_model"
        )


def natural_sort_key(version: str) -> str:
    """A string whose plain ordering is the natural order of versions.

    Each run of digits becomes its length (two digits) then the digits without
    leading zeros, so v9 < v10 < v23 and 1.2 < 1.10; letters compare case-blind.
    """

    def encode(match: re.Match) -> str:
        digits = match.group(1).lstrip("0") or "0"
        return f"{len(digits):02d}{digits}"

    # Hex of the bytes, so that every database collation orders it like the bytes
    # (some collations skip punctuation such as '.', '-' and '+').
    return _DIGITS.sub(encode, version.lower()).encode().hex()


def default_object_key(model_slug: str, version: str, path: str) -> str:
    return f"{model_slug}/{version}/{path}"


class MLModelQuerySet(models.QuerySet):
    def public(self):
        """Models with at least one version an anonymous visitor may see."""
        return self.filter(versions__status__in=Version.Status.listed()).distinct()

    def visible_to(self, user):
        return self if user_sees_drafts(user) else self.public()


class MLModel(models.Model):
    slug = models.CharField(
        max_length=100,
        unique=True,
        validators=[validate_model_slug],
        help_text="Lower-case letters, digits and hyphens; part of every URL (e.g. index-tts).",
    )
    name = models.CharField(max_length=200)
    summary = models.CharField(max_length=300, blank=True)
    description = models.TextField(blank=True, help_text="Markdown.")
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

    objects = FileQuerySet.as_manager()

    class Meta:
        ordering = ["version", "path"]
        constraints = [
            models.UniqueConstraint("version", "path", name="unique_path_per_version"),
            models.CheckConstraint(condition=models.Q(size__gte=0), name="file_size_not_negative"),
            models.CheckConstraint(condition=models.Q(sha256__regex=r"^[0-9a-f]{64}$"), name="file_sha256_is_hex"),
        ]

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


class OutboxEntry(models.Model):
    """CDN work caused by a change, written in the change's own transaction and drained after commit.

    One pending row per (kind, key): recording the same key again bumps its
    generation instead of adding a row, and a worker only marks a row done if
    nothing bumped it while the work was in flight.
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


def user_sees_drafts(user) -> bool:
    """Drafts are for maintainers who may view versions in the admin (view_version): a staff flag
    alone shows nothing more than the public sees."""
    return bool(
        user is not None
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
        and user.has_perm("releases.view_version")
    )
