"""Real servers on free loopback ports for tests: varnishd, redis-server, a Celery worker,
and a small recording HTTP server that stands in for a CDN's API.

Each one is started by a test or fixture and stopped by it, by its own process id.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VCL = REPO_ROOT / "docker" / "varnish" / "default.vcl"
PURGE_TOKEN = "test-purge-token-for-the-suite-only"  # long enough for DJANGO_ENV=production


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class Varnish:
    """varnishd with the shipped VCL, in front of `backend_port`; purges need `purge_token`
    (given to varnishd as VARNISH_PURGE_TOKEN; None leaves it unset)."""

    def __init__(
        self, backend_port: int, purgers: tuple[str, ...] = ("127.0.0.1",), purge_token: str | None = PURGE_TOKEN
    ):
        self.port = free_port()
        self.purge_token = purge_token
        self.workdir = Path(tempfile.mkdtemp(prefix="varnish-"))
        self.workdir.chmod(0o755)  # the cache process runs as an unprivileged user
        # ... which may not read the clone itself (a home directory, a 0700 temporary folder):
        # it gets copies of the VCL in a folder it can read.
        shutil.copy(VCL, self.workdir / VCL.name)
        (self.workdir / VCL.name).chmod(0o644)
        (self.workdir / "site.vcl").write_text(
            f'backend default {{ .host = "127.0.0.1"; .port = "{backend_port}"; }}\n'
            "acl purgers { " + " ".join(f'"{address}";' for address in purgers) + " }\n"
        )
        self.log = open(self.workdir / "varnishd.log", "w")
        self.process = subprocess.Popen(
            [
                shutil.which("varnishd") or "/usr/sbin/varnishd",
                "-F",
                "-n", str(self.workdir / "instance"),
                "-a", f"127.0.0.1:{self.port}",
                "-T", "127.0.0.1:0",
                "-f", str(self.workdir / VCL.name),
                "-p", f"vcl_path={self.workdir}",
                "-s", "malloc,64m",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={key: value for key, value in os.environ.items() if key != "VARNISH_PURGE_TOKEN"}
            | ({"VARNISH_PURGE_TOKEN": purge_token} if purge_token is not None else {}),
        )  # fmt: skip
        wait_until(lambda: self.process.poll() is not None or port_open(self.port), 30, what="varnishd")
        if self.process.poll() is not None:
            raise RuntimeError(f"varnishd exited: {(self.workdir / 'varnishd.log').read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.process)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Gunicorn:
    """gunicorn with the shipped configuration on a free loopback port, in a process group of its own."""

    def __init__(self, env: dict, workers: int = 1):
        self.port = free_port()
        self.logfile = tempfile.NamedTemporaryFile("w+", prefix="gunicorn-", suffix=".log", delete=False)
        env = {**env, "GUNICORN_BIND": f"127.0.0.1:{self.port}", "WEB_CONCURRENCY": str(workers)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "site_config/gunicorn.py", "site_config.wsgi"],
            cwd=REPO_ROOT, env=env, stdout=self.logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: self.process.poll() is not None or port_open(self.port), 60, what="gunicorn")
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return Path(self.logfile.name).read_text()

    def stop(self) -> None:
        stop(self.process, timeout=30)
        os.unlink(self.logfile.name)


class RedisServer:
    """A redis-server of the test's own, which the test may stop and start again on the same port."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 15, what="redis-server")
        return self

    def stop(self) -> None:
        if self.process:
            stop(self.process)
            self.process = None


def django_env(**overrides) -> dict:
    """The environment for a subprocess of the site: this test database, DATA_DIR and queue."""
    from django.conf import settings
    from django.db import connection

    database = connection.settings_dict
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "STORAGE_", "CDN_", "CELERY_", "OUTBOX_", "REDIS_URL", "FASTLY_"))
    }
    env.update(
        DATABASE_URL=f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        DATA_DIR=str(settings.DATA_DIR),
        CELERY_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
    )
    env.update({key: str(value) for key, value in overrides.items()})
    return env


class CeleryWorker:
    """`celery worker` in a subprocess, one pool process, on the test's queues (both, unless `queues`)."""

    def __init__(self, env: dict, queues: list[str] | None = None):
        self.env = env
        queues = queues or [env["CELERY_QUEUE"], env["CELERY_QUEUE"] + "-heavy"]
        self.logfile = tempfile.NamedTemporaryFile("w+", prefix="celery-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "site_config", "worker",
                "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
                "-Q", ",".join(queues), "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-n", f"test-{os.getpid()}-{free_port()}@%h",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: "ready." in self.log() or self.process.poll() is not None, 60, what="celery worker")
        if self.process.poll() is not None:
            raise RuntimeError(f"celery worker exited:\n{self.log()}")

    def log(self) -> str:
        return Path(self.logfile.name).read_text()

    def pool_children(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def stop(self) -> None:
        stop(self.process, timeout=30)
        os.unlink(self.logfile.name)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict


@dataclass
class RecordingServer:
    """An HTTP server that records every request and answers with `respond(request) -> (status, body)`."""

    respond: object = None
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self):
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                record = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                recorder.requests.append(record)
                status, body = recorder.respond(record) if recorder.respond else (200, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PURGE = _handle

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PostgresServer:
    """A PostgreSQL cluster of the test's own (initdb in a temporary folder, trust auth, loopback),
    which the test may restart; the machine's shared server is never touched."""

    def __init__(self):
        import glob
        import pwd

        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        account = pwd.getpwnam("postgres")
        os.chown(self.dir, account.pw_uid, account.pw_gid)
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    def _as_postgres(self, command: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, cwd=self.dir)

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.dir / "log"),
                "-w",
                "-o",
                options,
                "-m",
                "fast",
                action,
            ]
        )

    def start(self) -> PostgresServer:
        self._ctl("start")
        return self

    def restart(self) -> None:
        self._ctl("restart")

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._ctl("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
