"""The production stack as far as it can be checked without a Docker engine: the files parse,
every service and setting is wired, the entrypoint runs here against the local services,
and `check --deploy` is clean with the shipped production environment."""

import os
import re
import subprocess
import sys
import urllib.request

import pytest
import yaml

from .servers import REPO_ROOT, free_port, stop, wait_until

DOCKER = REPO_ROOT / "docker"
VENV_PATH = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"  # as /opt/venv/bin in the image


def example_env() -> dict:
    pairs = (line.split("=", 1) for line in (REPO_ROOT / ".env.example").read_text().splitlines())
    return {key: value for key, value in (p for p in pairs if len(p) == 2) if not key.startswith("#")}


def variables_read_by(*names: str) -> set[str]:
    source = "".join((REPO_ROOT / "site_config" / name).read_text() for name in names)
    return set(re.findall(r'env_(?:str|bool|int|choice|list)\(\s*"([A-Z0-9_]+)"', source))


def settings_variables() -> set[str]:
    return variables_read_by("settings.py", "env.py")


def test_env_example_lists_every_setting_and_gunicorn_option():
    listed = set(example_env())
    assert settings_variables() - listed == set()
    gunicorn = variables_read_by("gunicorn.py")
    assert {"GUNICORN_BIND", "GUNICORN_TIMEOUT"} <= gunicorn and gunicorn - listed == set()
    assert {"WEB_CONCURRENCY", "GUNICORN_THREADS"} <= settings_variables() & set(listed)
    assert "WAIT_TIMEOUT" in listed  # the entrypoint's


def gunicorn(flag: str, **env: str) -> subprocess.CompletedProcess:
    """gunicorn with site_config/gunicorn.py and `flag` (it serves nothing), in this environment only."""
    command = [sys.executable, "-m", "gunicorn", flag, "-c", "site_config/gunicorn.py", "site_config.wsgi"]
    return subprocess.run(command, cwd=REPO_ROOT, env={"PATH": VENV_PATH, **env}, capture_output=True, text=True)


def gunicorn_config(**env: str) -> dict[str, str]:
    """The workers, threads and timeout gunicorn makes of site_config/gunicorn.py in this environment."""
    result = gunicorn("--print-config", **env)
    assert result.returncode == 0, result.stderr
    return dict(re.findall(r"^(workers|threads|timeout) += (\d+)$", result.stdout, re.M))


def test_gunicorn_runs_the_workers_and_threads_that_check_deploy_counts():
    from site_config import env as site_env

    assert gunicorn_config(WEB_CONCURRENCY="3", GUNICORN_THREADS="2", GUNICORN_TIMEOUT="90") == {
        "workers": "3", "threads": "2", "timeout": "90"
    }  # fmt: skip
    assert gunicorn_config() == {
        "workers": str(site_env.web_concurrency()), "threads": str(site_env.gunicorn_threads()), "timeout": "60"
    }  # fmt: skip


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be between 1 and 1000, got 0."),
        ("GUNICORN_THREADS", "four", "GUNICORN_THREADS must be a whole number, got 'four'."),
        ("GUNICORN_TIMEOUT", "-5", "GUNICORN_TIMEOUT must be between 1 and 3600, got -5."),
    ],
)
def test_gunicorn_refuses_a_bad_value_by_its_name(name, value, message):
    result = gunicorn("--check-config", **{name: value})
    assert result.returncode != 0 and message in result.stdout + result.stderr


