"""What the bench scripts share: free ports, waiting for a server, the site's management commands."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 60, interval: float = 0.1) -> None:
    """Poll `condition()` until it is true; fail if `process` exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{what} did not happen")
        time.sleep(interval)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until `url` answers; fail if `process` exits or `timeout` passes first."""

    def answers() -> bool:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            return False

    wait_until(answers, process, f"an answer from {url}", timeout)


def manage(env: dict, *commands: list[str]) -> None:
    """Run manage.py commands in the given environment (a site of the bench's own)."""
    for command in commands:
        subprocess.run([sys.executable, str(REPO / "manage.py"), *command], env=env, check=True, capture_output=True)


def start_gunicorn(env: dict, port: int, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "site_config.wsgi", "-b", f"127.0.0.1:{port}", *options],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
