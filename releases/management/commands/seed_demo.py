"""seed_demo: a demo model with two published versions of small generated files (idempotent)."""

import hashlib
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from releases.services import LocalFile, ReleaseError, release_local_files

DEMO_MODEL = "demo-tts"
DEMO_VERSIONS = {
    "v1": "First demo release.\n\n* a small `model.pt` and its `config.yaml`",
    "v2": "Second demo release.\n\n* retrained weights\n* adds `checkpoints/vocoder.bin`",
}


def generated_bytes(label: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes, so every machine gets the same checksums."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def demo_files(version: str) -> dict[str, bytes]:
    files = {
        "model.pt": generated_bytes(f"{version}/model.pt", 256 * 1024),
        "config.yaml": f"model: {DEMO_MODEL}\nversion: {version}\nsample_rate: 24000\n".encode(),
    }
    if version == "v2":
        files["checkpoints/vocoder.bin"] = generated_bytes(f"{version}/vocoder", 64 * 1024)
    return files


class Command(BaseCommand):
    help = f"Create the demo model {DEMO_MODEL} with versions {', '.join(DEMO_VERSIONS)} (safe to run again)."

    def handle(self, *args, **options):
        for version, notes in DEMO_VERSIONS.items():
            root = Path(settings.DATA_DIR) / "demo-source" / version
            local = []
            for path, content in demo_files(version).items():
                source = root / path
                source.parent.mkdir(parents=True, exist_ok=True)
                source.write_bytes(content)
                local.append(LocalFile(path=path, source=source))
            try:
                outcome = release_local_files(DEMO_MODEL, version, local, notes=notes)
            except ReleaseError as error:
                raise CommandError(str(error)) from error
            state = "already there" if outcome.unchanged else "published"
            self.stdout.write(f"{DEMO_MODEL} {version}: {state} ({len(local)} files)")
