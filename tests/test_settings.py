"""Settings read the environment once and fail fast on a backend that is chosen but not configured."""

import subprocess
import sys

import pytest

from .servers import REPO_ROOT

PRINT_SETTINGS = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.RELEASE_STORAGE['BACKEND'], settings.SIGNED_URL_TTL)"
)


def load_settings(tmp_path, **env):
    clean = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "site_config.settings", "DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS], cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True
    )


def test_the_embedded_default_needs_no_configuration(tmp_path):
    result = load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["local", "3600"]
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_s3_backend_with_its_settings(tmp_path):
    result = load_settings(
        tmp_path,
        STORAGE_BACKEND="s3",
        AWS_STORAGE_BUCKET_NAME="models",
        AWS_ACCESS_KEY_ID="a",
        AWS_SECRET_ACCESS_KEY="b",
        SIGNED_URL_TTL="600",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["s3", "600"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"STORAGE_BACKEND": "s3"}, "STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME"),
        (
            {"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "b", "AWS_ACCESS_KEY_ID": "a"},
            "Set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither",
        ),
        ({"STORAGE_BACKEND": "ftp"}, "STORAGE_BACKEND must be one of local, s3"),
        (
            {"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "b", "AWS_S3_PUBLIC_ENDPOINT_URL": "s3.example.org"},
            "AWS_S3_PUBLIC_ENDPOINT_URL must be an http:// or https:// address; got 's3.example.org'.",
        ),
        ({"SIGNED_URL_TTL": "0"}, "SIGNED_URL_TTL must be between 1 and 302400"),
        ({"SIGNED_URL_TTL": "302401"}, "SIGNED_URL_TTL must be between 1 and 302400"),
        ({"SIGNED_URL_TTL": "1h"}, "SIGNED_URL_TTL must be a whole number"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG must be a boolean"),
        ({"CDN_BACKEND": "akamai"}, "CDN_BACKEND must be one of none, varnish, fastly, cloudfront"),
        ({"CDN_BACKEND": "varnish"}, "CDN_BACKEND=varnish needs CDN_PURGE_URL"),
        ({"CDN_BACKEND": "cloudfront"}, "CDN_BACKEND=cloudfront needs CDN_BASE_URL"),
        (
            {"CDN_BACKEND": "cloudfront", "CDN_BASE_URL": "https://d.example", "CLOUDFRONT_KEY_ID": "K1"},
            "need both CLOUDFRONT_KEY_ID and CLOUDFRONT_PRIVATE_KEY_FILE",
        ),
        (
            {
                "CDN_BACKEND": "cloudfront",
                "CDN_BASE_URL": "https://d.example",
                "CLOUDFRONT_KEY_ID": "K1",
                "CLOUDFRONT_PRIVATE_KEY_FILE": "/nonexistent/key.pem",
            },
            "CLOUDFRONT_PRIVATE_KEY_FILE /nonexistent/key.pem",
        ),
        ({"CDN_BACKEND": "cloudfront", "CDN_BASE_URL": "https://d.example"}, "needs CLOUDFRONT_DISTRIBUTION_ID"),
        ({"CDN_BACKEND": "fastly"}, "CDN_BACKEND=fastly needs FASTLY_SERVICE_ID and FASTLY_API_TOKEN"),
        ({"VERIFY_INTERVAL": "1"}, "VERIFY_INTERVAL must be between 10"),
        (
            {"CELERY_VISIBILITY_TIMEOUT": "600"},
            "CELERY_VISIBILITY_TIMEOUT (600 s) is below the longest task time limit (3300 s, hashing an uploaded "
            "object): the broker would deliver a running task to a second worker. Set it to at least 3300.",
        ),
        ({"JOB_LOCK_SECONDS": "3601"}, "JOB_LOCK_SECONDS must be between 10 and 3600"),
        ({"SINGLE_NODE": "perhaps"}, "SINGLE_NODE must be a boolean"),
    ],
)
def test_misconfiguration_fails_at_start_up(tmp_path, env, message):
    result = load_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def _pem(kind: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if kind == "garbage":
        return b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    encryption = (
        serialization.BestAvailableEncryption(b"passphrase")
        if kind == "encrypted rsa"
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("encrypted rsa", "is encrypted with a passphrase; give it unencrypted"),
        ("ec", "is not an RSA key; CloudFront signed URLs need an RSA private key"),
        ("garbage", "is not a PEM private key"),
        ("rsa", None),
    ],
)
def test_cloudfront_keys_other_than_plain_rsa_fail_at_start_up(tmp_path, kind, message):
    key_file = tmp_path / "cloudfront.pem"
    key_file.write_bytes(_pem(kind))
    result = load_settings(
        tmp_path,
        CDN_BACKEND="cloudfront",
        CDN_BASE_URL="https://d.example",
        CLOUDFRONT_DISTRIBUTION_ID="E1",
        CLOUDFRONT_KEY_ID="K1",
        CLOUDFRONT_PRIVATE_KEY_FILE=str(key_file),
    )
    if message is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
        assert f"CLOUDFRONT_PRIVATE_KEY_FILE {key_file} {message}" in result.stderr


def test_admins_are_read_as_an_address_list(tmp_path):
    admins = 'Ops Team <ops@example.org>, "Doe, Jane" <jane@example.org>, noname@example.org'
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; print(settings.ADMINS)"],
        cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "site_config.settings",
                            "DATA_DIR": str(tmp_path), "DJANGO_ADMINS": admins},
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = [
        ("Ops Team", "ops@example.org"),
        ("Doe, Jane", "jane@example.org"),
        ("noname@example.org", "noname@example.org"),
    ]
    assert result.stdout.strip() == repr(expected)
    assert "DJANGO_ADMINS must be addresses" in load_settings(tmp_path, DJANGO_ADMINS="just a name").stderr


