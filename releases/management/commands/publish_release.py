"""publish_release MODEL VERSION FILE... : upload local files and publish them as a version."""

import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from releases.services import LocalFile, ReleaseError, release_local_files
from releases.sizes import binary_size as filesizeformat

PROGRESS_BAR_MIN_BYTES = 8 * 1024 * 1024


class Command(BaseCommand):
    help = (
        "Upload FILEs (hashing them on the way), record their sizes and SHA-256 checksums, and publish "
        "them as VERSION of MODEL (created if needed). Publishing the same files again is a no-op."
    )
    # Django's system checks look at the URLs, templates and admin, which a publish does not use:
    # importing the whole site for them cost a tenth of a second per run. (The project's own checks
    # are deploy checks, run by `check --deploy`.)
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("model", help="model slug, e.g. index-tts")
        parser.add_argument("version", help="version string, e.g. v23 or 2.0.1")
        parser.add_argument("files", nargs="+", metavar="FILE", help="files to publish")
        parser.add_argument(
            "--root",
            help="directory the files' paths are relative to (default: the deepest directory that contains all FILEs)",
        )
        parser.add_argument("--notes", metavar="FILE", help="release notes (Markdown) to read from FILE")
        parser.add_argument("--prerelease", action="store_true", help="mark the version as a prerelease")
        parser.add_argument("--draft", action="store_true", help="upload and record, but leave it a draft")
        parser.add_argument(
            "--jobs", type=int, metavar="N",
            help="parts of a large file sent at once to S3 (default RELEASE_UPLOAD_JOBS, 8)",
        )  # fmt: skip

    def handle(self, *args, model, version, files, root, notes, prerelease, draft, jobs, **options):
        if jobs is not None and not 1 <= jobs <= 64:
            raise CommandError("--jobs must be between 1 and 64.")
        local_files = local_files_under(files, root)
        notes_text = read_notes(notes) if notes else ""
        try:
            outcome = release_local_files(
                model,
                version,
                local_files,
                notes=notes_text,
                prerelease=prerelease,
                draft=draft,
                progress_for=self.progress_bar,
                jobs=jobs,
            )
        except ReleaseError as error:
            raise CommandError(str(error)) from error
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted. What was uploaded is kept: run the same command again to resume. (An upload left "
                f"unfinished for {settings.STALE_UPLOAD_HOURS} hours is aborted by the abort-stale-uploads job.)",
                returncode=130,
            ) from None
        release = outcome.version
        label = f"{release.model.slug} {release.version}"
        if outcome.unchanged:
            self.stdout.write(
                f"{label} is already {release.status} with these {len(local_files)} files; nothing to do."
            )
            return
        for file in release.files.order_by("path"):
            self.stdout.write(f"  {file.path}  {filesizeformat(file.size)}  sha256 {file.sha256}")
        state = "saved as a draft" if release.is_draft else "published"
        self.stdout.write(
            self.style.SUCCESS(f"{label} {state}: {len(outcome.uploaded)} uploaded, {len(outcome.kept)} kept.")
        )

    def progress_bar(self, item: LocalFile, size: int):
        if size < PROGRESS_BAR_MIN_BYTES:
            return None
        from tqdm import tqdm

        bar = tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=item.path, file=sys.stderr, disable=None
        )

        def advance(transferred: int) -> None:
            bar.update(transferred)
            if bar.n >= size:
                bar.close()

        return advance


def local_files_under(files: list[str], root: str | None) -> list[LocalFile]:
    """Pair each FILE with its path inside the version, relative to ``root``."""
    sources = [Path(os.path.abspath(name)) for name in files]
    for source in sources:
        if not source.is_file():
            raise CommandError(f"{source}: no such file.")
    if root:
        base = Path(os.path.abspath(root))
        if not base.is_dir():
            raise CommandError(f"--root {root}: no such directory.")
    else:
        base = Path(os.path.commonpath([str(source.parent) for source in sources]))
    pairs = []
    for source in sources:
        try:
            relative = source.relative_to(base)
        except ValueError:
            raise CommandError(f"{source} is not inside --root {base}.") from None
        _refuse_links_out_of(base, source)
        pairs.append(LocalFile(path=relative.as_posix(), source=source))
    return pairs


def _refuse_links_out_of(base: Path, source: Path) -> None:
    """A symbolic link (the file or a folder on its way) may point anywhere inside the root, never
    outside it: pointed at the site's own secret key, it would publish it."""
    target, inside = source.resolve(), base.resolve()
    if not target.is_relative_to(inside):
        raise CommandError(f"{source} is a symbolic link to {target}, outside --root {base}; refusing to publish it.")


def read_notes(name: str) -> str:
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"--notes {name}: cannot read it ({getattr(error, 'strerror', None) or error}).") from None
