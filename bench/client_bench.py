"""Bench rows for the Python client (`/fetch_model.py`), the targets of issue 14.

One site of its own: a temporary DATA_DIR with SQLite and the local storage backend, so gunicorn
(site_config/gunicorn.py: gthread workers, as in production) answers the API, the stable URLs'
redirects, the manifests and the file bytes itself at /files/... Every request of the clients and
of curl goes through bench/throttle.py in front of gunicorn, so the same limits apply to all of
them, and the proxy counts the bytes the server sends (its "down" count, headers included).

Rows:
  - one ~200 MB file through a link that limits each TCP connection to 20 MB/s: --connections 8 vs curl -o;
  - the same file through a link of 100 MB/s in all: the default connections vs curl -o;
  - an unchanged file with --from: bytes fetched;
  - delta updates between safetensors-like pairs (bench/safetensors_pairs.py): bytes fetched vs bytes
    changed, and the time against a full download, once the site serves chunk manifests.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

from common import REPO, free_port, manage, start_gunicorn, wait_for_http
from safetensors_pairs import KINDS, write_pairs
from throttle import Throttle

MB = 1000 * 1000
PER_CONNECTION = 20 * MB  # bytes/s for each connection (row 1)
LINK = 100 * MB  # bytes/s for all connections together (rows 2 to 4)
ROUNDS = int(os.environ.get("BENCH_CLIENT_ROUNDS", "3"))
FILE = "model.safetensors"
CLOCK = os.sysconf("SC_CLK_TCK")
# What the client says about a file when all goes well; any other line about it is a failed request.
FINE = ("downloaded, SHA-256 verified", "delta update from", "resuming at", "reused", "already there")
# A diagnostic, never the measured client: the served client with each finished range response
# read to its end, so that http.client may send the next request on the same connection (it
# raises ResponseNotReady('Request-sent') while the previous response is unread, even at length 0).
UNREAD_RANGE = (
    "            response.drop()\n\n\ndef check_response",
    "            response.drop()\n        else:\n            response.read()\n\n\ndef check_response",
)


def process_tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of a process and its children (gunicorn's arbiter and workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == root or int(fields[1]) == root:  # fields[1] is the parent's pid
            total += (int(fields[11]) + int(fields[12])) / CLOCK
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Site:
    """gunicorn on local storage behind the throttling proxy, with the client downloaded through it."""

    def __init__(self, work: Path):
        self.work = work
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "DATABASE_URL", "REDIS_URL"))
        }
        for name in ("CDN_BACKEND", "SITE_URL", "WEB_CONCURRENCY", "GUNICORN_THREADS"):
            self.env.pop(name, None)
        self.env.update(DATA_DIR=str(work / "data"), DJANGO_SETTINGS_MODULE="site_config.settings")
        self.access_log = work / "access.log"
        self.server = self.proxy = None

    def start(self) -> None:
        port = free_port()
        self.server = start_gunicorn(
            self.env, port, "-c", str(REPO / "site_config" / "gunicorn.py"), "--access-logfile", str(self.access_log),
            "--access-logformat", '%(r)s %(s)s %({content-length}o)s "%({range}i)s"',
        )  # fmt: skip
        self.direct = f"http://127.0.0.1:{port}"
        wait_for_http(f"{self.direct}/healthz", self.server, timeout=60)
        self.proxy = Throttle(port)
        self.site = f"http://127.0.0.1:{self.proxy.port}"
        self.script = self.work / "fetch_model.py"
        urllib.request.urlretrieve(f"{self.site}/fetch_model.py", self.script)
        served = self.script.read_text()
        self.patched = None
        if UNREAD_RANGE[0] in served:
            self.patched = self.work / "patched" / "fetch_model.py"
            self.patched.parent.mkdir()
            self.patched.write_text(served.replace(*UNREAD_RANGE))

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)

    def log_mark(self) -> int:
        return len(self.access_log.read_text().splitlines()) if self.access_log.exists() else 0

    def sent_since(self, mark: int, path_part: str) -> tuple[int, int]:
        """(responses, their Content-Length) gunicorn logged since `mark` for request lines containing
        path_part: the bytes it was asked for (gunicorn's own sent count, %(B)s, misses sendfile)."""
        time.sleep(0.2)  # a worker writes its access line just after the last byte
        lines = [line for line in self.access_log.read_text().splitlines()[mark:] if path_part in line.split('"')[0]]
        sizes = [line.split('"')[0].split()[-1] for line in lines]
        return len(lines), sum(int(size) for size in sizes if size.isdigit())

    def client(self, version: str, dest: Path, *options: str, script: Path | None = None) -> dict:
        """One run of the served fetch_model.py: its wall time, its own CPU, the proxy's and gunicorn's,
        and the failed requests it reported (each retried, on a new connection, after a back-off)."""
        before = (children_cpu(), self.proxy.stats()["cpu"], process_tree_cpu(self.server.pid))
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(script or self.script), "bench", version, str(dest), *options],
            env={**os.environ, "MODEL_SITE": self.site}, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"fetch_model.py exited {done.returncode}: {done.stderr[-2000:]}")
        failures = [
            line.split(f"{FILE}: ", 1)[1]
            for line in done.stderr.splitlines()
            if f"{FILE}: " in line and not any(fine in line for fine in FINE)
        ]
        return {
            "seconds": seconds,
            "failed": len(failures),
            "failure": failures[0] if failures else "",
            "client_cpu": children_cpu() - before[0],
            "proxy_cpu": self.proxy.stats()["cpu"] - before[1],
            "server_cpu": process_tree_cpu(self.server.pid) - before[2],
            "log": done.stderr,
        }

    def curl(self, version: str, out: Path) -> dict:
        before = (children_cpu(), self.proxy.stats()["cpu"], process_tree_cpu(self.server.pid))
        start = time.perf_counter()
        subprocess.run(["curl", "-fsSL", "-o", str(out), f"{self.site}/models/bench/{version}/{FILE}"], check=True)
        return {
            "seconds": time.perf_counter() - start,
            "client_cpu": children_cpu() - before[0],
            "proxy_cpu": self.proxy.stats()["cpu"] - before[1],
            "server_cpu": process_tree_cpu(self.server.pid) - before[2],
        }


