"""Faults the site must ride out without a restart of its own (storage down, broker down and a
killed worker are in test_health.py and test_tasks.py)."""

import subprocess
import sys
import urllib.request

import pytest

from .servers import REPO_ROOT, Gunicorn, PostgresServer, wait_until


@pytest.fixture
def own_postgres():
    server = PostgresServer().start()
    yield server
    server.stop()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_the_site_recovers_after_postgresql_restarts(own_postgres, tmp_path):
    env = {
        "PATH": f"{REPO_ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "DATABASE_URL": own_postgres.url(),
        "DATA_DIR": str(tmp_path),
        "STATIC_ROOT": str(tmp_path / "static"),
    }
    for command in (["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"], ["seed_demo"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    web = Gunicorn(env, workers=2)
    site = web.url
    urls = [f"{site}/api/v1/models/demo-tts/versions/latest", f"{site}/models/demo-tts/", f"{site}/readyz"]
    try:
        wait_until(lambda: get(urls[0]) == 200, 60, what="gunicorn")
        for url in urls * 4:  # every worker thread holds a database connection now
            assert get(url) == 200
        own_postgres.restart()  # every one of those connections is dead
        statuses = [get(url) for url in urls * 8]
    finally:
        web.stop()
    assert statuses == [200] * len(statuses)  # health checks on reuse: no request sees the dead connections
