"""Bench rows for the Python client over the life of an install (issue 21's targets).

    python bench/client_life_bench.py        # these rows only, printed

Its own site (gunicorn on local storage behind bench/throttle.py, as in client_bench.py), with:
  - a later run of a complete version (one BENCH_LIFE_GB file, default 4 GiB) against one SHA-256
    pass over its files: the record's quick check reads no byte of them;
  - a start with the site down (nothing listening) and with --offline;
  - the client's peak memory (VmHWM) downloading the big file and a 10x smaller one with 8 connections;
  - one ~200 MB file through a link that caps each connection at 20 MB/s: the client's defaults
    against `aria2c -x 16 -s 16` (Debian's aria2) and `hf_transfer` with huggingface_hub's defaults
    (100 files at once, 10 MiB chunks); and through one 100 MB/s cap shared by all connections, the
    defaults against curl -o.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client_bench import LINK, MB, PER_CONNECTION, ROUNDS, Site
from common import free_port, manage

GIB = 1024**3
BIG = int(float(os.environ.get("BENCH_LIFE_GB", "4")) * GIB)
# Python's own allocator and the thread stacks: what a run costs whatever it downloads.
PEAK_PROGRAM = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "    sys.stderr.write('peak %s\\n' % line.split()[1])\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def write_random(path: Path, size: int) -> None:
    """`size` bytes of one random 16 MiB block over and over (nothing on the way compresses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as out:
        for start in range(0, size, len(block)):
            out.write(block[: size - start])


def timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    return time.perf_counter() - start, done


def client_run(site: Site, model: str, dest: Path, *options: str, env: dict | None = None) -> tuple[float, str]:
    """One run of the served client: its wall time and stderr (raises on a failed run)."""
    seconds, done = timed([sys.executable, str(site.script), model, "v1", str(dest), *options],
                          {"MODEL_SITE": site.site, **(env or {})})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"fetch_model.py exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stderr


def peak_memory(site: Site, model: str, dest: Path) -> tuple[int, float]:
    """(peak resident bytes, seconds) of a download with --connections 8."""
    seconds, done = timed([sys.executable, "-c", PEAK_PROGRAM, str(site.script), model, "v1", str(dest),
                           "--connections", "8"], {"MODEL_SITE": site.site})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"fetch_model.py exited {done.returncode}: {done.stderr[-2000:]}")
    return int(done.stderr.strip().splitlines()[-1].split()[1]) * 1024, seconds


def sha256_pass(folder: Path) -> float:
    start = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                for block in iter(lambda: source.read(1024 * 1024), b""):
                    digest.update(block)
    return time.perf_counter() - start


def bench_later_run_and_memory(site: Site, work: Path) -> list[tuple]:
    site.proxy.rates(0, 0)
    dest, small = work / "models" / "big" / "v1", work / "models" / "small" / "v1"
    peak_small, _ = peak_memory(site, "small", small)
    peak_big, download = peak_memory(site, "big", dest)
    later = statistics.median(client_run(site, "big", dest)[0] for _ in range(ROUNDS))
    hashing = statistics.median(sha256_pass(dest) for _ in range(ROUNDS))
    size = f"{BIG / GIB:g} GiB"
    return [
        (
            f"Python client, a later run of a complete {size} version (files in place, page cache warm; "
            f"median of {ROUNDS})",
            f"{later:.3f} s vs one SHA-256 pass over its files {hashing:.2f} s = {later / hashing:.3f}x",
            "<= 0.1x",
            later <= 0.1 * hashing,
        ),
        (
            "Python client, peak memory (VmHWM) downloading one file with --connections 8",
            f"{peak_big / MB:.0f} MB for {size} ({BIG / download / MB:.0f} MB/s), "
            f"{peak_small / MB:.0f} MB for {BIG // 10 / MB:.0f} MB",
            "reported (not growing with the file)",
            "",
        ),
    ]


def bench_site_down(site: Site, work: Path) -> list[tuple]:
    dest = work / "models" / "big" / "v1"  # complete and recorded by the rows above
    dead = {"MODEL_SITE": f"http://127.0.0.1:{free_port()}"}
    runs = {}
    for name, options in (("site down", []), ("--offline", ["--offline"])):
        times = []
        for _ in range(ROUNDS):
            seconds, done = timed([sys.executable, str(site.script), "big", "v1", str(dest), *options], dead)
            if done.returncode != 0:
                raise RuntimeError(f"{name}: exit {done.returncode}: {done.stderr[-1000:]}")
            times.append(seconds)
        runs[name] = statistics.median(times)
    return [
        (
            f"Python client, start of a complete {BIG / GIB:g} GiB version with the site down "
            f"(nothing listens; median of {ROUNDS})",
            f"exit 0 in {runs['site down']:.2f} s; with --offline {runs['--offline']:.2f} s",
            "< 2 s",
            runs["site down"] < 2,
        )
    ]


