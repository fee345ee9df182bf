"""Containers of the production image for tests/docker: one per role, or N of a role, on the host's
network (each listening on its own loopback port), with a read-only root, a tmpfs /tmp and a
/data volume of its own, as a production orchestrator would run them.

Driven through the docker CLI named by $DOCKER, against the engine $DOCKER_HOST names
(scripts/docker-test.sh starts one of its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..servers import REPO_ROOT, free_port, wait_until

DOCKER = os.environ.get("DOCKER", "docker")
FIGURES = os.environ.get("DOCKER_TEST_FIGURES")
IMAGE = os.environ.get("APP_IMAGE", "model-releases:test")
QUEUES = "model-releases,model-releases-heavy"  # as docker/compose.yaml runs them
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the redirect itself is the answer (raised as an HTTPError with its code)


NO_REDIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def example_env() -> dict[str, str]:
    """.env.example as shipped: the production settings every role starts from."""
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def services_env(site: str, database_url: str, redis_url: str, s3_endpoint: str) -> dict[str, str]:
    """.env.example with only addresses and credentials changed: the suite's services, and a
    site on loopback over plain HTTP. DJANGO_ALLOWED_HOSTS keeps models.example.org and adds only
    `localhost` (the address the journeys use), so the HEALTHCHECK's 127.0.0.1 is still a host
    Django would refuse."""
    env = example_env()
    env.update(
        DJANGO_ALLOWED_HOSTS="models.example.org,localhost",
        SITE_URL=site,
        CSRF_TRUSTED_ORIGINS=site,
        DJANGO_SECURE_SSL_REDIRECT="0",  # no TLS terminator in front here: plain HTTP on loopback
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        STORAGE_BACKEND="s3",
        AWS_STORAGE_BUCKET_NAME="releases",
        AWS_S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        EMAIL_HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="2",
        WAIT_TIMEOUT="60",
    )
    return env


def figure(line: str) -> None:
    """A measured figure for docs/benchmarks.md (printed by scripts/docker-test.sh, never asserted)."""
    if FIGURES:
        with open(FIGURES, "a") as out:
            out.write(line + "\n")


def get(url: str, **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers)
    with NO_PROXY.open(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def http_status(url: str, host: str | None = None, timeout: float = 5) -> int | None:
    """The status a GET gets (redirects not followed), or None when nothing answers."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with NO_REDIRECT.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@dataclass
class Container:
    name: str
    role: str
    port: int | None = None  # gunicorn's, for web

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def logs(self, tail: int = 60) -> str:
        result = docker("logs", "--tail", str(tail), self.name, check=False)
        return result.stdout + result.stderr

    def timed_lines(self) -> list[tuple[float, str]]:
        """Every line of the container's log, with the epoch second docker received it."""
        result = docker("logs", "--timestamps", self.name, check=False)
        lines = []
        for line in (result.stdout + result.stderr).splitlines():
            stamp, _, text = line.partition(" ")  # 2026-12-03T13:07:06.123456789Z (trailing zeros cut)
            seconds, _, fraction = stamp.rstrip("Z").partition(".")
            lines.append((datetime.fromisoformat(seconds + "+00:00").timestamp() + float(f"0.{fraction or 0}"), text))
        return lines

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *command, check=check)

    def wait_healthy(self, timeout: float = 120) -> None:
        """The image's own HEALTHCHECK says healthy (or the container gave up: fail with its log)."""

        def settled():
            state = self.state()
            return not state["Running"] or state.get("Health", {}).get("Status") == "healthy"

        wait_until(settled, timeout, interval=0.5, what=f"{self.name} to be healthy")
        assert self.state()["Running"], f"{self.name} exited:\n{self.logs()}"

    def stop(self, grace: int = 10) -> tuple[float, int]:
        """`docker stop` with its default grace; returns (seconds taken, exit code: 137 is SIGKILL)."""
        started = time.monotonic()
        docker("stop", "-t", str(grace), self.name, timeout=grace + 30)
        return time.monotonic() - started, self.state()["ExitCode"]


@dataclass
class Roles:
    """Starts containers of `image` with the environment in `env` (written to an env file)."""

    image: str
    env: dict[str, str]
    workdir: Path
    started: list[Container] = field(default_factory=list)

    def __post_init__(self):
        self.env_file = self.workdir / "roles.env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in self.env.items()))

    def _run_args(self, name: str, env: dict[str, str], mounts: tuple[str, ...]) -> list[str]:
        args = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--env-file", str(self.env_file)]
        args += ["-v", f"{name}-data:/data", "--name", name]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for mount in mounts:
            args += ["-v", mount]
        return args

    def run(self, command: str, *args: str, env: dict | None = None, mounts: tuple[str, ...] = ()) -> str:
        """A one-off container (migrate, a manage.py command): waits for it, fails on a non-zero exit."""
        name = f"{command.replace('_', '-')}-{free_port()}"
        try:
            result = docker("run", *self._run_args(name, env or {}, mounts), self.image, command, *args, timeout=600)
        finally:
            docker("rm", "-v", name, check=False)
            docker("volume", "rm", f"{name}-data", check=False)
        return result.stdout + result.stderr

    def start(
        self, role: str, *args: str, count: int = 1, env: dict | None = None, ports: list[int] | None = None
    ) -> list[Container]:
        """`count` containers of `role`, named role-1, role-2, ... (web: each on a port of its own)."""
        containers = []
        for index in range(count):
            number = sum(1 for c in self.started if c.role == role) + 1
            container = Container(f"{role}-{number}", role)
            extra = dict(env or {})
            role_args = list(args)
            if role == "web":
                container.port = ports[index] if ports else free_port()
                extra["GUNICORN_BIND"] = f"127.0.0.1:{container.port}"
            if role == "worker":
                role_args += ["-n", f"{container.name}@%h"]  # one host name for every container here
            docker("run", "-d", *self._run_args(container.name, extra, ()), self.image, role, *role_args)
            self.started.append(container)
            containers.append(container)
        return containers

    def remove(self, *containers: Container) -> None:
        for container in containers:
            docker("rm", "-f", "-v", container.name, check=False)
            docker("volume", "rm", f"{container.name}-data", check=False)
            self.started.remove(container)

    def remove_all(self, show_logs: bool = False) -> None:
        """Every container started; with `show_logs` (a test failed), each one's log first, on stderr."""
        if show_logs:
            for container in self.started:
                print(f"--- {container.name} ---\n{container.logs()}", file=sys.stderr)
        self.remove(*self.started)
