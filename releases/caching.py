"""HTTP caching policy for pages and API responses, and the surrogate keys a CDN purges by.

Responses that carry signed links may stay in shared caches for at most half
of SIGNED_URL_TTL, so a cached copy never hands out a link with less than
half its life left. Maintainers see drafts, so what anyone signed in sees is
never shared.
"""

from django.conf import settings
from django.utils.cache import patch_cache_control

BROWSER_MAX_AGE = 60  # seconds; browsers cannot be purged, so keep it short


def index_key() -> str:
    return "models"


def model_key(slug: str) -> str:
    return f"model-{slug}"


def version_key(slug: str, version: str) -> str:
    return f"version-{slug}-{version}"


def shared_max_age() -> int:
    return max(settings.SIGNED_URL_TTL // 2, 0)


def cacheable(response, request, keys: list[str]):
    """Mark a page or API response cacheable by shared caches, tagged with surrogate keys.

    Anyone signed in may see drafts or their own name: what they get is never shared."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        patch_cache_control(response, private=True, no_cache=True)
        return response
    s_maxage = shared_max_age()
    patch_cache_control(response, public=True, max_age=min(BROWSER_MAX_AGE, s_maxage), s_maxage=s_maxage)
    tags = " ".join(keys)
    response["xkey"] = tags  # Varnish xkey vmod
    response["Surrogate-Key"] = tags  # Fastly
    return response


def cacheable_bytes(response, file, expires: int, now: int):
    """File bytes behind a signed link. Published bytes never change, so caches may keep them until
    the link expires, tagged with their version's key: withdrawing the version purges them. A draft's
    bytes are for the staff member who asked, never stored."""
    if file.version.is_draft:
        patch_cache_control(response, private=True, no_store=True)
        return response
    patch_cache_control(response, public=True, max_age=max(expires - now, 0), immutable=True)
    tag = version_key(file.version.model.slug, file.version.version)
    response["xkey"] = tag
    response["Surrogate-Key"] = tag
    return response


def cacheable_manifest(response, public: bool, expires: int, now: int):
    """A chunk manifest's bytes behind a signed link: content-addressed, so caches may keep them until
    the link expires, unless only drafts have the file (like a draft's bytes, never stored)."""
    if not public:
        patch_cache_control(response, private=True, no_store=True)
        return response
    patch_cache_control(response, public=True, max_age=max(expires - now, 0), immutable=True)
    return response


def uncacheable(response):
    """Redirects to signed links and error responses for clients: never stored."""
    patch_cache_control(response, no_store=True)
    return response


def stale_after_change(model_slug: str, version: str | None = None, objects: list[str] = ()) -> dict[str, list[str]]:
    """What a change makes stale, as surrogate keys with the URL paths each one covers.

    The one definition of staleness. Publishing a version of a model makes
    stale the index and everything of the model: its page, its `latest` pages
    and API responses, and every version page (they show which one is latest).
    A change to one version (yank, restore, withdraw, new notes) adds that
    version's own pages and the bytes of its files served by the site, and
    `objects`: the paths at which the CDN itself keeps the version's objects
    (CloudFront-signed downloads of a withdrawn or deleted version).

    Paths are for CDNs that purge by path (CloudFront), whose cache keys
    include the query string: `PATH?*` covers every query of a page
    (`/?q=`, `/?tag=`, `/?sort=`), and `PREFIX/*` covers those below it.
    Stable URLs are never cached (no-store) but are listed for completeness.
    """
    stale = {
        index_key(): ["/", "/?*", "/api/v1/models", "/api/v1/models?*", "/feeds/releases.atom"],
        model_key(model_slug): [
            f"/models/{model_slug}/*",
            f"/api/v1/models/{model_slug}",
            f"/api/v1/models/{model_slug}?*",
            f"/api/v1/models/{model_slug}/*",
        ],
    }
    if version is not None:
        stale[version_key(model_slug, version)] = [
            f"/models/{model_slug}/{version}/*",
            f"/api/v1/models/{model_slug}/versions/{version}",
            f"/api/v1/models/{model_slug}/versions/{version}/*",
            f"/files/{model_slug}/{version}/*",
            *objects,
        ]
    return stale
