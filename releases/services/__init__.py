"""Write paths for releases: the only code that creates or changes models, versions and files.
The admin and the management commands call these.

* `versions`: models and versions, status changes (and the CDN work they record), metadata;
* `files`: the files of a draft: bytes to storage first, then a short transaction records them;
* `local_release`: a set of local files published as a version (publish_release);
* `model_cards`: a model's description, license, tags and links;
* `chunks`: chunk manifests of published files (for delta updates), built after publishing.

Every refusal raises ReleaseError with one sentence a maintainer can act on, and leaves
nothing behind: no version without its files, no object that the refused call uploaded. No
transaction is ever open while bytes move or storage is asked (see releases.locks).
"""

from .chunks import ManifestOutcome, backfill_chunk_manifests, build_chunk_manifest, files_for_manifests
from .common import ReleaseError, retry_cdn_work
from .files import add_file, delete_draft, register_object, remove_file
from .local_release import LocalFile, ReleaseOutcome, release_local_files
from .model_cards import clean_tags, save_model_details, set_model_info
from .versions import (
    STATUS_ACTIONS,
    change_status,
    create_version,
    get_or_create_model,
    publish_version,
    update_version_details,
    withdraw_version,
    yank_version,
)

__all__ = [
    "STATUS_ACTIONS",
    "LocalFile",
    "ManifestOutcome",
    "ReleaseError",
    "ReleaseOutcome",
    "add_file",
    "backfill_chunk_manifests",
    "build_chunk_manifest",
    "change_status",
    "clean_tags",
    "create_version",
    "delete_draft",
    "get_or_create_model",
    "publish_version",
    "files_for_manifests",
    "register_object",
    "release_local_files",
    "remove_file",
    "retry_cdn_work",
    "save_model_details",
    "set_model_info",
    "update_version_details",
    "withdraw_version",
    "yank_version",
]
