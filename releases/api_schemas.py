"""The JSON API's response shapes, every field described, with real examples: the OpenAPI document
(/api/openapi.json, /api/docs) is generated from these, and the API's tests hold responses to it."""

from __future__ import annotations

from typing import Literal

from ninja import Field, Schema

SHA = "3f786850e387550fdab836ed7e6dc881de23001b3f786850e387550fdab836ed"
SITE = "https://models.example.org"
Status = Literal["draft", "published", "yanked", "withdrawn"]
STATUS_HELP = (
    "draft: staff only; published: downloadable; yanked: downloadable by its exact version, never latest, "
    "see yanked_reason; withdrawn: gone (its URLs answer 410)."
)


def described(description: str, example, **options):
    return Field(..., description=description, examples=[example], **options)


class Error(Schema):
    detail: str = described(
        "What went wrong, with what may have been meant (closest model names, or the model's versions).",
        "There is no model 'index-ts'. Did you mean 'index-tts'?",
    )


class FileOut(Schema):
    path: str = described("Where the file goes, relative to the version's folder.", "checkpoints/model.pt")
    size: int = described("Exact size in bytes.", 2_147_483_648)
    sha256: str = described("SHA-256 of the content, 64 lower-case hex digits.", SHA)
    url: str = described(
        "Freshly signed download link (absolute); valid until expires_at. Do not store it: store stable_url.",
        f"{SITE}/files/index-tts/v23/checkpoints/model.pt?expires=1767225600&signature=...",
    )
    expires_at: str = described("When `url` stops working, ISO 8601 UTC.", "2026-01-01T00:00:00Z")
    stable_url: str = described(
        "Never expires: answers 302 to a freshly signed link (with X-Artifact-SHA256 and X-Artifact-Size).",
        f"{SITE}/models/index-tts/v23/checkpoints/model.pt",
    )
    chunks_url: str | None = Field(
        description="Stable URL of the file's content-defined chunk manifest (docs/chunk-manifests.md), for "
        "fetching only the chunks that changed since an older version; null when it has none (files under "
        "1 MiB never do).",
        examples=[f"{SITE}/chunks/{SHA}"],
    )


class ChangesOut(Schema):
    """Relative to the previous published version (`previous`, null for the first): paths only."""

    previous: str | None = described("The published version compared with; null for the first.", "v22")
    added: list[str] = described("Paths this version has and the previous had not.", ["vocoder/g.bin"])
    removed: list[str] = described("Paths the previous version had and this one has not.", ["old/vocab.txt"])
    changed: list[str] = described("Paths in both whose content differs.", ["checkpoints/model.pt"])


class DownloadsOut(Schema):
    """Counted once per stable-URL GET that starts a download, folded into daily counts by rollup_downloads."""

    total: int = described("Downloads since the first release.", 1520)
    last_30_days: int = described("Downloads in the last 30 days.", 212)


class LinksOut(Schema):
    homepage: str | None = described("The project's home page.", "https://example.org/index-tts")
    source: str | None = described("Where the code lives.", "https://github.com/example/index-tts")
    paper: str | None = described("The paper describing the model.", None)


class VersionOut(Schema):
    model: str = described("The model's slug.", "index-tts")
    version: str = described("The resolved version (never `latest`).", "v23")
    status: Status = described(STATUS_HELP, "published")
    prerelease: bool = described("A prerelease is never chosen as latest.", False)
    published_at: str | None = described(
        "When it was first published, ISO 8601 UTC; null for a draft.", "2026-11-30T09:00:00Z"
    )
    notes: str = described("Release notes, Markdown (line ends `\\n`).", "# Changes\n\n* faster vocoder\n")
    yanked_reason: str = described(
        "Why it was yanked (or withdrawn); empty otherwise.", "Corrupt vocoder weights; use v22."
    )
    files: list[FileOut] = described("Every file, sorted by path.", [])
    total_size: int = described("The files' sizes added up, in bytes.", 2_147_500_000)
    changes: ChangesOut = Field(..., description="What changed since the previous published version.")
    downloads: DownloadsOut = Field(..., description="This version's downloads.")
    report_url: str | None = described(
        "Where the served clients send their run report (docs/run-reports.md); null: send none.",
        f"{SITE}/api/v1/reports",
    )


class VersionSummary(Schema):
    version: str = described("The version's name.", "v23")
    status: Status = described(STATUS_HELP, "yanked")
    prerelease: bool = described("A prerelease is never chosen as latest.", False)
    published_at: str | None = described("ISO 8601 UTC; null for a draft.", "2026-11-30T09:00:00Z")
    yanked_reason: str = described("Why it was yanked (or withdrawn); empty otherwise.", "")
    url: str = described("This version in the API.", f"{SITE}/api/v1/models/index-tts/versions/v23")
    downloads: DownloadsOut = Field(..., description="This version's downloads.")


class ModelOut(Schema):
    model: str = described("The model's slug.", "index-tts")
    name: str = described("Display name.", "IndexTTS")
    summary: str = described("One line about the model.", "Zero-shot text-to-speech.")
    description: str = described("The model card, Markdown (line ends `\\n`).", "# IndexTTS\n\nZero-shot TTS.\n")
    latest: str | None = described("The latest version; null when there is none yet.", "v23")
    url: str = described("This model in the API.", f"{SITE}/api/v1/models/index-tts")
    versions: list[VersionSummary] = described("Every visible version, newest first.", [])
    license: str | None = described("SPDX license identifier.", "Apache-2.0")
    tags: list[str] = described("Lower-case tags.", ["tts", "voice-cloning"])
    links: LinksOut = Field(..., description="Where else to read about it.")
    downloads: DownloadsOut = Field(..., description="Downloads of all its versions.")


class ModelSummary(Schema):
    model: str = described("The model's slug.", "index-tts")
    name: str = described("Display name.", "IndexTTS")
    summary: str = described("One line about the model.", "Zero-shot text-to-speech.")
    latest: str | None = described("The latest version; null when there is none yet.", "v23")
    url: str = described("This model in the API.", f"{SITE}/api/v1/models/index-tts")
    license: str | None = described("SPDX license identifier.", "Apache-2.0")
    tags: list[str] = described("Lower-case tags.", ["tts"])
    downloads: DownloadsOut = Field(..., description="Downloads of all its versions.")


class ModelList(Schema):
    models: list[ModelSummary] = described("Every model, by slug.", [])
