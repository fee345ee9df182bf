"""System checks that need the outside world, so they run with `manage.py check --deploy` only."""

import time

from django.conf import settings
from django.core import checks


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
