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


@checks.register(checks.Tags.security, deploy=True)
def production_is_not_tied_to_one_host(app_configs=None, **kwargs):
    """Several nodes need a shared store and a shared Redis: what the local store or a missing Redis
    keeps on one host (files, download counts, locks) is invisible from every other node."""
    if not settings.PRODUCTION or settings.SINGLE_NODE:
        return []
    hint = "Set SINGLE_NODE=1 if this deployment really is one host (web, worker and beat together)."
    errors = []
    if settings.RELEASE_STORAGE["BACKEND"] == "local":
        errors.append(
            checks.Error(
                "STORAGE_BACKEND=local keeps release files on this host: a file published on one node is "
                "missing on every other (and on a worker host). Use STORAGE_BACKEND=s3.",
                hint=hint,
                id="releases.E004",
            )
        )
    if not settings.REDIS_URL:
        errors.append(
            checks.Error(
                "REDIS_URL is unset: every process keeps its own download counts, job locks and task queue. "
                "Point REDIS_URL at the Redis all nodes share.",
                hint=hint,
                id="releases.E005",
            )
        )
    return errors


@checks.register(checks.Tags.database, deploy=True)
def web_threads_fit_the_database(app_configs=None, databases=None, **kwargs):
    """Each gunicorn thread keeps its own PostgreSQL connection (CONN_MAX_AGE): warn before the web
    nodes alone ask for more connections than the server allows. Asks the server, so like Django's
    own database checks it runs only when asked to: `check --deploy --database default`."""
    from django.db import connection

    if "default" not in (databases or ()) or connection.vendor != "postgresql":
        return []
    per_node = settings.WEB_CONCURRENCY * settings.GUNICORN_THREADS
    wanted = per_node * settings.EXPECTED_WEB_NODES
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('max_connections')::int")
        allowed = cursor.fetchone()[0]
    if wanted < allowed:
        return []
    return [
        checks.Warning(
            f"{settings.EXPECTED_WEB_NODES} web node(s) x WEB_CONCURRENCY {settings.WEB_CONCURRENCY} x "
            f"GUNICORN_THREADS {settings.GUNICORN_THREADS} = {wanted} database connections, and PostgreSQL "
            f"allows {allowed} (max_connections), before workers, beat and migrations take theirs.",
            hint="Lower WEB_CONCURRENCY or GUNICORN_THREADS, raise max_connections, or put pgbouncer in "
            "session mode in front (see docs/operations.md, Database connections).",
            id="releases.W001",
        )
    ]
