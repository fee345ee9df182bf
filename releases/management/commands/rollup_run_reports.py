"""rollup_run_reports: fold the run-report counters into hourly rows and check for failing first
runs now; the beat job `rollup-run-reports` does the same every RUN_REPORTS_INTERVAL seconds."""

from django.core.management.base import BaseCommand

from releases import report_fold, run_alerts
from releases.tasks import periodic


class Command(BaseCommand):
    help = "Fold the run reports into hourly rows, then mail ADMINS about versions whose first runs fail (also a beat job)."

    def handle(self, *args, **options):
        # Under the beat job's lock: two folds at once could both create one hour's row.
        result = periodic("rollup-run-reports", lambda: {"runs": report_fold.fold(), **run_alerts.check()})
        if result.get("skipped"):
            self.stdout.write("Another fold of the run reports is in progress; nothing done.")
            return
        folded, changed = result["runs"], result
        self.stdout.write(self.style.SUCCESS(f"Folded {folded} run report{'s' if folded != 1 else ''}."))
        for version in changed["alerts_opened"]:
            self.stdout.write(f"First runs of {version} are failing: ADMINS were mailed.")
        for version in changed["alerts_recovered"]:
            self.stdout.write(f"First runs of {version} succeed again: ADMINS were mailed.")
