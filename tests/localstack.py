"""LocalStack S3 for tests, without Docker (stdlib only: imported from the main test venv).

Owns two things:
- the LocalStack virtualenv, built from requirements/localstack.txt and rebuilt whenever
  that file changes (a stamp in the venv holds the file's hash);
- one LocalStack process: S3 only, host mode, on 127.0.0.1:<port> only, signature
  validation on, telemetry off, no outside traffic, everything it writes under data_dir,
  in its own process group so stop() ends it with its children.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements" / "localstack.txt"
LOG_NAME = "localstack.log"
_STATIC = "usr/lib/localstack"  # under FILESYSTEM_ROOT: where LocalStack looks for its prebuilt catalog
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy vars
_STARTED: dict[int, tuple[subprocess.Popen, Path]] = {}  # port -> (process, log), for wait_ready

# Run localstack.runtime.main with two fixes that no setting gives (localstack-core 4.13):
# its twisted server ignores the host of GATEWAY_LISTEN and binds 0.0.0.0, and it resolves
# "s3.<LOCALSTACK_HOST>" through the system's DNS resolver.
_BOOTSTRAP = """
import runpy
from twisted.internet import endpoints
from localstack.utils.aws import aws_stack
_tcp4 = endpoints.TCP4ServerEndpoint
endpoints.TCP4ServerEndpoint = lambda r, port, backlog=50, interface="": _tcp4(
    r, port, backlog, interface or "127.0.0.1")
aws_stack.CACHE_S3_HOSTNAME_DNS_STATUS = False
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"""


def ensure_venv(root: Path) -> Path:
    """Build the venv at root unless it matches requirements/localstack.txt; return its python."""
    root = Path(root)
    python = root / "bin" / "python"
    stamp = root / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    base = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which("python3.11")
    if not base:
        raise RuntimeError("LocalStack's venv needs python3.11")
    subprocess.run([base, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    # Prebuild the AWS service catalog that LocalStack otherwise builds at every start
    # (in a fresh data_dir): start() copies it, saving ~4 s and ~350 MB of RSS per start.
    fs = root / "fs"
    (fs / _STATIC).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(python), "-m", "localstack.aws.spec"],
        cwd=fs,
        check=True,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(fs),
            "TMPDIR": str(fs),
            "FILESYSTEM_ROOT": str(fs),
            "OVERRIDE_IN_DOCKER": "0",
        },
    )
    stamp.write_text(digest + "\n")
    return python


def start(python: Path, port: int, data_dir: Path) -> subprocess.Popen:
    """Start LocalStack S3 on 127.0.0.1:port; it logs to data_dir/localstack.log."""
    data_dir = Path(data_dir).resolve()
    for sub in ("home", "tmp", f"fs/{_STATIC}"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    for catalog in (Path(python).parent.parent / "fs" / _STATIC).glob("service-catalog-*"):
        shutil.copy(catalog, data_dir / "fs" / _STATIC)
    env = {
        "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(data_dir / "home"),
        "CONFIG_DIR": str(data_dir / "home" / ".localstack"),
        "TMPDIR": str(data_dir / "tmp"),  # LocalStack warns it is "deprecated"; tempfile needs it
        "FILESYSTEM_ROOT": str(data_dir / "fs"),  # its /var/lib/localstack, /etc/localstack, ...
        "OVERRIDE_IN_DOCKER": "0",  # else /.dockerenv makes it use /var/lib/localstack, ping 172.17.0.1
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "SERVICES": "s3",
        "EAGER_SERVICE_LOADING": "1",
        "S3_SKIP_SIGNATURE_VALIDATION": "0",
        "PERSISTENCE": "0",
        "DISABLE_EVENTS": "1",  # analytics/telemetry
        "SKIP_SSL_CERT_DOWNLOAD": "1",  # self-signed cert instead of fetching one
        "DNS_ADDRESS": "0",  # no DNS server on port 53
    }
    log = data_dir / LOG_NAME
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(python), "-c", _BOOTSTRAP],
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _STARTED[port] = (process, log)
    return process


def wait_ready(port: int, timeout: float = 60) -> None:
    """Poll the health endpoint until S3 is up; raise with the log's tail if it is not."""
    process, log = _STARTED.get(port, (None, None))
    url = f"http://127.0.0.1:{port}/_localstack/health"
    deadline = time.monotonic() + timeout
    problem = f"not ready after {timeout} s"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            problem = f"exited with {process.returncode}"
            break
        if log and log.is_file() and b"CannotListenError" in log.read_bytes():
            problem = "port taken"  # it logs this, says "Ready." and keeps running
            break
        try:
            with _NO_PROXY.open(url, timeout=2) as response:
                if json.load(response)["services"].get("s3") in ("available", "running"):
                    return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace").splitlines()[-40:] if log and log.is_file() else []
    raise RuntimeError(f"LocalStack S3 on port {port}: {problem}; {log}:\n" + "\n".join(tail))


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, and reap the process."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the leader if it lingers, and any children left
    except ProcessLookupError:
        pass
    process.wait()
