"""/metrics: a prometheus_client collector over the shared counters (observability.py) and a few
gauges read when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import outbox, signing, verification
from .download_records import QUARANTINE_KEY, QUARANTINED_METRIC
from .models import File
from .observability import counters
from .report_records import QUARANTINE as RUN_REPORTS_QUARANTINE


class ReleasesCollector:
    """The counters shared by every process through Redis, and gauges read when scraped."""

    def collect(self):
        values = counters()
        redirects = CounterMetricFamily(
            "model_releases_redirects", "Stable-URL redirects served, by model.", labels=["model"]
        )
        for name, value in sorted(values.items()):
            if name.startswith("redirects:"):
                redirects.add_metric([name.split(":", 1)[1]], value)
        yield redirects
        quarantined = CounterMetricFamily(
            "model_releases_download_records_quarantined",
            f"Download records the fold could not read, set aside (see {QUARANTINE_KEY} or the quarantine file).",
            labels=["reason"],
        )
        for name, value in sorted(values.items()):
            if name.startswith(QUARANTINED_METRIC):
                quarantined.add_metric([name.removeprefix(QUARANTINED_METRIC)], value)
        yield quarantined
        yield from run_report_families(values)
        yield CounterMetricFamily("model_releases_signing_cache_hits", "Signed links served from the windowed cache.",
                                  value=values.get("signing_hits", 0))  # fmt: skip
        yield CounterMetricFamily("model_releases_signing_cache_misses", "Signed links computed.",
                                  value=values.get("signing_misses", 0))  # fmt: skip
        yield CounterMetricFamily("model_releases_chunk_backfill_read_bytes",
                                  "Bytes of objects read back from storage to build chunk manifests (the backfill).",
                                  value=values.get("chunk_backfill_read_bytes", 0))  # fmt: skip
        backlog = GaugeMetricFamily("model_releases_outbox_entries", "CDN outbox entries by state (pending, failed).",
                                    labels=["state"])  # fmt: skip
        for state, count_ in outbox.backlog().items():
            backlog.add_metric([state], count_)
        yield backlog
        credentials = signing.credentials_status()
        if credentials is not None:
            yield GaugeMetricFamily("model_releases_signing_credentials_seconds_left",
                                    "Seconds until the credentials that sign S3 links expire (+Inf for static keys).",
                                    value=credentials["seconds_left"])  # fmt: skip
            yield GaugeMetricFamily("model_releases_signing_credentials_refresh_failures",
                                    "Consecutive failed renewals of the signing credentials.", value=credentials["failures"])  # fmt: skip
        failures = File.objects.published().filter(verification_status__in=verification.FAILURES).count()
        yield GaugeMetricFamily("model_releases_verify_failures", "Published files whose last verification failed.",
                                value=failures)  # fmt: skip


def prometheus_text() -> str:
    """The text exposition format, written by prometheus_client (which escapes label values)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReleasesCollector())
    return generate_latest(registry).decode()


def run_report_families(values: dict[str, int]):
    """Run reports counted as they arrive (run_reports.py), and run records the fold set aside."""
    runs = CounterMetricFamily(
        "model_releases_run_reports",
        "Run reports of the served clients, by model, resolved version (empty before resolving), client and outcome.",
        labels=["model", "version", "client", "outcome"],
    )
    for name, value in sorted(values.items()):
        parts = name.split(":")
        if parts[0] == "runs" and len(parts) == 5:
            runs.add_metric(parts[1:], value)
    yield runs
    quarantined = CounterMetricFamily(
        "model_releases_run_report_records_quarantined",
        f"Run-report records the fold could not read, set aside ({RUN_REPORTS_QUARANTINE.location()}).",
        labels=["reason"],
    )
    for reason, value in sorted(RUN_REPORTS_QUARANTINE.metrics(values).items()):
        quarantined.add_metric([reason], value)
    yield quarantined
