"""`make bench` rows for publishing multi-gigabyte files: publish_release against `aws s3 cp` (awscli,
in .venv-awscli, built by `make awscli`) to the same moto server, and an interrupted upload resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import REPO
from throttle import Throttle

GiB = 1024**3
ROUNDS = 3
AWSCLI = REPO / ".venv-awscli" / "bin" / "aws"


def big_file(path: Path, size: int = GiB) -> Path:
    """`size` bytes that no layer can compress or deduplicate."""
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as out:
        for index in range(size // len(block)):
            out.write(block[:-8] + index.to_bytes(8, "big"))
    return path


def publish(env: dict, version: str, path: Path, endpoint: str | None = None) -> subprocess.Popen:
    """publish_release --draft: the upload and its checks, as `aws s3 cp` does them. (Publishing would
    also build the file's chunk manifest, in the command itself here: the bench runs tasks eagerly.)"""
    env = {**env, **({"AWS_S3_ENDPOINT_URL": endpoint} if endpoint else {})}
    return subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "publish_release", "upload-bench", version, str(path), "--draft"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C must reach it: a bench started in the background by a shell without job control
        # ignores SIGINT, and so would its children (Python then installs no KeyboardInterrupt).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


CPU: dict[str, list[float]] = {}  # CPU seconds of each kind of run (the bench's own children)


def timed(process: subprocess.Popen, kind: str = "") -> float:
    start, before = time.perf_counter(), os.times()
    out, err = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args} failed ({process.returncode}): {err[-2000:]}")
    after = os.times()
    CPU.setdefault(kind, []).append(
        after.children_user + after.children_system - before.children_user - before.children_system
    )
    return time.perf_counter() - start


def awscli_copy(env: dict, endpoint: str, path: Path, key: str) -> float:
    command = [str(AWSCLI), "--endpoint-url", endpoint, "s3", "cp", "--only-show-errors", str(path),
               f"s3://{env['AWS_STORAGE_BUCKET_NAME']}/{key}"]  # fmt: skip
    aws_env = {**env, "AWS_DEFAULT_REGION": "us-east-1"}
    process = subprocess.Popen(command, env=aws_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return timed(process, "awscli")


def stored_parts(client, bucket: str, key: str) -> list[dict]:
    uploads = [u for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == key]
    if not uploads:
        return []
    return client.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts", [])


def bench_uploads(endpoint: str, work: Path) -> list[tuple]:
    if not AWSCLI.exists():
        return [("publish_release vs aws s3 cp", "awscli missing: run `make awscli`", ">= 0.9x", False)]
    env = dict(os.environ)
    path = big_file(work / "big.bin")
    size = path.stat().st_size
    ours, theirs = [], []
    # Three rounds, taking turns at going first (neither always meets a fresher moto, or the other's
    # writeback); moto's time to join the parts after the last byte varies by seconds from run to run.
    for round_ in range(ROUNDS):
        runs = [lambda: theirs.append(awscli_copy(env, endpoint, path, f"awscli/big-{round_}.bin")),
                lambda: ours.append(timed(publish(env, f"v{round_}", path), "ours"))]  # fmt: skip
        for run in runs if round_ % 2 else runs[::-1]:
            run()
    ours_s, theirs_s = min(ours), min(theirs)
    rows = [
        (
            f"publish_release vs aws s3 cp (awscli), one 1 GiB file to the same moto server (best of {ROUNDS})",
            f"ours {ours_s:.2f} s ({size / ours_s / 2**20:.0f} MiB/s) vs awscli {theirs_s:.2f} s "
            f"({size / theirs_s / 2**20:.0f} MiB/s) = {theirs_s / ours_s:.2f}x; CPU seconds: ours "
            f"{min(CPU['ours']):.1f} (each part's CRC32 for S3 to check, and the whole file's SHA-256, read "
            f"again in order) vs awscli {min(CPU['awscli']):.1f}, beside moto's own on 2 cores; every run: ours "
            f"{' / '.join(f'{t:.1f}' for t in ours)} s, awscli {' / '.join(f'{t:.1f}' for t in theirs)} s",
            ">= 0.9x",
            theirs_s / ours_s >= 0.9,
        )
    ]
    return rows + [interrupted_and_resumed(env, endpoint, path, size)]


def interrupted_and_resumed(env: dict, endpoint: str, path: Path, size: int) -> tuple:
    """publish_release stopped with Ctrl-C once half of the file went up, then run again: the second
    run sends only what the first did not store. Both go through a proxy that counts the bytes sent."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket, key = env["AWS_STORAGE_BUCKET_NAME"], "upload-bench/resumed/big.bin"
    proxy = Throttle(int(endpoint.rsplit(":", 1)[1]))
    through = f"http://127.0.0.1:{proxy.port}"
    try:
        first = publish(env, "resumed", path, endpoint=through)
        # By bytes sent, not by time, which depends on the machine and its load; nor by ListParts:
        # moto computes a part's ETag the first time it is listed, so listing a part still arriving
        # spoils it. The parts in flight then finish (8 of 8 MiB): a little over half is stored.
        while proxy.stats()["up"] < size // 2 and first.poll() is None:
            time.sleep(0.02)
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
        kept = sum(part["Size"] for part in stored_parts(client, bucket, key))
        proxy.reset()
        took = timed(publish(env, "resumed", path, endpoint=through))
        sent = proxy.stats()["up"]
    finally:
        proxy.stop()
    part, remaining = 8 * 2**20, size - kept
    return (
        "publish_release interrupted (Ctrl-C) once half of 1 GiB went up, then run again",
        f"first run exit {first.returncode}, {kept / 2**20:.0f} MiB stored; second run sent "
        f"{sent / 2**20:.1f} MiB (bytes at a counting proxy) in {took:.2f} s for {remaining / 2**20:.0f} MiB remaining",
        "<= remaining + one part (8 MiB)",
        first.returncode == 130 and 0 < kept < size and sent <= remaining + part,
    )