def counted(site: Site, run) -> dict:
    """run()'s figures, with what the proxy counted during it."""
    site.proxy.reset()
    return {**run(), **site.proxy.stats()}


def compare_with_curl(site: Site, connections: list[str], script: Path | None = None) -> dict:
    """Median of ROUNDS runs each of the client (fresh DEST_DIR) and curl -o, alternately."""
    runs = {"client": [], "curl": []}
    dest, plain = site.work / "runs" / "client" / "v1", site.work / "plain.bin"
    for _ in range(ROUNDS):
        shutil.rmtree(dest.parent, ignore_errors=True)
        runs["client"].append(counted(site, lambda: site.client("v1", dest, *connections, script=script)))
        if script is None:  # a diagnostic run of a patched client is compared with the curl runs before it
            plain.unlink(missing_ok=True)
            runs["curl"].append(counted(site, lambda: site.curl("v1", plain)))
    return {
        name: {
            **{
                key: statistics.median(run[key] for run in results)
                for key in results[0]
                if key not in ("failure", "log")
            },
            "failure": next((run.get("failure") for run in results if run.get("failure")), ""),
        }
        for name, results in runs.items()
        if results
    }


def where_time_goes(client: dict, size: int) -> str:
    failed = ""
    if client["failed"]:
        failed = (
            f"; {client['failed']:.0f} failed requests, each retried on a new connection after a back-off "
            f"of 1 s or more (first: {client['failure']!r})"
        )
    return (
        f"client: {client['connections']:.0f} connections ({client['most_open']:.0f} at once), "
        f"{size / client['seconds'] / MB:.0f} MB/s; CPU seconds: client {client['client_cpu']:.2f}, "
        f"proxy {client['proxy_cpu']:.2f}, gunicorn {client['server_cpu']:.2f} (2 cores){failed}"
    )


