"""wait_for_services: wait until the database, the broker and the object store answer (container start-up)."""

import time

from django.core.management.base import BaseCommand, CommandError

from releases import health


class Command(BaseCommand):
    help = "Wait until the database, the broker and the object store answer, or fail after --timeout seconds."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
        parser.add_argument("--only", choices=sorted(health.CHECKS), action="append", help="check only these")

    def handle(self, *args, timeout, only, **options):
        deadline = time.monotonic() + timeout
        pending = dict((name, check) for name, check in health.CHECKS.items() if not only or name in only)
        problems = {}
        while pending:
            for name, check in list(pending.items()):
                try:
                    check()
                except Exception as error:  # not up yet: try again until the deadline
                    problems[name] = str(error) or type(error).__name__
                else:
                    self.stdout.write(f"{name}: up")
                    pending.pop(name)
                    problems.pop(name, None)
            if not pending:
                break
            if time.monotonic() >= deadline:
                raise CommandError("; ".join(f"{name} is not reachable: {problems[name]}" for name in pending))
            time.sleep(1)