PRODUCTION = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": "k" * 60,
    "DJANGO_ALLOWED_HOSTS": "models.example.org",
}
S3 = {"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "b", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}


def check_deploy(tmp_path, *options, **env) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "STATIC_ROOT": str(tmp_path / "static")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", *options],
        cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "env, refused",
    [
        ({}, {"releases.E004", "releases.E005"}),
        ({**S3}, {"releases.E005"}),
        ({"REDIS_URL": "redis://redis.example:6379/0"}, {"releases.E004"}),
        ({**S3, "REDIS_URL": "redis://redis.example:6379/0"}, set()),
        ({"SINGLE_NODE": "1"}, set()),
    ],
)
def test_production_refuses_what_holds_on_one_host_only_unless_told_it_is_one(tmp_path, env, refused):
    result = check_deploy(tmp_path, **PRODUCTION, **env)
    found = {code for code in ("releases.E004", "releases.E005") if code in result.stderr}
    assert found == refused, result.stderr
    if "releases.E004" in refused:
        assert "STORAGE_BACKEND=local keeps release files on this host" in result.stderr
        assert "Set SINGLE_NODE=1 if this deployment really is one host" in result.stderr


def test_development_keeps_its_embedded_default(tmp_path):
    result = check_deploy(tmp_path)
    assert "releases.E004" not in result.stderr and "releases.E005" not in result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("nodes, warned", [(1, False), (1000, True)])
def test_check_deploy_warns_when_the_web_threads_outnumber_the_database_connections(tmp_path, nodes, warned):
    from .servers import django_env

    database = {"DATABASE_URL": django_env()["DATABASE_URL"]}
    sizes = {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4", "EXPECTED_WEB_NODES": str(nodes)}
    result = check_deploy(tmp_path, "--database", "default", **database, **sizes)
    assert ("releases.W001" in result.stderr) is warned, result.stderr
    assert "releases.W001" not in check_deploy(tmp_path, **database, **sizes).stderr  # asked to query, only
    if warned:
        assert "1000 web node(s) x WEB_CONCURRENCY 2 x GUNICORN_THREADS 4 = 8000 database connections" in result.stderr