def against_curl(site: Site, size: int, connections: list[str], what: str, target: float) -> list[tuple]:
    result = compare_with_curl(site, connections)
    curl_s, client_s = result["curl"]["seconds"], result["client"]["seconds"]
    rows = [
        (
            what,
            f"client {client_s:.2f} s vs curl {curl_s:.2f} s = {curl_s / client_s:.2f}x; "
            + where_time_goes(result["client"], size),
            f">= {target:g}x",
            curl_s / client_s >= target,
        )
    ]
    if curl_s / client_s < target and result["client"]["failed"] and site.patched:
        patched = compare_with_curl(site, connections, site.patched)["client"]
        rows.append(
            (
                "the row above with the served client patched (a local copy) to read each finished range "
                "response to its end, so the next request can reuse the connection",
                f"client {patched['seconds']:.2f} s vs curl {curl_s:.2f} s = {curl_s / patched['seconds']:.2f}x; "
                + where_time_goes(patched, size),
                "reported (what the missed target costs)",
                "",
            )
        )
    return rows


def bench_segmented(site: Site, size: int) -> list[tuple]:
    site.proxy.rates(PER_CONNECTION, 0)
    what = (
        f"Python client --connections 8 vs curl -o, one {size / MB:.0f} MB file, each connection limited to "
        f"{PER_CONNECTION // MB} MB/s by a loopback proxy in front of gunicorn (local storage: the API, the "
        f"redirects and the file bytes all pass the proxy; median of {ROUNDS})"
    )
    return against_curl(site, size, ["--connections", "8"], what, 3)


def bench_first_download(site: Site, size: int) -> list[tuple]:
    site.proxy.rates(0, LINK)
    what = (
        f"Python client (default connections) vs curl -o, one {size / MB:.0f} MB file, both through the proxy "
        f"limited to {LINK // MB} MB/s in all (median of {ROUNDS})"
    )
    return against_curl(site, size, [], what, 0.9)


def bench_unchanged(site: Site, old: Path) -> list[tuple]:
    """v1-same holds the same bytes as v1: with --from v1, nothing of the file may be fetched."""
    site.proxy.rates(0, LINK)
    dest = old.parent / "v1-same"
    mark = site.log_mark()
    site.proxy.reset()
    run = site.client("v1-same", dest, "--from", str(old))
    down = site.proxy.stats()["down"]
    requests, sent = site.sent_since(mark, "/files/")
    reused = "reused" in run["log"]
    return [
        (
            "Python client, an unchanged file with --from OLD_DIR (a new version, same bytes)",
            f"{sent:,} file bytes in {requests} file requests; {down:,} bytes through the proxy in all "
            f"(the version's API answer); {run['seconds']:.2f} s" + ("" if reused else "; NOT reported as reused"),
            "0 file bytes",
            sent == 0 and requests == 0 and reused,
        )
    ]