def aria2c(site: Site, out: Path) -> float:
    out.unlink(missing_ok=True)
    seconds, done = timed(["aria2c", "-x", "16", "-s", "16", "-q", "--allow-overwrite=true",
                           "--file-allocation=none", "-d", str(out.parent), "-o", out.name,
                           f"{site.site}/models/wide/v1/weights.bin"], {})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"aria2c exited {done.returncode}: {done.stderr[-1000:]}")
    return seconds


HF_PROGRAM = """
import sys, time, urllib.request
import hf_transfer

class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None

start = time.perf_counter()
try:  # huggingface_hub resolves the redirect with a HEAD, then hands hf_transfer the signed URL
    urllib.request.build_opener(Stay).open(urllib.request.Request(sys.argv[1], method="HEAD"))
except urllib.error.HTTPError as answer:
    signed = answer.headers["Location"]
hf_transfer.download(url=signed, filename=sys.argv[2], max_files=100, chunk_size=10 * 1024 * 1024,
                     parallel_failures=3, max_retries=5)
print(time.perf_counter() - start)
"""


def hf_transfer(site: Site, out: Path) -> float:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", HF_PROGRAM, f"{site.site}/models/wide/v1/weights.bin", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"hf_transfer failed: {done.stderr[-1000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def bench_against_peers(site: Site, work: Path, size: int) -> list[tuple]:
    site.proxy.rates(PER_CONNECTION, 0)
    times = {"client": [], "aria2c": [], "hf_transfer": []}
    connections = []
    for round_ in range(ROUNDS):
        dest = work / "wide" / str(round_) / "v1"  # no sibling folder to reuse from
        site.proxy.reset()
        times["client"].append(client_run(site, "wide", dest)[0])
        connections.append(site.proxy.stats()["most_open"])
        times["aria2c"].append(aria2c(site, work / "wide-aria2" / "weights.bin"))
        times["hf_transfer"].append(hf_transfer(site, work / "wide-hf" / "weights.bin"))
    client, aria, hf = (statistics.median(times[name]) for name in ("client", "aria2c", "hf_transfer"))
    return [
        (
            f"Python client with its defaults vs aria2c -x 16 -s 16 and hf_transfer (huggingface_hub's defaults), "
            f"one {size / MB:.0f} MB file, each connection capped at {PER_CONNECTION // MB} MB/s (median of {ROUNDS})",
            f"client {client:.2f} s ({statistics.median(connections):.0f} connections at most), aria2c {aria:.2f} s, "
            f"hf_transfer {hf:.2f} s",
            "client <= both",
            client <= aria and client <= hf,
        )
    ]


def bench_shared_cap(site: Site, work: Path, size: int) -> list[tuple]:
    site.proxy.rates(0, LINK)
    times = {"client": [], "curl": []}
    for round_ in range(ROUNDS):
        times["client"].append(client_run(site, "wide", work / "shared" / str(round_) / "v1")[0])
        out = work / "shared-curl.bin"
        out.unlink(missing_ok=True)
        times["curl"].append(timed(["curl", "-fsSL", "-o", str(out), f"{site.site}/models/wide/v1/weights.bin"], {})[0])
    client, curl = statistics.median(times["client"]), statistics.median(times["curl"])
    return [
        (
            f"Python client with its defaults vs curl -o, one {size / MB:.0f} MB file, one {LINK // MB} MB/s cap "
            f"shared by all connections (median of {ROUNDS})",
            f"client {client:.2f} s vs curl {curl:.2f} s = {curl / client:.2f}x",
            ">= 0.98x",
            curl / client >= 0.98,
        )
    ]


def bench_client_life() -> list[tuple]:
    with tempfile.TemporaryDirectory(prefix="model-releases-pylife-") as work:
        work = Path(work)
        wide = int(os.environ.get("BENCH_CLIENT_MB", "200")) * MB
        sources = {"big": BIG, "small": BIG // 10, "wide": wide}
        for model, size in sources.items():
            write_random(work / "src" / model / "weights.bin", size)
        site = Site(work)
        manage(site.env, ["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"],
               *[["publish_release", model, "v1", str(work / "src" / model / "weights.bin")] for model in sources])  # fmt: skip
        for model in sources:
            (work / "src" / model / "weights.bin").unlink()  # the storage has its own copy
        try:
            site.start()
            peers = bench_against_peers(site, work, wide) + bench_shared_cap(site, work, wide)
            if os.environ.get("BENCH_LIFE_ONLY") == "peers":
                return peers
            return bench_later_run_and_memory(site, work) + bench_site_down(site, work) + peers
        finally:
            site.stop()


if __name__ == "__main__":
    for row in bench_client_life():
        print(" | ".join(str(cell) for cell in row))
