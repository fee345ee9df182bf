"""set_model_info MODEL [--description-file F] [--license SPDX] [--tag T ...] [--homepage URL]
[--source URL] [--paper URL]: edit a model's card from the command line; what is not named stays."""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from releases import licenses
from releases.services import ReleaseError, set_model_info


class Command(BaseCommand):
    help = (
        "Set a model's description (Markdown, from a file; '-' reads stdin), license (SPDX identifier), "
        "tags (repeat --tag; --tag '' clears them) and links. Options not given leave their part unchanged."
    )

    def add_arguments(self, parser):
        parser.add_argument("model", help="model slug, e.g. index-tts")
        parser.add_argument("--description-file", type=str, help="a Markdown file for the model card ('-': stdin)")
        parser.add_argument("--license", help="an SPDX identifier, e.g. Apache-2.0 ('' clears it)")
        parser.add_argument("--tag", action="append", dest="tags", help="a tag; repeat for several")
        parser.add_argument("--homepage", help="the model's homepage URL ('' clears it)")
        parser.add_argument("--source", help="the source code's URL ('' clears it)")
        parser.add_argument("--paper", help="the paper's URL ('' clears it)")

    def handle(self, *args, model, description_file, license, tags, homepage, source, paper, **options):
        changes = {name: value for name, value in (("license", license), ("tags", tags), ("homepage", homepage),
                   ("source", source), ("paper", paper)) if value is not None}  # fmt: skip
        if description_file is not None:
            changes["description"] = self.read(description_file)
        if not changes:
            raise CommandError("Name at least one part to change (see --help).")
        try:
            card = set_model_info(model, **changes)
        except ReleaseError as error:
            raise CommandError(str(error)) from error
        summary = [f"license {card.license} ({licenses.name(card.license)})" if card.license else "no license"]
        summary.append(
            "tags " + ", ".join(card.tags.values_list("name", flat=True)) if card.tags.exists() else "no tags"
        )
        self.stdout.write(self.style.SUCCESS(f"{card.slug}: {'; '.join(summary)}."))

    def read(self, name: str) -> str:
        if name == "-":
            return sys.stdin.read()
        try:
            return Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"Cannot read {name}: {error}") from error
