"""Absolute public URLs, built from SITE_URL when set, else from the request's host; and the
one builder of a version's file links (signed and stable) that pages and the API share."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from django.conf import settings
from django.urls import reverse

from .signing import signer


def site_url(request) -> str:
    """The site's public origin, without a trailing slash."""
    return settings.SITE_URL or f"{request.scheme}://{request.get_host()}"


def download_base(request) -> str:
    """Where signed links to the site's own files point: the CDN when there is one."""
    return settings.CDN_BASE_URL or site_url(request)


def absolute(request, path: str) -> str:
    return site_url(request) + path


class VersionLinks:
    """Stable URLs of one resolved version (never `latest`), cheap to build per file."""

    def __init__(self, request, model_slug: str, version: str):
        self.base = site_url(request)
        self.model, self.version = model_slug, version
        self._file_prefix = self.base + reverse("releases:version", args=[model_slug, version])
        # chunks/<sha256>: its prefix once, rather than a reverse() per file
        self._chunks_prefix = self.base + reverse("releases:chunks", args=["-"]).removesuffix("-")

    def page(self) -> str:
        return self._file_prefix

    def file(self, path: str) -> str:
        return self._file_prefix + quote(path, safe="/")

    def chunks(self, sha256: str) -> str:
        """The stable URL of the chunk manifest of a file with these bytes."""
        return self._chunks_prefix + sha256

    def api(self) -> str:
        return self.base + reverse("api-1:version", kwargs={"model": self.model, "version": self.version})

    def sha256sums(self) -> str:
        return self.base + reverse("api-1:sha256sums", kwargs={"model": self.model, "version": self.version})

    def client(self) -> str:
        return self.base + "/fetch-model.sh"

    def python_client(self) -> str:
        return self.base + "/fetch_model.py"


@dataclass(slots=True)  # not frozen: a page builds fifty, and frozen dataclasses are slower to build
class FileLinks:
    path: str
    size: int
    sha256: str
    url: str  # signed, absolute
    expires_at: str  # ISO 8601 with Z
    stable_url: str
    chunks_url: str | None = None  # absolute; None when the file has no chunk manifest

    def as_json(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "url": self.url,
            "expires_at": self.expires_at,
            "stable_url": self.stable_url,
            "chunks_url": self.chunks_url,
        }


def file_links(request, files, links: VersionLinks) -> list[FileLinks]:
    """Each file with a freshly signed link, its stable URL and its chunk manifest's stable URL."""
    sign, base = signer().link, download_base(request)
    rows = []
    for file in files:
        link = sign(file.key, file.name, base_url=base)
        chunks = links.chunks(file.sha256) if file.chunks_size else None
        rows.append(
            FileLinks(file.path, file.size, file.sha256, link.url, link.expires_at_iso, links.file(file.path), chunks)
        )
    return rows
