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
    import boto3

    if not AWSCLI.exists():
        return [("publish_release vs aws s3 cp", "awscli missing: run `make awscli`", ">= 0.9x", False)]
    env = dict(os.environ)
    path = big_file(work / "big.bin")
    size = path.stat().st_size
    ours, theirs = [], []
    for round_ in range(2):  # alternately, so neither always meets a fresher moto
        theirs.append(awscli_copy(env, endpoint, path, f"awscli/big-{round_}.bin"))
        ours.append(timed(publish(env, f"v{round_}", path), "ours"))
    ours_s, theirs_s = min(ours), min(theirs)
    rows = [
        (
            "publish_release vs aws s3 cp (awscli), one 1 GiB file to the same moto server (best of 2)",
            f"ours {ours_s:.2f} s ({size / ours_s / 2**20:.0f} MiB/s) vs awscli {theirs_s:.2f} s "
            f"({size / theirs_s / 2**20:.0f} MiB/s) = {theirs_s / ours_s:.2f}x; CPU seconds: ours "
            f"{min(CPU['ours']):.1f} (each part's SHA-256 for S3 to check, and the whole file's, read again in "
            f"order) vs awscli {min(CPU['awscli']):.1f}, beside moto's own on 2 cores",
            ">= 0.9x",
            theirs_s / ours_s >= 0.9,
        )
    ]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket, key = env["AWS_STORAGE_BUCKET_NAME"], "upload-bench/resumed/big.bin"
    first = publish(env, "resumed", path)
    # Ctrl-C at about half of a whole upload's time. (Not by watching ListParts: moto computes a part's
    # ETag the first time it is listed and keeps it, so listing a part still arriving spoils its ETag.)
    time.sleep(ours_s / 4)  # with --jobs 8, the parts in flight then finish: about half of the file
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    kept = sum(part["Size"] for part in stored_parts(client, bucket, key))
    proxy = Throttle(int(endpoint.rsplit(":", 1)[1]))  # counts the bytes the second run sends
    try:
        took = timed(publish(env, "resumed", path, endpoint=f"http://127.0.0.1:{proxy.port}"))
        sent = proxy.stats()["up"]
    finally:
        proxy.stop()
    part = 64 * 2**20
    remaining = size - kept
    rows.append(
        (
            "publish_release interrupted (Ctrl-C) at about half of 1 GiB, then run again",
            f"first run exit {first.returncode}, {kept / 2**20:.0f} MiB stored; second run sent "
            f"{sent / 2**20:.1f} MiB (bytes at a counting proxy) in {took:.2f} s for {remaining / 2**20:.0f} MiB remaining",
            "<= remaining + one part (64 MiB)",
            first.returncode == 130 and 0 < kept < size and sent <= remaining + part,
        )
    )
    return rows