def as_plain_up_reads(text: str) -> str:
    """The compose file with each ${NAME:-default} at its default: what `up` runs with no overrides."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_compose_file_wires_every_service():
    compose = yaml.safe_load(as_plain_up_reads((DOCKER / "compose.yaml").read_text()))
    services = compose["services"]
    assert {"web", "worker", "beat", "postgres", "redis", "s3", "create-bucket", "migrate", "varnish"} <= set(services)
    for role in ("web", "worker", "beat", "migrate"):
        service = services[role]
        assert service["command"][0] == role
        assert service["env_file"] == "../.env"
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["environment"]["DATABASE_URL"].endswith("@postgres:5432/releases")
    for role in ("web", "worker", "beat"):
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "name" not in compose  # Compose v1 refuses it: the project name is given with -p
    # A worker per queue: purges never wait behind hashing.
    assert services["worker"]["command"][1:] == ["-Q", "model-releases"]
    assert services["worker-heavy"]["command"][:3] == ["worker", "-Q", "model-releases-heavy"]
    assert services["varnish"]["environment"]["VARNISH_PURGE_TOKEN"].startswith("${CDN_PURGE_TOKEN:?")
    one_off = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_off == {"migrate", "create-bucket"}
    for name, service in services.items():  # the image's HEALTHCHECK is web's; every other service has its own
        assert name in one_off | {"web"} or service["healthcheck"]["test"], name
    for name in ("varnish", "create-bucket", "migrate"):
        assert all(
            dependency["condition"] in ("service_healthy", "service_completed_successfully")
            for dependency in services[name]["depends_on"].values()
        )
    assert "mc mb --ignore-existing" in services["create-bucket"]["command"][0]
    varnish = services["varnish"]
    assert "./varnish/default.vcl:/etc/varnish/default.vcl:ro" in varnish["volumes"]
    assert varnish["ports"] == ["8080:80"] and "http=0.0.0.0:80,HTTP" in varnish["command"]
    site_vcl = (DOCKER / "varnish" / "site.vcl").read_text()
    assert '.host = "web"' in site_vcl and '.port = "8000"' in site_vcl
    assert services["web"]["environment"]["CDN_PURGE_URL"] == "http://varnish:80"
    assert services["web"]["environment"]["GUNICORN_BIND"] == "0.0.0.0:8000"
    # The site reaches the store by name; clients on the host at its published port.
    assert services["web"]["environment"]["AWS_S3_ENDPOINT_URL"] == "http://s3:9000"
    assert services["web"]["environment"]["AWS_S3_PUBLIC_ENDPOINT_URL"] == "http://localhost:9000"
    assert services["s3"]["ports"] == ["9000:9000"] and services["create-bucket"]["environment"] == {
        "STORE_URL": "http://s3:9000"
    }


def test_compose_file_runs_the_official_images_by_default_and_takes_every_port_from_the_environment():
    text = (DOCKER / "compose.yaml").read_text()
    services = yaml.safe_load(as_plain_up_reads(text))["services"]
    images = {name: service["image"] for name, service in services.items() if "build" not in service}
    assert images == {
        "postgres": "postgres:16-alpine",
        "redis": "redis:7-alpine",
        "s3": "minio/minio:latest",
        "create-bucket": "minio/mc:latest",
        "varnish": "varnish:7.5",
    }
    # Each listening port is passed where the service reads it, so it holds on the host's network
    # too (docker/compose.host-network.yaml), where `ports:` do not apply.
    assert services["postgres"]["environment"]["PGPORT"] == 5432
    assert services["postgres"]["command"] == ["postgres", "-c", "listen_addresses=0.0.0.0"]
    assert services["redis"]["command"][-4:] == ["--bind", "0.0.0.0", "--port", "6379"]
    assert services["s3"]["command"][2:4] == ["--address", "0.0.0.0:9000"]
    for name in ("POSTGRES_PORT", "REDIS_PORT", "S3_PORT", "WEB_PORT", "VARNISH_PORT", "BIND_HOST"):
        assert "${" + name + ":-" in text, name
    # No fixed port is left: every number above comes from a ${NAME:-default}.
    assert not re.search(r"(?<![-\d])(5432|6379|9000|8000)(?!\d|\})", re.sub(r"\$\{[^}]*\}", "", text))


def test_the_host_network_override_puts_every_service_on_the_hosts_network_and_keeps_their_names():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    override = yaml.safe_load((DOCKER / "compose.host-network.yaml").read_text())["services"]
    assert set(override) == set(services)
    for service in override.values():
        assert service["network_mode"] == "host"
        assert {entry.split(":")[0] for entry in service["extra_hosts"]} >= {
            "postgres",
            "redis",
            "s3",
            "web",
            "varnish",
        }


def dockerfile_lines() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_is_multi_stage_non_root_and_collects_static_files():
    lines = dockerfile_lines()
    assert lines[0] == "ARG PYTHON_IMAGE=python:3.11-slim"  # the official image unless a build says otherwise
    assert [line for line in lines if line.startswith("FROM")] == [
        "FROM ${PYTHON_IMAGE} AS build",
        "FROM ${PYTHON_IMAGE}",
    ]
    assert "USER app" in lines
    assert any("requirements/prod.txt -c /tmp/requirements/constraints.txt" in line for line in lines)
    assert any("collectstatic --noinput" in line for line in lines)
    assert lines[-2:] == ['ENTRYPOINT ["docker/entrypoint.sh"]', 'CMD ["web"]']
    runtime = lines[lines.index("FROM ${PYTHON_IMAGE}") :]
    assert not [line for line in runtime if line.startswith("ARG")]  # build args stay in the build stage
    for line in (line for line in runtime if line.startswith("COPY") and "--from" not in line):
        for path in line.split()[1:-1]:
            assert (REPO_ROOT / path).exists(), path


def test_the_image_collects_production_static_files_without_any_secret(tmp_path):
    """The Dockerfile's own collectstatic line, run here: with it, the web role's check --deploy passes."""
    (command,) = [line for line in dockerfile_lines() if "collectstatic" in line]
    assignments = dict(word.split("=", 1) for word in command.removeprefix("RUN ").split(" python ")[0].split())
    build_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "CDN_", "DJANGO_"))}
    build_env.update(DATA_DIR=str(tmp_path / "data"), STATIC_ROOT=str(tmp_path / "static"), **assignments)
    collected = manage_py(build_env, "collectstatic", "--noinput", "-v", "0")
    assert collected.returncode == 0, collected.stderr
    assert (tmp_path / "static" / "staticfiles.json").is_file()
    assert not (tmp_path / "data").exists()  # no key, database or anything else left in the image
    runtime = production_env(
        DATA_DIR=str(tmp_path / "data"), STATIC_ROOT=str(tmp_path / "static"), DATABASE_URL=f"sqlite:///{tmp_path}/db"
    )
    result = manage_py(runtime, "check", "--deploy", "--fail-level", "ERROR")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_files_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", "-s", "sh", str(DOCKER / "entrypoint.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def production_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "CDN_", "DJANGO_", "SITE_URL"))}
    env.update(example_env())
    # One host (the local store): SINGLE_NODE says so, or check --deploy refuses it (releases.E004).
    env.update(
        DJANGO_SECRET_KEY="x7" * 30 + "kQ9", STORAGE_BACKEND="local", CDN_BACKEND="none", SINGLE_NODE="1", **extra
    )
    return env


def manage_py(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def test_check_deploy_is_clean_with_the_production_environment_once_static_files_are_collected(tmp_path):
    env = production_env(
        DATA_DIR=str(tmp_path), STATIC_ROOT=str(tmp_path / "static"), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3"
    )
    missing = manage_py(env, "check", "--deploy", "--fail-level", "WARNING")
    assert missing.returncode != 0 and "releases.E003" in missing.stderr
    assert (
        f"{tmp_path / 'static' / 'staticfiles.json'} is missing: run `python manage.py collectstatic" in missing.stderr
    )
    assert manage_py(env, "collectstatic", "--noinput", "-v", "0").returncode == 0  # its own checks pass without it
    result = manage_py(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("production", [False, True], ids=["development", "production"])
def test_gunicorn_without_collectstatic(tmp_path, production):
    """Development pages work straight from the app's folders; production refuses to start."""
    from .servers import Gunicorn, django_env

    env = django_env(STATIC_ROOT=tmp_path / "empty-static", DJANGO_ENV="production" if production else "development",
                     DJANGO_SECRET_KEY="x7" * 30 + "kQ9", DJANGO_ALLOWED_HOSTS="127.0.0.1", DJANGO_SECURE_SSL_REDIRECT="0")  # fmt: skip
    if production:
        try:
            site = Gunicorn(env)  # the master may bind its port before the worker fails to boot
            wait_until(lambda: site.process.poll() is not None, 60, what="gunicorn to give up")
            log = site.log()
            site.stop()
        except RuntimeError as exited:
            log = str(exited)
        assert "staticfiles.json is missing: run `python manage.py collectstatic" in log
        return
    site = Gunicorn(env)
    try:
        page = urllib.request.urlopen(f"{site.url}/", timeout=10)
        stylesheet = re.search(rb'href="(/static/[^"]+\.css)"', page.read()).group(1).decode()
        assert urllib.request.urlopen(site.url + stylesheet, timeout=10).status == 200
    finally:
        site.stop()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_ENV=production needs DJANGO_SECRET_KEY"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ENV=production needs DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": "1"}, "DJANGO_DEBUG must be off with DJANGO_ENV=production"),
    ],
)
def test_production_fails_fast_without_its_secrets(tmp_path, change, message):
    env = {**production_env(DATA_DIR=str(tmp_path)), **change}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.django_db(transaction=True)
def test_entrypoint_migrates_then_serves_with_gunicorn(tmp_path):
    from .servers import django_env

    env = {**django_env(), "DJANGO_ENV": "development", "WAIT_TIMEOUT": "20", "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
           "WEB_CONCURRENCY": "1", "STATIC_ROOT": str(tmp_path / "static"), "PATH": VENV_PATH}  # fmt: skip
    migrate = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "migrate"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "database: up" in migrate.stdout and "No migrations to apply." in migrate.stdout
    web = subprocess.Popen([str(DOCKER / "entrypoint.sh"), "web"], cwd=REPO_ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://{env['GUNICORN_BIND']}"

        def ready():
            try:
                return urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200
            except OSError:
                return False

        wait_until(ready, 60, what="gunicorn behind the entrypoint")
    finally:
        stop(web)
    assert b"Booting worker" in web.stdout.read()


def test_entrypoint_gives_up_clearly_when_a_service_never_comes(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/none", "WAIT_TIMEOUT": "2",
           "DATA_DIR": str(tmp_path), "PATH": VENV_PATH}  # fmt: skip
    result = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "migrate"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "database is not reachable" in result.stderr
