"""`make bench` rows for publishing multi-gigabyte files: publish_release against `aws s3 cp` (awscli,
in .venv-awscli, built by `make awscli`) to the same moto server and to LocalStack's S3 (wall time,
CPU, bytes read from the local disk and read back from storage), a profile of one publish, and an
interrupted upload resumed; the same comparison for a 4 GiB file, and with a broker and a Celery worker
running (a publish queues no hashing, so it should cost what the embedded default costs).
`BENCH_ONLY=uploads make bench` runs only these."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common import REPO
from throttle import Throttle

GiB = 1024**3
ROUNDS = int(os.environ.get("BENCH_UPLOAD_ROUNDS", "3"))
BIG_SIZE = int(os.environ.get("BENCH_UPLOAD_BIG_GIB", "4")) * GiB  # the large-file rows (0: skip them)
# The broker rows' Redis: the machine's own, on a database the tests do not use.
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
AWSCLI = REPO / ".venv-awscli" / "bin" / "aws"


def big_file(path: Path, size: int = GiB) -> Path:
    """`size` bytes that no layer can compress or deduplicate."""
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as out:
        for index in range(size // len(block)):
            out.write(block[:-8] + index.to_bytes(8, "big"))
    return path


def publish(
    env: dict,
    version: str,
    path: Path,
    endpoint: str | None = None,
    *,
    draft: bool = True,
    model: str = "upload-bench",
    profile: Path | None = None,
) -> subprocess.Popen:
    """publish_release (--draft by default: the upload and its checks). Published or not, the chunk
    manifest is built from the bytes as they go up, in the command itself."""
    env = {**env, **({"AWS_S3_ENDPOINT_URL": endpoint} if endpoint else {})}
    python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    return subprocess.Popen(
        [*python, str(REPO / "manage.py"), "publish_release", model, version, str(path)] + (["--draft"] if draft else []),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C must reach it: a bench started in the background by a shell without job control
        # ignores SIGINT, and so would its children (Python then installs no KeyboardInterrupt).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the process and its children
    disk: int  # bytes it read from the local disk (block input: the file is evicted from the page cache first)
    server_cpu: float = 0.0  # CPU seconds the S3 server spent meanwhile (it shares the machine's cores)


def measured(process: subprocess.Popen, server_pid: int | None = None) -> Run:
    server_before = cpu_seconds(server_pid)
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out, err = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args} failed ({process.returncode}): {err[-2000:]}")
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Run(wall, cpu, (after.ru_inblock - before.ru_inblock) * 512, cpu_seconds(server_pid) - server_before)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a running process (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listening_pid(port: int) -> int | None:
    """The process that listens on 127.0.0.1:`port` (the S3 server), found through /proc."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state, inode = line.split()[1], line.split()[3], line.split()[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def timed(process: subprocess.Popen) -> float:
    return measured(process).wall


