"""docker/compose.yaml itself, brought up: the shipped stack with docker/compose.host-network.yaml
(this machine gives containers no network of their own), the images scripts/docker-images.sh
names (the official ones where a registry answers, else Debian stand-ins), every service on a
free loopback port, and the journey of tests/docker/journey.py through it: a release published
in a container of the stack, the index, the API, a stable URL's redirect and bytes, and both
served clients through the stack's own Varnish. Run by `make docker-test`, after journey.py.

It fails with the file: a service that never turns healthy (a wrong healthcheck, a port it does
not listen on) fails `up` for the services that wait for it, and the wait below for the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from ..servers import REPO_ROOT, free_port, wait_until
from .journey import FILES, release_downloads_through, served_client_downloads
from .roles import DOCKER, example_env, figure, http_status

PROJECT = f"mr-compose-{os.getpid()}"
PORTS = ("POSTGRES_PORT", "REDIS_PORT", "S3_PORT", "S3_CONSOLE_PORT", "WEB_PORT", "VARNISH_PORT")
ONE_OFF = {"migrate", "create-bucket"}


class Stack:
    """`docker-compose -p PROJECT -f compose.yaml -f compose.host-network.yaml --env-file .env`."""

    def __init__(self, root, env: dict[str, str]):
        self.root, self.env = root, env
        self.site = f"http://localhost:{env['VARNISH_PORT']}"
        files = ("compose.yaml", "compose.host-network.yaml")
        self.command = ["docker-compose", "-p", PROJECT, "--env-file", str(root / ".env")]
        for name in files:
            self.command += ["-f", str(root / "docker" / name)]
        # Compose v1 refuses published ports on the host's network, and an override cannot remove
        # them: varnish's and s3's are dropped from the rendered file (docker/compose.host-network.yaml says so).
        rendered = yaml.safe_load(self("config"))
        for published in ("varnish", "s3"):
            assert rendered["services"][published].pop("ports")
        (root / "stack.yaml").write_text(yaml.safe_dump(rendered))
        self.command[-2 * len(files) :] = ["-f", str(root / "stack.yaml")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        result = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout + result.stderr

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "40", check=False)

    def health(self) -> dict[str, str]:
        """Each container's service and health: its healthcheck's status, else running/exited N."""
        states = {}
        for container in self("ps", "-aq").split():
            inspected = json.loads(
                subprocess.run([DOCKER, "inspect", container], capture_output=True, text=True, check=True).stdout
            )[0]
            state = inspected["State"]
            service = inspected["Config"]["Labels"]["com.docker.compose.service"]
            states[service] = state.get("Health", {}).get("Status") or (
                state["Status"] if state["Running"] else f"exited {state['ExitCode']}"
            )
        return states


def stack_env() -> dict[str, str]:
    """.env.example as shipped, with loopback addresses, free ports and plain HTTP."""
    env = example_env() | {name: str(free_port()) for name in PORTS}
    site = f"http://localhost:{env['VARNISH_PORT']}"
    return env | {
        "BIND_HOST": "127.0.0.1",
        "VARNISH_PUBLISH_PORT": str(free_port()),  # published ports do not apply on the host's network
        "S3_PUBLISH_PORT": str(free_port()),
        # Signed links: the test reaches the store here, the site by its name (s3, on loopback here).
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{env['S3_PORT']}",
        "DJANGO_ALLOWED_HOSTS": "models.example.org,localhost",
        "SITE_URL": site,
        "CSRF_TRUSTED_ORIGINS": site,
        "DJANGO_SECURE_SSL_REDIRECT": "0",  # no TLS terminator in front here
        "EMAIL_HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "2",
        "WAIT_TIMEOUT": "60",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("compose")
    shutil.copytree(REPO_ROOT / "docker", root / "docker")  # as shipped; a copy varnishd's user may read
    env = stack_env()
    site_vcl = root / "docker" / "varnish" / "site.vcl"  # the per-deployment part: where web listens
    site_vcl.write_text(site_vcl.read_text().replace('.port = "8000"', f'.port = "{env["WEB_PORT"]}"'))
    (root / ".env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    stack = Stack(root, env)

    def settled():
        states = stack.health()
        broken = {name: state for name, state in states.items() if state == "unhealthy" or state.startswith("exited")}
        assert all(name in ONE_OFF and state == "exited 0" for name, state in broken.items()), f"broken: {states}"
        return all(state == "healthy" or name in ONE_OFF for name, state in states.items()) and states

    try:
        try:
            started = time.monotonic()
            stack("up", "-d", timeout=600)  # waits for the healthy and completed services others depend on
            wait_until(settled, 180, interval=2, what="every service of the stack to be healthy")
            figure(f"docker-compose up to every service healthy: {time.monotonic() - started:.1f} s")
        except AssertionError:
            print(f"compose services: {stack.health()}\n{stack.logs()}", file=sys.stderr)
            raise
        yield stack
        if request.session.testsfailed:
            print(stack.logs(), file=sys.stderr)
    finally:
        stack("down", "-v", "--remove-orphans", check=False)


def test_every_service_turns_healthy_and_the_one_off_jobs_complete(stack):
    states = stack.health()
    assert {name: states.get(name) for name in ONE_OFF} == {name: "exited 0" for name in ONE_OFF}
    expected = {"postgres", "redis", "s3", "web", "worker", "worker-heavy", "beat", "varnish"}
    assert {name for name, state in states.items() if state == "healthy"} == expected
    assert http_status(f"{stack.site}/healthz") == 200


@pytest.fixture(scope="module")
def published(stack, tmp_path_factory):
    """`publish_release` in the stack's web container, from files copied into its /data volume
    (Compose v1's `run` gives a one-off container links, which the host's network refuses)."""
    release = tmp_path_factory.mktemp("release")
    for path, body in FILES.items():
        (release / path).parent.mkdir(parents=True, exist_ok=True)
        (release / path).write_bytes(body)
    for path in (release, *release.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (web,) = stack("ps", "-q", "web").split()
    subprocess.run([DOCKER, "cp", f"{release}/.", f"{web}:/data/incoming"], check=True, capture_output=True)
    files = (f"/data/incoming/{path}" for path in FILES)
    return stack("exec", "-T", "web", "python", "manage.py", "publish_release", "demo-tts", "v1", *files)


def test_a_release_published_in_the_stack_downloads_through_its_varnish(stack, published):
    release_downloads_through(stack.site, purge_seconds=60)


@pytest.mark.parametrize("client", ["fetch-model.sh", "fetch_model.py"])
def test_both_served_clients_download_through_the_stacks_varnish(stack, published, tmp_path, client):
    served_client_downloads(stack.site, client, tmp_path)
