"""`make bench`: measure the performance targets and print one table.

Runs self-contained: a temporary DATA_DIR with SQLite, and S3 as a moto
server on a free loopback port (STORAGE_BACKEND=s3), so nothing on the
machine is touched. Exits 1 if a target is missed.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from client_bench import bench_python_client  # noqa: E402
from common import free_port, manage, start_gunicorn, wait_for_http, wait_until  # noqa: E402
from notes import bench_notes  # noqa: E402
from pages_bench import bench_pages  # noqa: E402
from report import PROFILE_HEADING, full_report, with_upload_rows  # noqa: E402
from shell_client_bench import bench_shell_client_life  # noqa: E402
from upload_bench import PROFILES, bench_uploads  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "200"))


class MotoProcess:
    """moto in server mode in its own process, like a remote S3 (not sharing our interpreter)."""

    def __init__(self):
        import subprocess

        self.port = free_port()
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_http(f"http://127.0.0.1:{self.port}/moto-api/", self.process, timeout=30)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


def start_moto() -> tuple[object, str]:
    server = MotoProcess()
    return server, f"http://127.0.0.1:{server.port}"


def configure(data_dir: str, endpoint: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="site_config.settings",
        DATA_DIR=data_dir,
        STORAGE_BACKEND="s3",
        AWS_STORAGE_BUCKET_NAME="bench-models",
        AWS_S3_ENDPOINT_URL=endpoint,
        AWS_S3_REGION_NAME="us-east-1",
        AWS_ACCESS_KEY_ID="bench-key",
        AWS_SECRET_ACCESS_KEY="bench-secret",
    )
    for name in ("DATABASE_URL", "REDIS_URL", "CDN_BACKEND", "SITE_URL"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", verbosity=0, interactive=False)
    import logging

    logging.disable(logging.INFO)  # publishing the fixtures logs a line per version


def publish_fixtures(data_dir: str) -> None:
    import boto3

    from releases.services import LocalFile, release_local_files

    boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="bench-key",
        aws_secret_access_key="bench-secret",
    ).create_bucket(Bucket="bench-models")
    source = Path(data_dir) / "src"
    for slug, count in (("one-file", 1), ("fifty-files", 50)):
        files = []
        for index in range(count):
            path = source / slug / f"shard-{index:02d}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{slug} {index}\n".encode() * 64)
            files.append(LocalFile(path.name, path))
        release_local_files(slug, "v1", files)
    for slug, versions in (("few-versions", 1), ("many-versions", 100)):
        for number in range(1, versions + 1):
            path = source / slug / f"v{number}" / "model.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"weights")
            release_local_files(slug, f"v{number}", [LocalFile("model.pt", path)])


def per_call_us(function, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        function()
    return (time.perf_counter() - start) / rounds * 1e6


def bench_signing() -> list[tuple]:
    from releases import aws
    from releases.signing import S3Signer, content_disposition
    from releases.storage import release_store

    store = release_store()
    location = store.signing_location()
    credentials = aws.CredentialKeeper(lambda: aws.fetch_credentials(store.keys), 3600)
    keys = [f"fifty-files/v1/shard-{index:02d}.safetensors" for index in range(50)]
    client = store.client
    warm = S3Signer(3600, location, credentials)
    for key in keys:
        warm.link(key, key.rsplit("/", 1)[-1])

    def ours_warm():
        for key in keys:
            warm.link(key, key.rsplit("/", 1)[-1])

    def ours_cold():
        cold = S3Signer(3600, location, credentials)
        for key in keys:
            cold.link(key, key.rsplit("/", 1)[-1])

    def boto3_presign():
        for key in keys:
            client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": store.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(key.rsplit("/", 1)[-1]),
                },
                ExpiresIn=7200,
            )

    samples = {"warm": [], "cold": [], "boto3": []}
    for _ in range(10):  # alternate, so that drift hits all three alike
        samples["warm"].append(per_call_us(ours_warm, 20) / len(keys))
        samples["cold"].append(per_call_us(ours_cold, 2) / len(keys))
        samples["boto3"].append(per_call_us(boto3_presign, 2) / len(keys))
    warm_us, cold_us, boto_us = (statistics.median(samples[name]) for name in ("warm", "cold", "boto3"))
    return [
        ("signing: boto3 generate_presigned_url", f"{boto_us:.1f} µs/URL", "reference", ""),
        ("signing: ours, cold (SigV4 computed)", f"{cold_us:.1f} µs/URL", "", ""),
        (
            "signing: ours, warm (windowed cache)",
            f"{warm_us:.2f} µs/URL",
            f"<= {boto_us / 20:.1f} µs (1/20 of boto3)",
            warm_us <= boto_us / 20,
        ),
    ]


def bench_latency() -> list[tuple]:
    from django.test import Client

    client = Client()
    urls = {
        "API": ("/api/v1/models/one-file/versions/v1", "/api/v1/models/fifty-files/versions/v1", 1.5),
        "version page": ("/models/one-file/v1/", "/models/fifty-files/v1/", 2.0),
    }
    rows = []
    for label, (one, fifty, target) in urls.items():
        fifty_body = client.get(fifty).content.decode()
        signed = fifty_body.count("X-Amz-Signature=")
        times = {one: [], fifty: []}
        for _ in range(ROUNDS):
            for url in (one, fifty):  # alternately, in one run
                start = time.perf_counter()
                response = client.get(url)
                times[url].append(time.perf_counter() - start)
                assert response.status_code == 200
        median_one, median_fifty = statistics.median(times[one]) * 1e3, statistics.median(times[fifty]) * 1e3
        ratio = median_fifty / median_one
        rows.append(
            (
                f"{label}: 50 files vs 1 file (s3, median of {ROUNDS})",
                f"{median_fifty:.2f} ms / {median_one:.2f} ms = {ratio:.2f}x; {signed} signed URLs",
                f"<= {target}x, 50 signed URLs",
                ratio <= target and signed == 50,
            )
        )
    return rows


def bench_queries() -> list[tuple]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    pairs = {
        "version page": ("/models/one-file/v1/", "/models/fifty-files/v1/"),
        "version API": ("/api/v1/models/one-file/versions/latest", "/api/v1/models/fifty-files/versions/latest"),
        "model page": ("/models/few-versions/", "/models/many-versions/"),
        "model API": ("/api/v1/models/few-versions", "/api/v1/models/many-versions"),
        "stable URL": ("/models/few-versions/latest/model.pt", "/models/many-versions/latest/model.pt"),
    }
    rows = []
    for label, (small, large) in pairs.items():
        counts = []
        for url in (small, large):
            with CaptureQueriesContext(connection) as captured:
                client.get(url)
            counts.append(len(captured.captured_queries))
        rows.append(
            (
                f"SQL: {label} (1 vs 50 files / 1 vs 100 versions)",
                f"{counts[0]} vs {counts[1]} queries",
                "equal",
                counts[0] == counts[1],
            )
        )
    return rows


def bench_purges() -> list[tuple]:
    """A 100-file publish with the varnish backend pointed at a loopback server that counts requests."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from django.conf import settings

    from releases.services import LocalFile, release_local_files

    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_PURGE(self):
            received.append(self.headers.get("xkey-purge"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.CDN_BACKEND, settings.CDN_PURGE_URL = "varnish", f"http://127.0.0.1:{server.server_address[1]}"
    source = Path(settings.DATA_DIR) / "src" / "hundred"
    files = []
    for index in range(100):
        path = source / f"part-{index:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1024)
        files.append(LocalFile(path.name, path))
    release_local_files("hundred-files", "v1", files)
    server.shutdown()
    settings.CDN_BACKEND = "none"
    return [
        (
            "purge requests for a 100-file publish (varnish)",
            f"{len(received)} ({received[0]})",
            "a few, not one per file",
            len(received) <= 3,
        )
    ]


def bench_verify() -> list[tuple]:
    """Re-hash throughput of verify against the moto server, as a ratio to hashlib over the same bytes.

    Verify's real work is a batch of files; it is measured on 8 files of 16 MiB with the default
    VERIFY_CONCURRENCY, and on one 128 MiB file, where moto copies the whole object before it
    sends the first byte and nothing can overlap that.
    """
    import hashlib
    import io

    from django.conf import settings

    from releases import verification
    from releases.services import add_file, create_version, get_or_create_model, publish_version

    mib = 1024 * 1024
    total = int(os.environ.get("BENCH_VERIFY_MIB", "128")) * mib
    rows = []
    for count in (8, 1):
        contents = [os.urandom(total // count) for _ in range(count)]
        version = create_version(get_or_create_model(f"verify-{count}-files"), "v1")
        for number, data in enumerate(contents):
            add_file(version, f"part-{number}.bin", io.BytesIO(data))
        publish_version(version)
        start = time.perf_counter()
        for data in contents:
            hashlib.sha256(data).hexdigest()
        in_memory = total / (time.perf_counter() - start)
        del contents, data  # a worker holds no such 128 MiB; the allocator slows down around it
        files = list(verification.published_files().filter(version=version))
        rates = []
        for run in range(6):  # the first run opens the connections and threads: a warm-up, not timed
            start = time.perf_counter()
            report = verification.verify(files, rehash=lambda file: True)
            rates.append(total / (time.perf_counter() - start))
            assert report.counts["ok"] == count, report.failures
        rates = rates[1:]
        rehash = statistics.median(rates)
        what = (
            f"a batch of {count} x {total // count // mib} MiB, {settings.VERIFY_CONCURRENCY} at once"
            if count > 1
            else f"one {total // mib} MiB file"
        )
        rows.append(
            (
                f"verify re-hash over HTTP from moto ({what}, median of 5 after a warm-up)",
                f"{rehash / mib:.0f} MiB/s vs hashlib {in_memory / mib:.0f} MiB/s = {rehash / in_memory:.2f}x",
                ">= 0.5x" if count > 1 else "reported",
                rehash / in_memory >= 0.5 if count > 1 else "",
            )
        )
    files = list(verification.published_files())
    start = time.perf_counter()
    verification.verify(files, rehash=lambda file: False)
    head_rate = len(files) / (time.perf_counter() - start)
    return rows + [(f"verify cheap check (attributes, {len(files)} files)", f"{head_rate:.0f} files/s", "reported", "")]


def bench_client() -> list[tuple]:
    """The start-script client against plain curl on one 200 MB file from a live gunicorn on loopback."""
    import signal
    import subprocess

    size = int(os.environ.get("BENCH_CLIENT_MB", "200")) * 1000 * 1000
    with tempfile.TemporaryDirectory(prefix="model-releases-client-") as work:
        work = Path(work)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "DATABASE_URL", "REDIS_URL"))
        }
        env.update(DATA_DIR=str(work / "data"), DJANGO_SETTINGS_MODULE="site_config.settings")
        (work / "src").mkdir()
        with open(work / "src" / "model.pt", "wb") as out:
            for _ in range(size // 1_000_000):
                out.write(os.urandom(1_000_000))
        manage(env, ["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"],
               ["publish_release", "bench", "v1", str(work / "src" / "model.pt")])  # fmt: skip
        port, access_log = free_port(), work / "access.log"
        server = start_gunicorn(env, port, "-w", "2", "--access-logfile", str(access_log),
                                "--access-logformat", '%(r)s %(s)s %({content-length}o)s "%({range}i)s"')  # fmt: skip
        site = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{site}/healthz", server, timeout=30)
            script = work / "fetch-model.sh"
            subprocess.run(["curl", "-fsSL", "-o", str(script), f"{site}/fetch-model.sh"], check=True)
            stable = f"{site}/models/bench/v1/model.pt"

            def plain_curl(rate):
                limit = ["--limit-rate", rate] if rate else []
                subprocess.run(["curl", "-fsSL", *limit, "-o", str(work / "plain.bin"), stable], check=True)

            def client(rate):
                options = {"FETCH_MODEL_CURL_OPTS": f"--limit-rate {rate}"} if rate else {}
                subprocess.run(
                    ["sh", str(script), "bench", "v1", str(work / "dest")],
                    env={**os.environ, **options},
                    check=True,
                    capture_output=True,
                )

            def pipeline(rate):  # the client's download step alone: no API call, no script
                download = f"curl -fsSL '{stable}' | tee '{work / 'dest.bin'}' | openssl dgst -sha256 -r >/dev/null"
                subprocess.run(["sh", "-c", download], check=True)

            def hash_only(rate):  # SHA-256 of the file curl just wrote, from the page cache
                subprocess.run(
                    ["openssl", "dgst", "-sha256", "-r", str(work / "plain.bin")], check=True, capture_output=True
                )

            ratios, parts = {}, {}
            for rate in ("", "100M"):  # loopback as fast as it goes, and a 100 MB/s link
                steps = {"curl": plain_curl, "client": client}
                if not rate:
                    steps.update(pipeline=pipeline, hash=hash_only)
                times = {name: [] for name in steps}
                for _ in range(3):
                    for name, run in steps.items():
                        own = {"curl": "plain.bin", "client": "dest", "pipeline": "dest.bin"}.get(name)
                        if own:  # each download starts with no file of its own to replace
                            subprocess.run(["rm", "-rf", str(work / own)], check=True)
                        start = time.perf_counter()
                        run(rate)
                        times[name].append(time.perf_counter() - start)
                ratios[rate] = (statistics.median(times["curl"]), statistics.median(times["client"]))
                if not rate:
                    parts = {name: statistics.median(times[name]) for name in ("curl", "pipeline", "hash")}

            # Cut a download at about half way, then resume and count what the server sends.
            subprocess.run(["rm", "-rf", str(work / "dest")], check=True)
            part = work / "dest" / ".model.pt.part"
            cut = subprocess.Popen(
                ["sh", str(script), "bench", "v1", str(work / "dest")],
                env={**os.environ, "FETCH_MODEL_CURL_OPTS": "--limit-rate 100M"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

            def half_way() -> bool:
                return part.exists() and part.stat().st_size >= size // 2

            wait_until(half_way, cut, "half of the download", timeout=60, interval=0.002)
            os.killpg(cut.pid, signal.SIGKILL)
            cut.wait()
            have = part.stat().st_size
            logged = len(access_log.read_text().splitlines())
            subprocess.run(["sh", str(script), "bench", "v1", str(work / "dest")], check=True, capture_output=True)
            # The resumed request is the one with a Range header (the cut one may be logged late).
            resumed = [
                line
                for line in access_log.read_text().splitlines()[logged:]
                if " /files/" in line and '"bytes=' in line
            ]
            sent = sum(int(line.rsplit('"', 2)[0].split()[-1]) for line in resumed)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(15)
    mb = 1000 * 1000
    rows = []
    for rate, label in (("", "loopback, unthrottled"), ("100M", "both limited to 100 MB/s")):
        curl_s, client_s = ratios[rate]
        rows.append(
            (
                f"client vs curl -o, one {size // mb} MB file (gunicorn, {label}, median of 3)",
                f"client {client_s:.2f} s vs curl {curl_s:.2f} s = {curl_s / client_s:.2f}x",
                ">= 0.9x",
                curl_s / client_s >= 0.9,
            )
        )
    return rows + [
        (
            "where the unthrottled client's time goes (median of 3)",
            f"its download pipeline alone (curl into tee into openssl) {parts['pipeline']:.2f} s = {parts['curl'] / parts['pipeline']:.2f}x of curl -o; "
            f"openssl SHA-256 of the {size // mb} MB file from memory {parts['hash']:.2f} s",
            "reported",
            "",
        ),
        (
            f"resume after a cut at {have / size:.0%}",
            f"server sent {sent:,} bytes; remaining {size - have:,}",
            "<= remaining + 1 MiB",
            sent <= size - have + 1024 * 1024,
        ),
    ]


def table(rows: list[tuple]) -> tuple[str, bool]:
    lines = ["| measure | result | target | met |", "| --- | --- | --- | --- |"]
    ok = True
    for name, result, target, met in rows:
        mark = "" if met == "" else ("yes" if met else "NO")
        ok = ok and met is not False
        lines.append(f"| {name} | {result} | {target} | {mark} |")
    return "\n".join(lines), ok


def machine() -> str:
    import platform

    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        kib = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs{memory}, {platform.system()}, Python {sys.version.split()[0]}"


def main() -> int:
    """Every row; with BENCH_ONLY=python-client only the Python client's rows, printed and not written
    to docs/benchmarks.md (a partial table would replace the whole one)."""
    import datetime

    only = os.environ.get("BENCH_ONLY", "")
    if only not in ("", "python-client", "shell-client", "uploads"):
        sys.exit(f"BENCH_ONLY={only!r}: the subsets are python-client, shell-client and uploads")
    if only == "python-client":
        rows = bench_python_client()
    elif only == "shell-client":
        rows = bench_shell_client_life()
    elif only == "uploads":
        server, endpoint = start_moto()
        try:
            with tempfile.TemporaryDirectory(prefix="model-releases-bench-") as data_dir:
                configure(data_dir, endpoint)
                publish_fixtures(data_dir)
                rows = bench_uploads(endpoint, Path(data_dir))
        finally:
            server.stop()
    else:
        server, endpoint = start_moto()
        try:
            with tempfile.TemporaryDirectory(prefix="model-releases-bench-") as data_dir:
                configure(data_dir, endpoint)
                publish_fixtures(data_dir)
                rows = bench_signing() + bench_latency() + bench_queries() + bench_purges() + bench_verify()
                rows += bench_notes()
                rows += bench_pages(data_dir, ROUNDS)
                rows += bench_uploads(endpoint, Path(data_dir))
            rows += bench_client()
        finally:
            server.stop()
        rows += bench_python_client()
        rows += bench_shell_client_life()
    text, ok = table(rows)
    header = f"Model Releases benchmarks, {datetime.date.today().isoformat()}, on {machine()}"
    print(f"\n{header}\n\n{text}\n\n{profile_section()}")
    report = REPO / "docs" / "benchmarks.md"
    old = report.read_text() if report.exists() else None
    if only == "uploads" and old:  # the publish rows (and their profile) replace their old ones
        report.write_text(with_upload_rows(old, text, profile_section(), header))
    if only:
        return 0 if ok else 1
    intro = (
        f"{header}. Written by `make bench` (bench/run.py); S3 is moto in server mode in its own process, "
        "the site runs on SQLite (and gunicorn for the client rows), all on loopback. The Python client's rows "
        "(bench/client_bench.py) run gunicorn with local storage behind bench/throttle.py, a loopback proxy that "
        "limits each connection or all of them and counts the bytes the server sends."
    )
    report.write_text(full_report(old, intro, text, profile_section()))
    return 0 if ok else 1


def profile_section() -> str:
    if not PROFILES:
        return ""
    body = "\n\n".join(f"{server}:\n\n```\n{summary}\n```" for server, summary in PROFILES.items())
    return (
        f"{PROFILE_HEADING}\n\nOne `publish_release` of the 1 GiB file under cProfile (bench/upload_bench.py), top "
        "entries by own time. cProfile sees the main thread, which reads the file once and chunks every "
        "byte (FastCDC, then each chunk's SHA-256), and waits for the server to join the parts; the whole "
        "file's SHA-256 (a thread of its own) and the threads that send the parts (each part's CRC32C, then "
        "its PUT) are not in it.\n\n"
        f"{body}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
