"""build_chunk_manifests: build the chunk manifests that published files lack, now (the beat job
backfill-chunk-manifests does the same in batches); one line per file, exit 1 if any failed."""

from django.core.management.base import BaseCommand, CommandError

from releases import services


class Command(BaseCommand):
    help = (
        "Build the content-defined chunk manifests (docs/chunk-manifests.md) of published files of at least "
        "1 MiB that have none: every published file, or those of MODEL, or of MODEL VERSION. Prints one line "
        "per file; exits 1 if any failed."
    )

    def add_arguments(self, parser):
        parser.add_argument("model", nargs="?", help="only this model's files")
        parser.add_argument("version", nargs="?", help="only this version's files (an exact version string)")

    def handle(self, *args, model=None, version=None, **options):
        try:
            files = list(services.files_for_manifests(model, version))
        except services.ReleaseError as error:
            raise CommandError(str(error)) from error
        failed, read, width = 0, 0, len(str(len(files)))
        for number, file in enumerate(files, start=1):
            label = f"[{number:>{width}}/{len(files)}] {file.version.model.slug} {file.version.version} {file.path}"
            try:
                outcome = services.build_chunk_manifest(file.sha256)
            except services.ReleaseError as error:
                failed, read = failed + 1, read + getattr(error, "read_bytes", 0)
                self.stderr.write(f"{label}: FAILED: {error}")
                continue
            read += outcome.read
            self.stdout.write(f"{label}: {outcome.describe()}")
        summary = f"{len(files)} file{'s' if len(files) != 1 else ''} checked, {read:,} bytes read from storage"
        if failed:
            raise CommandError(
                f"{failed} of {len(files)} files have no chunk manifest; see the lines above ({summary})."
            )
        self.stdout.write(self.style.SUCCESS(f"Done: {summary}."))
