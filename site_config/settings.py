"""Settings for Model Releases.

This module and gunicorn.py read the process environment (12-factor), both through
site_config/env.py, which also holds the values they share. Every variable is listed in
README.md. A backend that is chosen but not configured fails here, at start-up, with
ImproperlyConfigured.
"""

import ipaddress
import os
import secrets
from email.utils import getaddresses
from pathlib import Path

import dj_database_url
from cryptography.exceptions import UnsupportedAlgorithm
from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_choice, env_int, env_list, env_str, gunicorn_threads, web_concurrency

BASE_DIR = Path(__file__).resolve().parent.parent


# --- Embedded default: everything the site writes lives under DATA_DIR. ---
DATA_DIR = Path(env_str("DATA_DIR", "var")).expanduser()
if not DATA_DIR.is_absolute():
    DATA_DIR = (BASE_DIR / DATA_DIR).resolve()


def check_cloudfront_key(pem: bytes, source: str) -> None:
    """CloudFront's canned policy is signed with RSA: refuse any other key now, not on every download."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    where = f"CLOUDFRONT_PRIVATE_KEY_FILE {source}"
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ImproperlyConfigured(
            f"{where} is encrypted with a passphrase; give it unencrypted (openssl rsa -in KEY -out PLAIN)."
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ImproperlyConfigured(f"{where} is not a PEM private key ({error}).") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ImproperlyConfigured(f"{where} is not an RSA key; CloudFront signed URLs need an RSA private key.")


def persistent_secret_key() -> str:
    """A key kept in DATA_DIR so that the embedded default needs no configuration."""
    path = DATA_DIR / "secret_key"
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    try:  # created readable by the owner only; the first of two racing processes wins
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


# DJANGO_ENV=production turns on everything a public deployment needs (and requires its secrets);
# the default, development, is the embedded site that `make run` serves on plain HTTP.
# DJANGO_ENV=build is for building an image: `collectstatic` makes production's static files
# without any secret or service (the key is random and kept nowhere; the build serves nothing).
DJANGO_ENV = env_choice("DJANGO_ENV", "development", ("development", "production", "build"))
PRODUCTION = DJANGO_ENV == "production"
DEBUG = env_bool("DJANGO_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off with DJANGO_ENV=production.")
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_ENV=production needs DJANGO_SECRET_KEY (50+ random characters).")
    SECRET_KEY = secrets.token_urlsafe(50) if DJANGO_ENV == "build" else persistent_secret_key()
ALLOWED_HOSTS = env_list(
    "DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ENV=production needs DJANGO_ALLOWED_HOSTS (comma-separated host names).")
SITE_URL = env_str("SITE_URL").rstrip("/")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [SITE_URL] if SITE_URL else [])

# HTTPS and browser hardening. TLS ends at the load balancer or CDN in front of the site,
# which says so in X-Forwarded-Proto.
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # probes speak plain HTTP inside the network
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0, maximum=63072000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "releases",
]

MIDDLEWARE = [
    "releases.observability.RequestIdMiddleware",
    "releases.observability.CountsMiddleware",
    "releases.middleware.ProbesOnAnyHostMiddleware",  # before the host check, so probes by address work
    "django.middleware.security.SecurityMiddleware",
    "releases.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "releases.middleware.JsonApiErrorsMiddleware",
    "django.middleware.http.ConditionalGetMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "releases.middleware.SigningUnavailableMiddleware",
]

ROOT_URLCONF = "site_config.urls"
WSGI_APPLICATION = "site_config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        conn_max_age=60,
        conn_health_checks=True,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or DATA_DIR / "static")  # the image collects into /app/static
WHITENOISE_USE_FINDERS = not PRODUCTION  # without collectstatic, outside production

# --- Object storage for release files: one storage alias for one purpose. ---
STORAGE_BACKEND = env_choice("STORAGE_BACKEND", "local", ("local", "s3"))
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY = env_str("AWS_ACCESS_KEY_ID"), env_str("AWS_SECRET_ACCESS_KEY")
if bool(AWS_ACCESS_KEY_ID) != bool(AWS_SECRET_ACCESS_KEY):
    raise ImproperlyConfigured(
        "Set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use the instance's role)."
    )
AWS_SESSION_TOKEN = env_str("AWS_SESSION_TOKEN")  # with exported temporary keys (they cannot be renewed)
AWS_REGION_NAME = env_str("AWS_S3_REGION_NAME", "us-east-1")
# "auto" is botocore's choice: virtual-hosted, or path style where the bucket name cannot be a host name.
AWS_S3_ADDRESSING_STYLE = env_str("AWS_S3_ADDRESSING_STYLE").lower()
if AWS_S3_ADDRESSING_STYLE not in ("", "auto", "path", "virtual"):
    raise ImproperlyConfigured(
        f"AWS_S3_ADDRESSING_STYLE must be auto, path or virtual; got {AWS_S3_ADDRESSING_STYLE!r}."
    )


def release_storage() -> dict:
    """Where release files live (releases.storage builds the store from this)."""
    if STORAGE_BACKEND == "local":
        return {"BACKEND": "local", "OPTIONS": {"location": str(DATA_DIR / "objects")}}
    bucket = env_str("AWS_STORAGE_BUCKET_NAME")
    if not bucket:
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME.")
    endpoint_url = env_str("AWS_S3_ENDPOINT_URL") or None
    # Where clients reach the store when the site reaches it elsewhere (a service name on a private
    # network): download links and browser part uploads are signed for this address.
    public_endpoint_url = env_str("AWS_S3_PUBLIC_ENDPOINT_URL").rstrip("/") or None
    if public_endpoint_url and not public_endpoint_url.startswith(("http://", "https://")):
        raise ImproperlyConfigured(
            f"AWS_S3_PUBLIC_ENDPOINT_URL must be an http:// or https:// address; got {public_endpoint_url!r}."
        )
    access_key, secret_key = AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    return {
        "BACKEND": "s3",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url,
            "public_endpoint_url": public_endpoint_url,
            "region_name": AWS_REGION_NAME,
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            "security_token": AWS_SESSION_TOKEN or None,
            # S3-compatible stores on a custom endpoint rarely have per-bucket DNS.
            "addressing_style": AWS_S3_ADDRESSING_STYLE or ("path" if endpoint_url or public_endpoint_url else "auto"),
        },
    }


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production serves hashed, compressed copies made by collectstatic (check --deploy and the web
    # workers refuse to start without them); elsewhere pages work straight from the app's folders.
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION or DJANGO_ENV == "build"
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
RELEASE_STORAGE = release_storage()
MEDIA_ROOT = DATA_DIR / "media"

# Signed download links: valid for at least the TTL and at most twice it.
# 302400 s (3.5 days) keeps twice the TTL inside SigV4's 7-day limit.
SIGNED_URL_TTL = env_int("SIGNED_URL_TTL", 3600, minimum=1, maximum=302400)

# --- CDN in front of downloads and pages ---
CDN_BACKEND = env_choice("CDN_BACKEND", "none", ("none", "varnish", "fastly", "cloudfront"))
CDN_BASE_URL = env_str("CDN_BASE_URL").rstrip("/")
# Varnish: one or more caches (comma-separated), each purged on every change; the shipped VCL
# admits a purge only with CDN_PURGE_TOKEN in X-Purge-Token (varnishd's VARNISH_PURGE_TOKEN).
CDN_PURGE_URL = ",".join(url.rstrip("/") for url in env_list("CDN_PURGE_URL", []))
for purge_url in CDN_PURGE_URL.split(",") if CDN_PURGE_URL else []:
    if not purge_url.startswith(("http://", "https://")) or " " in purge_url:
        raise ImproperlyConfigured(f"CDN_PURGE_URL must list http:// or https:// addresses; got {purge_url!r}.")
CDN_PURGE_TOKEN = env_str("CDN_PURGE_TOKEN")
if PRODUCTION and CDN_BACKEND == "varnish" and len(CDN_PURGE_TOKEN) < 32:
    raise ImproperlyConfigured(
        "DJANGO_ENV=production with CDN_BACKEND=varnish needs CDN_PURGE_TOKEN (32+ random characters, "
        "the same value as the cache's VARNISH_PURGE_TOKEN)."
    )
# CloudFront signed URLs (optional): the key pair's id and a PEM private key file.
CLOUDFRONT_KEY_ID = env_str("CLOUDFRONT_KEY_ID")
CLOUDFRONT_PRIVATE_KEY = b""
CLOUDFRONT_DISTRIBUTION_ID = ""
if CDN_BACKEND == "cloudfront":
    if not CDN_BASE_URL:
        raise ImproperlyConfigured("CDN_BACKEND=cloudfront needs CDN_BASE_URL (the distribution's https:// address).")
    key_file = env_str("CLOUDFRONT_PRIVATE_KEY_FILE")
    if bool(CLOUDFRONT_KEY_ID) != bool(key_file):
        raise ImproperlyConfigured(
            "CloudFront signed URLs need both CLOUDFRONT_KEY_ID and CLOUDFRONT_PRIVATE_KEY_FILE (or neither)."
        )
    if key_file:
        try:
            CLOUDFRONT_PRIVATE_KEY = Path(key_file).read_bytes()
        except OSError as error:
            raise ImproperlyConfigured(f"CLOUDFRONT_PRIVATE_KEY_FILE {key_file}: {error.strerror}.") from None
        check_cloudfront_key(CLOUDFRONT_PRIVATE_KEY, key_file)
    CLOUDFRONT_DISTRIBUTION_ID = env_str("CLOUDFRONT_DISTRIBUTION_ID")
    if not CLOUDFRONT_DISTRIBUTION_ID:
        raise ImproperlyConfigured("CDN_BACKEND=cloudfront needs CLOUDFRONT_DISTRIBUTION_ID (to invalidate paths).")
AWS_CLOUDFRONT_ENDPOINT_URL = env_str("AWS_CLOUDFRONT_ENDPOINT_URL") or None  # an emulator, in tests
if CDN_BACKEND == "varnish" and not CDN_PURGE_URL:
    raise ImproperlyConfigured("CDN_BACKEND=varnish needs CDN_PURGE_URL (the cache's address for PURGE requests).")
FASTLY_API_URL = env_str("FASTLY_API_URL", "https://api.fastly.com")
FASTLY_SERVICE_ID, FASTLY_API_TOKEN = env_str("FASTLY_SERVICE_ID"), env_str("FASTLY_API_TOKEN")
if CDN_BACKEND == "fastly" and not (FASTLY_SERVICE_ID and FASTLY_API_TOKEN):
    raise ImproperlyConfigured("CDN_BACKEND=fastly needs FASTLY_SERVICE_ID and FASTLY_API_TOKEN.")
CDN_TIMEOUT = env_int("CDN_TIMEOUT", 30, minimum=1, maximum=3600)
WARM_CONCURRENCY = env_int("WARM_CONCURRENCY", 4, minimum=1, maximum=64)
WARM_MAX_BYTES = env_int("WARM_MAX_BYTES", 20 * 1024**3, minimum=0, maximum=10**15)

# Release notes: at most this many bytes of Markdown (rendered once, when written).
RELEASE_NOTES_MAX_BYTES = env_int("RELEASE_NOTES_MAX_BYTES", 262144, minimum=1024, maximum=16 * 1024 * 1024)

# Uploads of at least this size use S3 multipart transfer (in parts of this size).
RELEASE_MULTIPART_THRESHOLD = 64 * 1024 * 1024
# Parts of one file sent at once (publish_release --jobs overrides it).
RELEASE_UPLOAD_JOBS = env_int("RELEASE_UPLOAD_JOBS", 8, minimum=1, maximum=64)
# An unfinished multipart upload older than this is abandoned: the beat job aborts it (its parts cost storage).
STALE_UPLOAD_HOURS = env_int("STALE_UPLOAD_HOURS", 24, minimum=1, maximum=24 * 30)
# How long a part URL handed to the admin's upload page stays valid (it asks again for each part).
UPLOAD_PART_URL_SECONDS = env_int("UPLOAD_PART_URL_SECONDS", 900, minimum=10, maximum=7 * 86400)

# --- Cache and background jobs ---
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None  # results are off by default (task_ignore_result); kept for inspection
# With no broker configured, tasks run in the process that queued them (after commit).
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
# Two queues by kind, so that a purge never waits behind an hour of hashing: CDN work and light jobs
# on CELERY_QUEUE, hashing (verify, chunk manifests, uploads' checks) on CELERY_QUEUE-heavy. A worker
# started without -Q consumes both; docs/operations.md runs one worker per queue.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "model-releases")
CELERY_HEAVY_QUEUE = f"{CELERY_TASK_DEFAULT_QUEUE}-heavy"
CELERY_TASK_QUEUES = {CELERY_TASK_DEFAULT_QUEUE: {}, CELERY_HEAVY_QUEUE: {}}
HEAVY_TASKS = (
    "releases.tasks.verify_files",
    "releases.chunk_tasks.build_chunk_manifest",
    "releases.chunk_tasks.backfill_chunk_manifests",
    "releases.upload_tasks.finish_upload",
)
CELERY_TASK_ROUTES = {name: {"queue": CELERY_HEAVY_QUEUE} for name in HEAVY_TASKS}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # a worker that died mid-task: the task runs again
# A task that fails or exceeds its time limit is acknowledged, never redelivered: its own handler
# (or the beat job that sweeps for it) decides what happens next, so a hash too long for its limit
# does not loop.
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# On SIGQUIT (the image maps docker stop's SIGTERM to it), running tasks get this long, then go
# back to the queue unacknowledged: within docker stop's 10 s, nothing in progress is lost.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 4.0
CELERY_TASK_IGNORE_RESULT = True
# The longest hard time limit of any task (finish_upload's, upload_tasks.py; a test keeps them in step).
LONGEST_TASK_SECONDS = 55 * 60
# A message whose worker died unacknowledged is delivered again after this long. Below the longest
# time limit, the broker would hand a task that is still running to a second worker.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=10, maximum=86400)
if CELERY_VISIBILITY_TIMEOUT < LONGEST_TASK_SECONDS:
    raise ImproperlyConfigured(
        f"CELERY_VISIBILITY_TIMEOUT ({CELERY_VISIBILITY_TIMEOUT} s) is below the longest task time limit "
        f"({LONGEST_TASK_SECONDS} s, hashing an uploaded object): the broker would deliver a running task "
        f"to a second worker. Set it to at least {LONGEST_TASK_SECONDS}."
    )
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
# Queueing must not hang a publish when the broker is down: fail fast, the beat job catches up.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# No schedule file: each job runs once per period of its interval, claimed in Redis by whichever
# beat gets there first (releases/beat.py), so any number of beats, with or without a volume, agree.
CELERY_BEAT_SCHEDULER = "releases.beat:PeriodScheduler"
# Task modules besides releases/tasks.py (found by autodiscovery) that every worker registers.
CELERY_IMPORTS = ["releases.chunk_tasks", "releases.upload_tasks"]
# Production refuses what holds only on one host (local store, no Redis) unless this says so.
SINGLE_NODE = env_bool("SINGLE_NODE", False)
# For the connection check of `check --deploy`: web nodes expected at once, each running
# WEB_CONCURRENCY x GUNICORN_THREADS threads (site_config/gunicorn.py), one connection each.
EXPECTED_WEB_NODES = env_int("EXPECTED_WEB_NODES", 1, minimum=1, maximum=1000)
WEB_CONCURRENCY = web_concurrency()
GUNICORN_THREADS = gunicorn_threads()

# --- Beat jobs: every interval in seconds, from the environment ---
CELERY_BEAT_SCHEDULE = {
    "verify": {
        "task": "releases.tasks.verify_files",
        "schedule": env_int("VERIFY_INTERVAL", 3600, minimum=10, maximum=7 * 86400),
    },
    "drain-outbox": {
        "task": "releases.tasks.drain_outbox",
        "schedule": env_int("DRAIN_OUTBOX_INTERVAL", 60, minimum=1, maximum=86400),
    },
    "warm-pending": {
        "task": "releases.tasks.warm_pending",
        "schedule": env_int("WARM_INTERVAL", 300, minimum=1, maximum=86400),
    },
    # Also the most download counts a Redis restart can lose (see releases/download_fold.py).
    "rollup-downloads": {
        "task": "releases.tasks.rollup_downloads",
        "schedule": env_int("ROLLUP_DOWNLOADS_INTERVAL", 300, minimum=10, maximum=86400),
    },
    # Chunk manifests that publishing did not build (broker down, a failure, files published before).
    "backfill-chunk-manifests": {
        "task": "releases.chunk_tasks.backfill_chunk_manifests",
        "schedule": env_int("CHUNK_BACKFILL_INTERVAL", 600, minimum=10, maximum=7 * 86400),
    },
    "abort-stale-uploads": {
        "task": "releases.upload_tasks.abort_stale_uploads",
        "schedule": env_int("ABORT_UPLOADS_INTERVAL", 3600, minimum=60, maximum=7 * 86400),
    },
}
CHUNK_BACKFILL_BATCH_SIZE = env_int("CHUNK_BACKFILL_BATCH_SIZE", 20, minimum=1, maximum=10_000)
VERIFY_BATCH_SIZE = env_int("VERIFY_BATCH_SIZE", 200, minimum=1, maximum=100_000)
VERIFY_BYTE_BUDGET = env_int("VERIFY_BYTE_BUDGET", 2 * 1024**3, minimum=0, maximum=10**15)
VERIFY_CONCURRENCY = env_int("VERIFY_CONCURRENCY", 4, minimum=1, maximum=16)  # objects read at once
OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 200, minimum=1, maximum=10_000)
OUTBOX_MAX_ATTEMPTS = env_int("OUTBOX_MAX_ATTEMPTS", 8, minimum=1, maximum=100)
OUTBOX_BACKOFF_SECONDS = env_int("OUTBOX_BACKOFF_SECONDS", 30, minimum=1, maximum=3600)
OUTBOX_LEASE_SECONDS = env_int("OUTBOX_LEASE_SECONDS", 600, minimum=10, maximum=86400)
# A periodic job's lock lives this long and is renewed every third of it while the job runs,
# so the lock of a job whose worker was killed frees itself within this time.
JOB_LOCK_SECONDS = env_int("JOB_LOCK_SECONDS", 60, minimum=10, maximum=3600)

# Download counts: the same client and file within this many seconds count once (releases/downloads.py).
DOWNLOAD_DEDUPE_SECONDS = env_int("DOWNLOAD_DEDUPE_SECONDS", 600, minimum=1, maximum=86400)
# The proxies in front (as gunicorn's setting of the same name, same default): behind them the client
# is read from X-Forwarded-For. "*" trusts any private address (releases/client_address.py).
FORWARDED_ALLOW_IPS = env_list("FORWARDED_ALLOW_IPS", ["127.0.0.1"])
try:
    TRUSTED_PROXY_NETWORKS = [ipaddress.ip_network(item, strict=False) for item in FORWARDED_ALLOW_IPS if item != "*"]
except ValueError as error:
    raise ImproperlyConfigured(f"FORWARDED_ALLOW_IPS must be addresses, networks or '*': {error}.") from None

# Run reports from the served clients (docs/run-reports.md): accepted or not, shown publicly or not,
# how many per client address and minute, and when a version's first runs count as failing.
RUN_REPORTS = env_choice("RUN_REPORTS", "on", ("on", "off")) == "on"
RUN_REPORTS_PUBLIC = env_bool("RUN_REPORTS_PUBLIC", False)
RUN_REPORTS_PER_MINUTE = env_int("RUN_REPORTS_PER_MINUTE", 30, minimum=1, maximum=100_000)
RUN_ALERT_THRESHOLD = env_int("RUN_ALERT_THRESHOLD", 95, minimum=1, maximum=100)
RUN_ALERT_MIN_RUNS = env_int("RUN_ALERT_MIN_RUNS", 20, minimum=1, maximum=1_000_000)
CELERY_BEAT_SCHEDULE["rollup-run-reports"] = {  # folds the counts, then checks for failing versions
    "task": "releases.report_tasks.rollup_run_reports",
    "schedule": env_int("RUN_REPORTS_INTERVAL", 300, minimum=10, maximum=86400),
}
CELERY_IMPORTS.append("releases.report_tasks")

# Who hears about verify failures and CDN work that keeps failing: "Name <a@b>, Name <c@d>"
# (RFC 5322 address lists, read by the standard library: quoted names may hold commas).
ADMINS = [(name or address, address) for name, address in getaddresses([env_str("DJANGO_ADMINS")]) if name or address]
if any("@" not in address for _, address in ADMINS):
    raise ImproperlyConfigured(f"DJANGO_ADMINS must be addresses like 'Ops <ops@example.org>'; got {ADMINS!r}.")
SERVER_EMAIL = env_str("SERVER_EMAIL", "model-releases@localhost")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)

# Logs: JSON lines in production (plain text in development), each with the request id
# that also follows a request into the tasks it queued.
LOG_FORMAT = env_choice("DJANGO_LOG_FORMAT", "json" if PRODUCTION else "plain", ("json", "plain"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "releases.observability.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "releases.observability.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django": {"level": env_str("DJANGO_LOG_LEVEL", "INFO")}},
}

# /metrics (Prometheus text format) answers only with this bearer token; unset, it does not exist.
METRICS_TOKEN = env_str("METRICS_TOKEN")
