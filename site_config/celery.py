"""The Celery app, configured from Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

app = Celery("model_releases")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from releases.observability import connect_celery_signals  # noqa: E402 - after the app exists

connect_celery_signals()
