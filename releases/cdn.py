"""The only module that talks to a CDN: purge by surrogate key (or by path), and warm files.

Backends, chosen by CDN_BACKEND; each configured cache is one *target* that a purge must reach:
* ``none``: nothing to purge.
* ``varnish``: one target per address in CDN_PURGE_URL (several caches: every one is purged), each
  sent HTTP PURGE with the keys in `xkey-purge` and the site's secret in `X-Purge-Token` (the
  shipped VCL refuses purges without it).
* ``fastly``: the purge-by-surrogate-key API, batched, soft purge.
* ``cloudfront``: an invalidation of the paths the keys cover (wildcards that another wildcard of the
  same batch covers are left out: CloudFront allows only 15 wildcard paths in progress).
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings

from . import aws
from .models import File
from .signing import signer

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class CdnError(Exception):
    """The CDN refused or could not be reached; str() says which and why."""


class Cdn:
    name = "none"
    keys_per_request = 256

    @property
    def target(self) -> str:
        """Which cache this is, as recorded on an outbox entry once the cache has been purged."""
        return self.name

    def purge(self, keys: list[str], paths: list[str]) -> int:
        """Purge what the keys (or, for path-based CDNs, the paths) cover; returns requests sent."""
        return 0


def _http(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=settings.CDN_TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise CdnError(f"{method} {url} answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        raise CdnError(f"{method} {url} failed: {getattr(error, 'reason', error)!s}") from error


def _batches(items: list[str], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VarnishCdn(Cdn):
    name = "varnish"
    keys_per_request = 100

    def __init__(self, purge_url: str, token: str = ""):
        self.purge_url, self.token = purge_url, token

    @property
    def target(self) -> str:
        return self.purge_url

    def purge(self, keys, paths):
        sent = 0
        for batch in _batches(keys, self.keys_per_request):
            _http("PURGE", self.purge_url + "/", {"xkey-purge": " ".join(batch), "X-Purge-Token": self.token})
            sent += 1
        return sent


class FastlyCdn(Cdn):
    """POST /service/<id>/purge with a Surrogate-Key header of up to 256 keys (Fastly's batch purge)."""

    name = "fastly"

    def __init__(self, api_url: str, service_id: str, api_token: str, soft: bool = True):
        self.api_url, self.service_id, self.api_token, self.soft = api_url.rstrip("/"), service_id, api_token, soft

    @property
    def target(self) -> str:
        return f"fastly:{self.service_id}"

    def purge(self, keys, paths):
        sent = 0
        for batch in _batches(keys, self.keys_per_request):
            headers = {"Fastly-Key": self.api_token, "Surrogate-Key": " ".join(batch), "Accept": "application/json"}
            if self.soft:
                headers["Fastly-Soft-Purge"] = "1"
            answer = _http("POST", f"{self.api_url}/service/{self.service_id}/purge", headers)
            try:
                json.loads(answer or b"{}")
            except ValueError as error:
                raise CdnError(f"Fastly answered something that is not JSON: {answer[:80]!r}") from error
            sent += 1
        return sent


class CloudFrontCdn(Cdn):
    """One invalidation per purge, listing the paths the keys cover."""

    name = "cloudfront"
    paths_per_request = 3000  # CloudFront's limit per invalidation

    def __init__(self, distribution_id: str):
        self.distribution_id = distribution_id

    @property
    def target(self) -> str:
        return f"cloudfront:{self.distribution_id}"

    def purge(self, keys, paths):
        client = aws.client("cloudfront", keys=aws.site_keys(), endpoint_url=settings.AWS_CLOUDFRONT_ENDPOINT_URL)
        sent = 0
        for batch in _batches(uncovered(paths), self.paths_per_request):
            with aws.translated_errors("create a CloudFront invalidation", CdnError):
                client.create_invalidation(
                    DistributionId=self.distribution_id,
                    InvalidationBatch={
                        "Paths": {"Quantity": len(batch), "Items": batch},
                        "CallerReference": f"model-releases-{uuid.uuid4()}",
                    },
                )
            sent += 1
        return sent


def uncovered(paths: list[str]) -> list[str]:
    """The paths, sorted, without those a wildcard path among them already covers
    (CloudFront's `*` stands for any characters, the query string included, and only ends a path)."""
    unique = sorted(set(paths))
    wildcards = [path[:-1] for path in unique if path.endswith("*")]
    return [
        path for path in unique if not any(path != prefix + "*" and path.startswith(prefix) for prefix in wildcards)
    ]


def backends() -> list[Cdn]:
    """Every cache a purge must reach (none for CDN_BACKEND=none)."""
    if settings.CDN_BACKEND == "varnish":
        return [VarnishCdn(url, settings.CDN_PURGE_TOKEN) for url in settings.CDN_PURGE_URL.split(",") if url]
    if settings.CDN_BACKEND == "fastly":
        return [FastlyCdn(settings.FASTLY_API_URL, settings.FASTLY_SERVICE_ID, settings.FASTLY_API_TOKEN)]
    if settings.CDN_BACKEND == "cloudfront":
        return [CloudFrontCdn(settings.CLOUDFRONT_DISTRIBUTION_ID)]
    return []


def purge_each(work: list[tuple[Cdn, list[str], list[str]]]) -> list[str | None]:
    """Send each (cache, keys, paths) its purge, all at once so that a cache that hangs until
    CDN_TIMEOUT delays no other; returns an error (or None) for each, in order."""

    def send(item: tuple[Cdn, list[str], list[str]]) -> str | None:
        target, keys, paths = item
        try:
            target.purge(keys, paths)
        except CdnError as error:
            return str(error)
        return None

    if len(work) < 2:
        return [send(item) for item in work]
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        return list(pool.map(send, work))


def object_paths(files) -> list[str]:
    """The paths at which the CDN itself keeps these files' objects: only when downloads are
    CloudFront-signed links to the distribution (which caches storage's bytes by path). With any other
    signer the bytes the CDN keeps are the site's own `/files/` answers, purged by their version's key."""
    if settings.CDN_BACKEND != "cloudfront" or signer().name != "cloudfront":
        return []
    return sorted({urllib.parse.urlsplit(warm_url(file)).path for file in files})


# --- warming ------------------------------------------------------------------------------------


def warming_enabled() -> bool:
    """Only when downloads are served through the CDN: CDN_BASE_URL is set and links point at it."""
    return bool(settings.CDN_BACKEND != "none" and settings.CDN_BASE_URL and signer().name in {"local", "cloudfront"})


def warm_url(file: File) -> str:
    """The link a downloader gets in this window, on the CDN: the very URL the CDN will cache."""
    return signer().link(file.key, file.name, base_url=settings.CDN_BASE_URL).url


def warm_one(file: File) -> str | None:
    """Fetch the file through the CDN, streamed and discarded; returns an error or None."""
    url = warm_url(file)
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=settings.CDN_TIMEOUT) as response:
            while chunk := response.read(CHUNK):
                received += len(chunk)
    except urllib.error.HTTPError as error:
        return f"GET {url.split('?')[0]} answered {error.code} {error.reason}"
    except Exception as error:  # a dropped stream, a bad address: an error to retry, never a crash
        return f"GET {url.split('?')[0]} failed: {getattr(error, 'reason', None) or error!s}"
    if received != file.size:
        return f"GET {url.split('?')[0]} gave {received} bytes, expected {file.size}"
    return None


def warm_files(files: list[File]) -> dict[int, str | None]:
    """Warm files with bounded concurrency; {file id: error or None}."""
    if not files:
        return {}
    with ThreadPoolExecutor(max_workers=settings.WARM_CONCURRENCY) as pool:
        return dict(zip([f.pk for f in files], pool.map(warm_one, files), strict=True))
