"""System checks that need the outside world, so they run with `manage.py check --deploy` only."""

import time
from pathlib import Path

from django.conf import settings
from django.core import checks


def static_manifest_problem() -> str | None:
    """Production's static files storage needs collectstatic's manifest; without it every page is a 500."""
    from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage

    if not isinstance(staticfiles_storage, ManifestFilesMixin):
        return None
    manifest = Path(settings.STATIC_ROOT) / staticfiles_storage.manifest_name
    if manifest.is_file():
        return None
    return (
        f"{manifest} is missing: run `python manage.py collectstatic --noinput` (STATIC_ROOT={settings.STATIC_ROOT})."
    )


@checks.register(checks.Tags.security, deploy=True)
def static_files_are_collected(app_configs=None, **kwargs):
    problem = static_manifest_problem()
    return [checks.Error(problem, id="releases.E003")] if problem else []


@checks.register(checks.Tags.security, deploy=True)
def signing_credentials_outlive_links(app_configs=None, **kwargs):
    """S3 links die with their credentials: temporary credentials must live at least 2 x SIGNED_URL_TTL.

    At that lifetime the background renewal can always hand out links that keep the TTL
    (see aws.CredentialKeeper); below it, links near a renewal would end early.
    """
    from . import aws
    from .storage import release_store

    store = release_store()
    if store.backend_name != "s3" or store.keys is not None:
        return []
    try:
        credentials = aws.fetch_credentials()
    except aws.CredentialsUnavailable as error:
        return [checks.Error(str(error), id="releases.E001")]
    left = credentials.seconds_left(time.time())
    needed = 2 * settings.SIGNED_URL_TTL
    if left >= needed:
        return []
    return [
        checks.Error(
            f"The AWS credentials found expire in {int(left)} s, fewer than 2 x SIGNED_URL_TTL ({needed} s), "
            "so download links could end before the lifetime they promise.",
            hint=f"Lower SIGNED_URL_TTL to at most {int(left) // 2}, or raise the role's maximum session "
            "duration (DurationSeconds / duration_seconds in the AWS profile).",
            id="releases.E002",
        )
    ]
