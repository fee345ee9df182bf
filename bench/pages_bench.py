"""`make bench` rows for the index with 100 models and the Atom feed (issue: release pages)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def add_catalogue(data_dir: str, numbers: range) -> None:
    """Models catalogue-NNN, each with a card, tags, a license and one version."""
    from releases.services import LocalFile, release_local_files, set_model_info

    source = Path(data_dir) / "src" / "catalogue"
    for number in numbers:
        slug = f"catalogue-{number:03d}"
        path = source / slug / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{slug}\n".encode())
        release_local_files(slug, "v1", [LocalFile("model.pt", path)], notes=f"First release of {slug}.")
        set_model_info(slug, description=f"# {slug}\n\nA **benchmark** model, number {number}.\n",
                       license="Apache-2.0", tags=["bench", f"group-{number % 10}"])  # fmt: skip


def median_ms(client, url: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, (url, response.status_code)
    return statistics.median(times) * 1e3


def queries(client, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    return len(captured.captured_queries)


def bench_pages(data_dir: str, rounds: int) -> list[tuple]:
    from django.test import Client

    client = Client()
    add_catalogue(data_dir, range(4))
    before = {url: queries(client, url) for url in ("/", "/feeds/releases.atom", "/?q=bench&sort=downloads")}
    add_catalogue(data_dir, range(4, 100))
    rows = []
    for label, url, target_ms in (  # the index renders every card: Django's templates take most of it
        ("index page, 104 models", "/", 100),
        ("index search + sort by downloads, 100 matches", "/?q=bench&sort=downloads", 100),
        ("site Atom feed, 50 entries", "/feeds/releases.atom", 40),
    ):
        count = queries(client, url)
        took = median_ms(client, url, rounds)
        rows.append(
            (
                f"{label} (median of {rounds})",
                f"{took:.1f} ms; {before[url]} vs {count} queries with 8 vs 104 models (4 vs 100 matches)",
                f"<= {target_ms} ms, queries equal",
                took <= target_ms and before[url] == count,
            )
        )
    return rows
