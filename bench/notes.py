"""Bench rows for release notes: hostile Markdown renders in bounded time when written, and the
largest allowed notes cost a version page nothing extra (they are stored rendered)."""

import statistics
import time

ROUNDS = 200
# Inputs that made renderers or the sanitiser super-linear; each at the size limit.
HOSTILE = {
    "long paragraphs of inline HTML": ("<span>" + "a" * 10 + "</span> ") * 16000,
    "unclosed brackets": "[" * 300000,
    "unclosed link openers": "[a](" * 80000,
    "emphasis runs": "*a **b " * 40000,
    "entities": "&#" * 150000,
    "a long table": "|a|b|\n|-|-|\n" + "|x|y|\n" * 50000,
    "HTML 60 deep, repeated": ("<div>" * 60 + "x" + "</div>" * 60 + "\n\n") * 400,
}


def bench_notes() -> list[tuple]:
    from django.conf import settings
    from django.core.exceptions import ValidationError
    from django.test import Client

    from releases import rendering, services
    from releases.models import Version

    limit = settings.RELEASE_NOTES_MAX_BYTES
    worst, worst_name = 0.0, ""
    for name, text in HOSTILE.items():
        text = text[:limit]
        start = time.perf_counter()
        try:
            rendering.render_markdown(text)
        except ValidationError:
            pass  # refused (too deep) is an answer too, and a quick one
        elapsed = time.perf_counter() - start
        if elapsed > worst:
            worst, worst_name = elapsed, name
    rows = [(f"notes: render {limit // 1024} KiB of hostile Markdown (worst of {len(HOSTILE)} kinds)",
             f"{worst * 1e3:.0f} ms ({worst_name})", "<= 1000 ms, once per write", worst <= 1.0)]  # fmt: skip

    largest = ("Changes: " + "faster loading, better prosody. " * 8 + "\n\n") * (limit // 280)
    versions = {"one line": "One line of notes.", "largest allowed": largest[:limit]}
    client, times = Client(), {}
    for label, notes in versions.items():
        version = Version.objects.get(model__slug="one-file", version="v1")
        services.update_version_details(version, notes=notes, prerelease=False)
        url = "/models/one-file/v1/"
        assert client.get(url).status_code == 200
        samples = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            client.get(url)
            samples.append(time.perf_counter() - start)
        times[label] = statistics.median(samples) * 1e3
    ratio = times["largest allowed"] / times["one line"]
    rows.append((f"notes: 1-file version page, {limit // 1024} KiB of notes vs one line (median of {ROUNDS})",
                 f"{times['largest allowed']:.2f} ms / {times['one line']:.2f} ms = {ratio:.2f}x",
                 "reported (no Markdown on a page view)", ""))  # fmt: skip
    return rows