def manifest_size(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        return len(response.read())


def bench_delta(site: Site, pairs: dict, old: Path, manifests: str | None) -> list[tuple]:
    """Each new file of a pair as v2-<kind> over v1 (the old file), fetched with --from v1."""
    what = "Python client delta update, ~200 MB safetensors-like pair"
    if manifests:
        return [(f"{what}s", f"chunk manifests not available ({manifests})", "delta updates", False)]
    import json

    site.proxy.rates(0, LINK)
    with urllib.request.urlopen(f"{site.direct}/api/v1/models/bench/versions/v1", timeout=30) as response:
        old_entry = json.load(response)["files"][0]
    rows = []
    for kind in KINDS:
        pair, version = pairs[kind], f"v2-{kind}"
        with urllib.request.urlopen(f"{site.direct}/api/v1/models/bench/versions/{version}", timeout=30) as response:
            entry = json.load(response)["files"][0]
        both = manifest_size(entry["chunks_url"]) + manifest_size(urljoin(entry["chunks_url"], old_entry["sha256"]))
        # Its own folders, as a user would have them: models/bench/v1 (a hard-linked copy) and v2 beside it.
        root = site.work / "delta" / kind / "bench"
        shutil.copytree(old, root / "v1", copy_function=os.link)
        mark = site.log_mark()
        site.proxy.reset()
        run = site.client(version, root / "v2", "--from", str(root / "v1"))
        down = site.proxy.stats()["down"]
        requests, sent = site.sent_since(mark, f"/files/bench/{version}/")
        delta_used = "delta update from" in run["log"]
        full = site.client(version, site.work / "full" / kind / "v2")  # no older copy at hand
        fetched = down - both
        size, changed = pair["size"], pair["changed"]
        limit = (1.02 * size if kind == "all" else changed + 0.05 * size) + both
        rows.append(
            (
                f"{what}: {pair['what']} ({size / MB:.1f} MB, {LINK // MB} MB/s link)",
                f"fetched {fetched / MB:.2f} MB (at the proxy: every byte the server sent but the manifests; "
                f"{requests} range{'s' * (requests != 1)} of the file, {sent / MB:.2f} MB) for {changed / MB:.2f} MB changed; manifests "
                f"{both / 1000:.0f} kB; v2 in {run['seconds']:.2f} s{retried(run)} vs a full download "
                f"{full['seconds']:.2f} s{retried(full)}"
                + ("" if delta_used else "; NO delta update: " + _last_lines(run["log"])),
                f"<= {limit / MB:.2f} MB ("
                + ("1.02x the file" if kind == "all" else "changed + 5% of the file")
                + " + manifests)",
                delta_used and fetched <= limit,
            )
        )
        shutil.rmtree(root.parent)
        shutil.rmtree(site.work / "full" / kind)
    return rows


def retried(run: dict) -> str:
    count = run["failed"]
    return f" ({count} failed request{'s' * (count != 1)} retried)" if count else ""


def _last_lines(log: str) -> str:
    return " / ".join(line.strip() for line in log.strip().splitlines()[-3:])


def manifests_missing(site: Site) -> str | None:
    """Why delta updates cannot be measured, or None: every file of the bench has a chunks_url."""
    check = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "help", "build_chunk_manifests"],
        env=site.env, capture_output=True, text=True,
    )  # fmt: skip
    if check.returncode == 0:
        manage(site.env, ["build_chunk_manifests"])
    import json

    versions = ["v1"] + [f"v2-{kind}" for kind in KINDS]
    for version in versions:
        with urllib.request.urlopen(f"{site.direct}/api/v1/models/bench/versions/{version}", timeout=30) as response:
            if not json.load(response)["files"][0].get("chunks_url"):
                command = "" if check.returncode == 0 else "; no build_chunk_manifests command"
                return f"no chunks_url in the API for {version}{command}"
    return None


def bench_python_client() -> list[tuple]:
    with tempfile.TemporaryDirectory(prefix="model-releases-pyclient-") as work:
        work = Path(work)
        megabytes = int(os.environ.get("BENCH_CLIENT_MB", "200"))
        pairs = write_pairs(work / "pairs", megabytes)
        site = Site(work)
        sources = {"v1": pairs["old"]["path"], "v1-same": pairs["old"]["path"]}
        sources.update({f"v2-{kind}": pairs[kind]["path"] for kind in KINDS})
        publish = []
        for version, path in sources.items():  # every version holds one file of the same name
            folder = work / "src" / version
            folder.mkdir(parents=True)
            os.link(path, folder / FILE)
            publish.append(["publish_release", "bench", version, str(folder / FILE)])
        manage(site.env, ["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"], *publish)
        try:
            site.start()
            size = pairs["old"]["size"]
            rows = bench_segmented(site, size) + bench_first_download(site, size)
            old = work / "models" / "bench" / "v1"  # fetched once, the older copy for the rest
            site.proxy.rates(0, LINK)
            site.client("v1", old)
            rows += bench_unchanged(site, old)
            rows += bench_delta(site, pairs, old, manifests_missing(site))
        finally:
            site.stop()
    from client_life_bench import bench_client_life  # its own site; it imports this module

    return rows + bench_client_life()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    for row in bench_python_client():
        print(" | ".join(str(cell) for cell in row))
