"""rollup_downloads: fold the download counters (Redis, or the per-process logs without it) into
daily rows now; the beat job does the same every ROLLUP_DOWNLOADS_INTERVAL seconds."""

from django.core.management.base import BaseCommand

from releases import download_fold


class Command(BaseCommand):
    help = "Fold the download counters into daily rows in the database (also a beat job)."

    def handle(self, *args, **options):
        folded = download_fold.fold()
        self.stdout.write(self.style.SUCCESS(f"Folded {folded} download{'s' if folded != 1 else ''}."))
