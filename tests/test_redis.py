"""The cache and the Celery broker are the machine's real Redis when REDIS_URL is set (as `make test` does)."""

import uuid

import redis
from django.conf import settings
from django.core.cache import cache

from site_config.celery import app


def test_cache_round_trips_through_redis():
    assert settings.REDIS_URL, "make test sets REDIS_URL to the machine's Redis"
    key = f"test-{uuid.uuid4().hex}"
    cache.set(key, {"answer": 42}, timeout=30)
    assert cache.get(key) == {"answer": 42}
    direct = redis.Redis.from_url(settings.REDIS_URL)
    assert direct.exists(cache.make_and_validate_key(key)) == 1
    cache.delete(key)


def test_celery_uses_redis_as_broker_and_does_not_run_tasks_eagerly():
    assert app.conf.broker_url == settings.REDIS_URL
    assert settings.CELERY_TASK_ALWAYS_EAGER is False  # (tests flip it per test; workers keep it)
    assert app.conf.task_acks_late is True
