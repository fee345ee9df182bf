"""apply_bucket_cors [--origin URL ...] [--dry-run]: set the S3 bucket's CORS rule that the admin's
direct uploads need (browsers PUT parts to the bucket from the site's pages)."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from releases.services import ReleaseError
from releases.services.browser_uploads import apply_bucket_cors


class Command(BaseCommand):
    help = (
        "Set the release bucket's CORS rule so that the admin's upload page can send parts straight to it: "
        "PUT from the site's origin (SITE_URL, or each --origin) with the part checksum header. "
        "Other CORS rules of the bucket are kept; --dry-run prints the rule and changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--origin", action="append", dest="origins", help="scheme://host[:port]; repeat for several"
        )
        parser.add_argument("--dry-run", action="store_true", help="print the rule, change nothing")

    def handle(self, *args, origins, dry_run, **options):
        origins = origins or ([settings.SITE_URL] if settings.SITE_URL else [])
        try:
            rules = apply_bucket_cors(origins, dry_run=dry_run)
        except ReleaseError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(json.dumps(rules, indent=2))
        if not dry_run:
            self.stdout.write(self.style.SUCCESS(f"CORS rule set: PUT from {', '.join(origins)}."))
