"""rollup_run_reports: fold the run-report counters into hourly rows and check for failing first
runs now; the beat job `rollup-run-reports` does the same every RUN_REPORTS_INTERVAL seconds."""

from django.core.management.base import BaseCommand

from releases import report_fold, run_alerts


class Command(BaseCommand):
    help = "Fold the run reports into hourly rows, then mail ADMINS about versions whose first runs fail (also a beat job)."

    def handle(self, *args, **options):
        folded = report_fold.fold()
        changed = run_alerts.check()
        self.stdout.write(self.style.SUCCESS(f"Folded {folded} run report{'s' if folded != 1 else ''}."))
        for version in changed["alerts_opened"]:
            self.stdout.write(f"First runs of {version} are failing: ADMINS were mailed.")
        for version in changed["alerts_recovered"]:
            self.stdout.write(f"First runs of {version} succeed again: ADMINS were mailed.")
