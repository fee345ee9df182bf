"""The app's models, by concern: the catalogue (models, versions, files, tags), the CDN outbox, and
download counts, run reports; rules.py holds the checks and orderings that need no database."""

from .catalog import File, FileQuerySet, MLModel, MLModelQuerySet, Tag, Version, VersionQuerySet
from .downloads import DailyDownloads, DownloadFold
from .outbox import OutboxEntry
from .rules import (
    MAX_PATH_LENGTH,
    ImmutableError,
    canonical_path,
    default_object_key,
    natural_sort_key,
    user_sees_drafts,
    validate_model_slug,
    validate_notes,
    validate_object_key,
    validate_relative_path,
    validate_tag,
    validate_version_string,
)
from .run_reports import (
    CLIENTS,
    NOT_THE_SITES_DOING,
    OUTCOMES,
    RUN_KINDS,
    SUCCESS,
    SYSTEMS,
    RunAlert,
    RunOutcomeHour,
    RunReportFold,
    RunReportsByModel,
)
from .uploads import BrowserUpload

__all__ = [
    "CLIENTS",
    "NOT_THE_SITES_DOING",
    "OUTCOMES",
    "RUN_KINDS",
    "SUCCESS",
    "SYSTEMS",
    "MAX_PATH_LENGTH",
    "BrowserUpload",
    "DailyDownloads",
    "DownloadFold",
    "File",
    "FileQuerySet",
    "ImmutableError",
    "MLModel",
    "MLModelQuerySet",
    "OutboxEntry",
    "RunAlert",
    "RunOutcomeHour",
    "RunReportFold",
    "RunReportsByModel",
    "Tag",
    "Version",
    "VersionQuerySet",
    "canonical_path",
    "default_object_key",
    "natural_sort_key",
    "user_sees_drafts",
    "validate_model_slug",
    "validate_notes",
    "validate_object_key",
    "validate_relative_path",
    "validate_tag",
    "validate_version_string",
]
