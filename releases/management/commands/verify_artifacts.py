"""verify_artifacts: check every published file now (exists, size, full SHA-256 re-hash)."""

import sys

from django.core.management.base import BaseCommand
from django.db.models import Sum

from releases.verification import published_files, verify_everything


class Command(BaseCommand):
    help = (
        "Verify every published file now: the object exists, has the recorded size, and its content "
        "re-hashes to the recorded SHA-256. Exits 1 if any file is missing or does not match."
    )

    def handle(self, *args, **options):
        from tqdm import tqdm

        total = published_files().aggregate(total=Sum("size"))["total"] or 0
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="verify", file=sys.stderr, disable=None
        ) as bar:
            report = verify_everything(progress=bar.update)
        for failure in report.failures:
            self.stderr.write(f"FAILED {failure}")
        self.stdout.write(report.summary())
        if report.failed:
            sys.exit(1)
