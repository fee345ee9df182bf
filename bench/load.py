"""`make load`: gunicorn as configured for production under wrk on loopback.

60 s each (LOAD_SECONDS) on /healthz, the `latest` API, a version page with
50 files and a stable redirect: requests/s, p50/p99, errors, the ratio to
/healthz, and the workers' memory before and after. Writes the table into the
Load section of docs/benchmarks.md, keeping the others. Exits 1 on any error response.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import free_port, manage, start_gunicorn, wait_for_http  # noqa: E402
from report import with_section  # noqa: E402

SECONDS = int(os.environ.get("LOAD_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("LOAD_CONNECTIONS", "32"))


def prepare(env: dict, work: Path) -> None:
    manage(env, ["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"], ["seed_demo"])
    source = work / "fifty"
    source.mkdir()
    for index in range(50):
        (source / f"shard-{index:02d}.safetensors").write_bytes(os.urandom(1024))
    manage(env, ["publish_release", "fifty-files", "v1", *[str(path) for path in sorted(source.iterdir())]])


def rss_kib(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    sizes = []
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        sizes.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)))
    return sizes


def wrk(url: str) -> dict:
    result = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout

    def latency(percentile: str) -> str:
        return re.search(rf"^\s+{percentile}%\s+(\S+)", out, re.M).group(1)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sum(map(int, sockets.groups())) if sockets else 0,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="model-releases-load-") as work:
        work = Path(work)
        port = free_port()
        env = {
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "site_config.settings",
            "DATA_DIR": str(work / "data"),
            "STATIC_ROOT": str(work / "static"),
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "DJANGO_LOG_LEVEL": "WARNING",
        }
        prepare(env, work)
        server = start_gunicorn(
            env, port, "-c", str(REPO / "site_config" / "gunicorn.py"), "--access-logfile", "/dev/null"
        )
        site = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{site}/api/v1/models/demo-tts/versions/latest", server)
            before = rss_kib(server.pid)
            targets = {
                "/healthz": f"{site}/healthz",
                "latest API": f"{site}/api/v1/models/demo-tts/versions/latest",
                "version page, 50 files": f"{site}/models/fifty-files/v1/",
                "stable redirect (302)": f"{site}/models/demo-tts/latest/model.pt",
            }
            results = {name: wrk(url) for name, url in targets.items()}
            after = rss_kib(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    base = results["/healthz"]["rps"]
    lines = [
        f"gunicorn ({len(before)} workers x 4 threads, site_config/gunicorn.py), wrk -t2 -c{CONNECTIONS}, "
        f"{SECONDS} s per row, loopback, SQLite, local storage, no CDN.",
        "",
        "| endpoint | requests/s | p50 | p99 | errors | vs /healthz |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results.items():
        errors = row["errors"] + row["socket_errors"]
        lines.append(
            f"| {name} | {row['rps']:.0f} | {row['p50']} | {row['p99']} | {errors} | {row['rps'] / base:.2f}x |"
        )
    lines += ["", f"Worker memory (RSS): before {', '.join(f'{k // 1024} MiB' for k in before)}; "
              f"after {', '.join(f'{k // 1024} MiB' for k in after)}."]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    report = REPO / "docs" / "benchmarks.md"
    existing = report.read_text() if report.exists() else "# Benchmarks\n"
    report.write_text(with_section(existing, f"## Load\n\nWritten by `make load` (bench/load.py).\n\n{text}\n"))
    failed = sum(row["errors"] + row["socket_errors"] for row in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
