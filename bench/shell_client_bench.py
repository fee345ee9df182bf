"""Bench rows for the shell client over the life of an install (issue 21's targets).

One site of its own (SQLite, local storage, gunicorn on loopback) publishes a version of
BENCH_LIFE_MB megabytes (default 4096: a 4 GiB weights file and a small config). The served
`fetch-model.sh` fetches it once; then, in rounds:
  - a later run of the complete version against one SHA-256 pass over its files (openssl, the
    client's own hasher, from the page cache): the record lets the client read no file bytes;
  - a start with the site stopped: the verified copy is used (exit 0, one warning line).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import free_port, manage, start_gunicorn, wait_for_http

ROUNDS = int(os.environ.get("BENCH_CLIENT_ROUNDS", "3"))


def _seconds(command: list[str], expect: int = 0) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise RuntimeError(f"{command[:2]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stderr


def _write_version(src: Path, megabytes: int) -> list[Path]:
    src.mkdir(parents=True)
    with open(src / "model.safetensors", "wb") as out:
        for _ in range(megabytes):
            out.write(os.urandom(1024 * 1024))
    (src / "config.yaml").write_text("sample_rate: 24000\n")
    return [src / "model.safetensors", src / "config.yaml"]


def bench_shell_client_life() -> list[tuple]:
    megabytes = int(os.environ.get("BENCH_LIFE_MB", "4096"))
    with tempfile.TemporaryDirectory(prefix="model-releases-shell-life-") as work:
        work = Path(work)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "DATABASE_URL", "REDIS_URL"))
        }
        env.update(DATA_DIR=str(work / "data"), DJANGO_SETTINGS_MODULE="site_config.settings")
        files = _write_version(work / "src", megabytes)
        manage(env, ["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"],
               ["publish_release", "bench", "v1", *map(str, files)])  # fmt: skip
        for file in files:  # publish_release copied them into the local storage under DATA_DIR
            file.unlink()
        port = free_port()
        server = start_gunicorn(env, port, "-w", "2")
        site = f"http://127.0.0.1:{port}"
        dest = work / "models" / "bench" / "v1"
        try:
            wait_for_http(f"{site}/healthz", server, timeout=30)
            script = work / "fetch-model.sh"
            subprocess.run(["curl", "-fsSL", "-o", str(script), f"{site}/fetch-model.sh"], check=True)
            client = ["sh", str(script), "bench", "v1", str(dest)]
            _seconds(client)  # the first run downloads and records
            weights = [str(dest / "model.safetensors"), str(dest / "config.yaml")]
            later, hashing = [], []
            for _ in range(ROUNDS):
                later.append(_seconds(client)[0])
                hashing.append(_seconds(["openssl", "dgst", "-sha256", "-r", *weights])[0])
        finally:
            server.terminate()
            server.wait(30)
        down = []
        for _ in range(ROUNDS):
            seconds, said = _seconds(client)
            if "warning: cannot reach" not in said or len(said.splitlines()) != 1:
                raise RuntimeError(f"the site-down start said: {said}")
            down.append(seconds)
    size = f"{megabytes / 1024:.1f} GiB"
    later_s, hash_s, down_s = statistics.median(later), statistics.median(hashing), statistics.median(down)
    ratio = later_s / hash_s
    return [
        (
            f"fetch-model.sh later run, complete {size} version, vs one SHA-256 pass (median of {ROUNDS})",
            f"{later_s:.3f} s vs {hash_s:.2f} s ({ratio:.3f}x)",
            "<= 0.1x",
            ratio <= 0.1,
        ),
        (
            f"fetch-model.sh start with the site down, complete {size} version (median of {ROUNDS})",
            f"{down_s:.3f} s (exit 0, one warning line)",
            "< 2 s",
            down_s < 2,
        ),
    ]


if __name__ == "__main__":
    import sys

    from common import REPO

    sys.path.insert(0, str(REPO))
    for row in bench_shell_client_life():
        print(" | ".join(str(cell) for cell in row))
