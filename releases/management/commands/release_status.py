"""release_status MODEL VERSION {publish,yank,unyank,withdraw} [--reason TEXT]: the admin's status
changes from the command line, for releases scripted in CI."""

from django.core.management.base import BaseCommand, CommandError

from releases.models import Version
from releases.services import STATUS_ACTIONS, ReleaseError, change_status


class Command(BaseCommand):
    help = (
        "Publish a draft, yank a published version (with --reason), restore a yanked one (unyank), "
        "or withdraw a version for good, with the same rules as the admin. Exit 1 when refused."
    )

    def add_arguments(self, parser):
        parser.add_argument("model", help="model slug, e.g. index-tts")
        parser.add_argument("version", help="version string, e.g. v23")
        parser.add_argument("action", choices=STATUS_ACTIONS)
        parser.add_argument("--reason", default="", help="why it is yanked (required with yank; shown to everyone)")

    def handle(self, *args, model, version, action, reason, **options):
        found = Version.objects.select_related("model").filter(model__slug=model, version__iexact=version).first()
        if found is None:
            raise CommandError(f"{model} has no version {version}.")
        try:
            changed = change_status(found, action, reason=reason)
        except ReleaseError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(self.style.SUCCESS(f"{changed.model.slug} {changed.version} is {changed.status}."))
