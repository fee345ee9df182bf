"""The services every container journey runs against: a fresh database on the machine's
PostgreSQL and the suite's Redis database for each journey module, and one LocalStack S3 (it
checks signatures) for the whole run, each journey under a model name of its own."""

from __future__ import annotations

import os
import urllib.parse

import boto3
import psycopg
import pytest
import redis

from .. import localstack
from ..servers import REPO_ROOT, free_port


@pytest.fixture(scope="module")
def database_url(request):
    """A fresh database named after the suite's and the journey's, dropped afterwards."""
    base = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    name = f"{base.path.lstrip('/')}_{request.module.__name__.rsplit('.', 1)[-1]}"
    admin = base._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    yield base._replace(path=f"/{name}").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_url():
    url = os.environ["REDIS_URL"]
    redis.Redis.from_url(url).flushdb()  # the suite's own database number
    return url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """LocalStack's S3 with the bucket `releases`."""
    python = localstack.ensure_venv(REPO_ROOT / ".venv-localstack")
    port = free_port()
    process = localstack.start(python, port, tmp_path_factory.mktemp("localstack"))
    try:
        localstack.wait_ready(port)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).create_bucket(Bucket="releases")
        yield endpoint
    finally:
        localstack.stop(process)
