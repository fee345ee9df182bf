"""list_unsafe_paths: the published files whose paths break the portable-name rule (names.py)."""

import sys

from django.core.management.base import BaseCommand

from releases.names import path_problem
from releases.selectors import downloadable_paths


class Command(BaseCommand):
    help = (
        "List the files of published and yanked versions whose paths a new file could not have "
        "(names Windows cannot hold, and what the clients refuse), one 'model version path: reason' "
        "line each. They stay downloadable; publish a version with other names to replace them. "
        "Exits 1 if any is listed, 0 otherwise."
    )

    def handle(self, *args, **options):
        found = 0
        for model, version, path in downloadable_paths():
            if problem := path_problem(path):
                found += 1
                self.stdout.write(f"{model} {version} {path}: {problem}")
        if found:
            self.stderr.write(f"{found} published file(s) break the name rule.")
            sys.exit(1)
        self.stderr.write("Every published file's path follows the name rule.")