def evicted(path: Path) -> Path:
    """`path` out of the page cache, so the next run reads it from the disk (and says how much)."""
    with open(path, "rb") as source:
        os.fsync(source.fileno())
        os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def awscli(env: dict, endpoint: str, path: Path, key: str) -> subprocess.Popen:
    command = [str(AWSCLI), "--endpoint-url", endpoint, "s3", "cp", "--only-show-errors", str(path),
               f"s3://{env['AWS_STORAGE_BUCKET_NAME']}/{key}"]  # fmt: skip
    aws_env = {**env, "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.Popen(command, env=aws_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    rows = publish_against_awscli("moto", env, endpoint, path, profile=work / "publish.prof")
    rows += on_a_limited_link(env, endpoint, path)
    with celery_worker(env) as (broker_env, worker):
        rows += publish_against_awscli("moto", broker_env, endpoint, path, setup="a broker and a worker running")
        rows.append(worker_tasks_row(worker))
    if BIG_SIZE:
        big = big_file(work / "bigger.bin", BIG_SIZE)
        rows += publish_against_awscli("moto", env, endpoint, big)
        big.unlink()
    with localstack_server(work / "localstack") as (localstack_endpoint, credentials):
        import boto3

        boto3.client("s3", endpoint_url=localstack_endpoint, region_name="us-east-1", **credentials).create_bucket(
            Bucket=env["AWS_STORAGE_BUCKET_NAME"]
        )
        localstack_env = {**env, "AWS_S3_ENDPOINT_URL": localstack_endpoint, "AWS_ACCESS_KEY_ID": "test",
                          "AWS_SECRET_ACCESS_KEY": "test"}  # fmt: skip
        rows += publish_against_awscli("LocalStack", localstack_env, localstack_endpoint, path)
    return rows + [interrupted_and_resumed(env, endpoint, path, path.stat().st_size)]


LINK_RATE = 100e6  # bytes/s: a fast uplink (S3 from a cloud machine), and what the clients' rows use


def on_a_limited_link(env: dict, endpoint: str, path: Path) -> list:
    """The same comparison through a proxy that lets 100 MB/s go up, shared by all connections. On
    loopback the S3 server shares the 2 cores with the uploader, so a publish's extra hashing is wall
    time there; across a real link, the link is what an upload waits for."""
    proxy = Throttle(int(endpoint.rsplit(":", 1)[1]), up_total=LINK_RATE)
    through = f"http://127.0.0.1:{proxy.port}"
    try:
        setup = f"through a link limited to {LINK_RATE / 1e6:.0f} MB/s up"
        return publish_against_awscli("moto", {**env, "AWS_S3_ENDPOINT_URL": through}, through, path, setup=setup)[:1]
    finally:
        proxy.stop()


@contextmanager
def celery_worker(env: dict):
    """A real `celery worker` on both queues, with the broker in Redis: the env publish_release runs
    with (its on-commit work is queued, not run in the command) and the worker."""
    sys.path.insert(0, str(REPO))
    from tests.servers import CeleryWorker

    broker_env = {**env, "REDIS_URL": BENCH_REDIS_URL, "CELERY_QUEUE": f"bench-{os.getpid()}"}
    worker = CeleryWorker(broker_env)
    try:
        yield broker_env, worker
    finally:
        worker.stop()


def worker_tasks_row(worker) -> tuple:
    """What the publishes left the worker to do: no task that reads a published object back."""
    received = [
        line.split("Task ", 1)[1].split("[", 1)[0] for line in worker.log().splitlines() if "] received" in line
    ]
    readers = [name for name in received if "manifest" in name or "verify" in name or "hash" in name]
    names = ", ".join(sorted(set(received))) or "none"
    return (
        "tasks the worker received during those publishes",
        f"{len(received)} ({names}); {len(readers)} that read an object back",
        "none that read an object back",
        not readers,
    )


def publish_against_awscli(
    server: str, env: dict, endpoint: str, path: Path, profile: Path | None = None, setup: str = "embedded default"
) -> list:
    """Rounds of `publish_release` (published, manifest included, tasks in-process as in the embedded
    default) and `aws s3 cp` of the same file to the same server, taking turns at going first (neither
    always meets a fresher server, or the other's writeback); the file is evicted from the page cache
    before every run. Then one run of each through a proxy that counts the bytes read back."""
    size = path.stat().st_size
    model = f"bench-{server.lower()}-{size // GiB}g" + (
        "-broker" if "broker" in setup else "-link" if "link" in setup else ""
    )
    amount = f"{size // GiB} GiB" if size >= GiB else f"{size >> 20} MiB"
    what = f"one {amount} file to the same {server} server, {setup}"
    load_before, server_pid = os.getloadavg()[0], listening_pid(int(endpoint.rsplit(":", 1)[1]))
    ours: list[Run] = []
    theirs: list[Run] = []
    for round_ in range(ROUNDS):
        runs = [lambda: theirs.append(measured(awscli(env, endpoint, evicted(path), f"awscli/{round_}.bin"), server_pid)),
                lambda: ours.append(measured(publish(env, f"v{round_}", evicted(path), draft=False, model=model), server_pid))]  # fmt: skip
        for run in runs if round_ % 2 else runs[::-1]:
            run()
    read_back = {
        "ours": counted_read_back(endpoint, lambda url: publish(env, "counted", path, url, draft=False, model=model)),
        "awscli": counted_read_back(endpoint, lambda url: awscli(env, url, path, "awscli/counted.bin")),
    }
    load = f"load average {load_before:.1f} before the runs, {os.getloadavg()[0]:.1f} after (2 cores shared)"
    best, their_best = min(ours, key=lambda run: run.wall), min(theirs, key=lambda run: run.wall)
    ratio = their_best.wall / best.wall
    rows = [
        (
            f"publish_release (published, chunk manifest included) vs aws s3 cp (awscli), {what} (best of {ROUNDS})",
            f"ours {best.wall:.2f} s ({size / best.wall / 2**20:.0f} MiB/s) vs awscli {their_best.wall:.2f} s "
            f"({size / their_best.wall / 2**20:.0f} MiB/s) = {ratio:.2f}x; every run: ours "
            f"{' / '.join(f'{run.wall:.1f}' for run in ours)} s, awscli {' / '.join(f'{run.wall:.1f}' for run in theirs)} s; "
            + load,
            ">= 0.9x",
            ratio >= 0.9,
        ),
        (
            f"what one publish costs ({what}): CPU seconds, bytes read from the local disk, bytes read "
            "back from storage (at a counting proxy)",
            f"ours {min(run.cpu for run in ours):.1f} CPU s (the SHA-256, FastCDC and chunk hashes, part CRC32Cs), "
            f"{max(run.disk for run in ours) / 2**20:,.0f} MiB from disk, {read_back['ours']:,} bytes read back; "
            f"awscli {min(run.cpu for run in theirs):.1f} CPU s (part CRC32s), "
            f"{max(run.disk for run in theirs) / 2**20:,.0f} MiB from disk, {read_back['awscli']:,} bytes read back; "
            + shared_cores(best, their_best),
            "read back: 0; disk: the file once",
            read_back["ours"] == 0 and max(run.disk for run in ours) <= size * 1.05,
        ),
    ]
    if profile is not None:
        measured(publish(env, "profiled", evicted(path), draft=False, model=model, profile=profile))
        PROFILES[server] = profile_summary(profile)
    return rows


def shared_cores(ours: Run, theirs: Run) -> str:
    """What the two best runs asked of the machine's cores, the S3 server's share included."""
    cores = os.cpu_count() or 1

    def load(run: Run) -> str:
        return f"{run.cpu + run.server_cpu:.1f} CPU s with the server's {run.server_cpu:.1f} in {run.wall:.1f} s"

    return f"all {cores} cores: ours {load(ours)}, awscli {load(theirs)}"


PROFILES: dict[str, str] = {}  # server -> the top of a cProfile run of publish_release's main thread


def profile_summary(path: Path, entries: int = 14) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(entries)
    lines = out.getvalue().splitlines()
    first = next(n for n, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return "\n".join(line.replace(str(REPO) + "/", "").replace(sys.prefix + "/", "") for line in lines[first:] if line)


def counted_read_back(endpoint: str, start) -> int:
    """Object bytes read back from storage (GET responses for objects) while `start(url)` runs."""
    sys.path.insert(0, str(REPO))
    from tests.storage_servers import CountingProxy

    proxy = CountingProxy(endpoint)
    try:
        measured(start(proxy.url))
        return proxy.reset().object_bytes_read
    finally:
        proxy.stop()


@contextmanager
def localstack_server(data_dir: Path):
    """LocalStack's S3 (signatures checked) on a free loopback port, from the tests' own launcher."""
    from common import free_port

    sys.path.insert(0, str(REPO))
    from tests import localstack

    python = localstack.ensure_venv(REPO / ".venv-localstack")
    port = free_port()
    process = localstack.start(python, port, data_dir)
    try:
        localstack.wait_ready(port)
        yield f"http://127.0.0.1:{port}", {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    finally:
        localstack.stop(process)


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
