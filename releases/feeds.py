"""Atom feeds of published, yanked and withdrawn versions: the whole site, and one per model.

Built with Django's syndication framework; cached like pages and purged with the same surrogate
keys (the site's feed with the index, a model's feed with the model, its 404 included).
"""

from __future__ import annotations

from django.contrib.syndication.views import Feed
from django.http import HttpResponse
from django.urls import reverse
from django.utils.feedgenerator import Atom1Feed
from django.utils.html import escape
from django.views.decorators.http import require_safe

from . import caching, selectors
from .links import site_url
from .models import Version

FEED_LENGTH = 50
SITE_AUTHOR = "Model Releases"
EVENT = {
    Version.Status.PUBLISHED: "released",
    Version.Status.YANKED: "yanked",
    Version.Status.WITHDRAWN: "withdrawn",
}


class ReleasesFeed(Feed):
    """Newest status changes first; one entry per version, in its current status."""

    feed_type = Atom1Feed

    def get_object(self, request, model_slug: str | None = None):
        self.site = site_url(request)
        if model_slug is None:
            return None
        return selectors.model_for_feed(model_slug)  # NotFound: model_feed answers it

    def title(self, model):
        return f"{model.name} releases" if model else "Model Releases"

    def subtitle(self, model):
        return model.summary if model and model.summary else "New, yanked and withdrawn model versions."

    def link(self, model):
        return self.site + (reverse("releases:model", args=[model.slug]) if model else reverse("releases:index"))

    def feed_url(self, model):
        return self.site + (reverse("releases:model-feed", args=[model.slug]) if model else reverse("releases:feed"))

    def items(self, model):
        return selectors.release_events(model.slug if model else None, FEED_LENGTH)

    def author_name(self, model):
        return model.name if model else SITE_AUTHOR

    def item_title(self, version):
        """What happened, said in the title, since readers show little else: a prerelease says so."""
        kind = " prerelease" if version.prerelease else ""
        return f"{version.model.name} {version.version}{kind} {EVENT[version.status]}"

    def item_author_name(self, version):
        return version.model.name  # RFC 4287: every entry has an author (the model's maintainers)

    def item_description(self, version):
        if version.status == Version.Status.WITHDRAWN:
            return "<p>This version was withdrawn; its files can no longer be downloaded.</p>"
        reason = f"<p>Yanked: {escape(version.yanked_reason)}</p>" if version.status == Version.Status.YANKED else ""
        return reason + (version.notes_html or "")  # sanitised when the notes were written

    def item_link(self, version):
        return self.site + reverse("releases:version", args=[version.model.slug, version.version])

    def item_guid(self, version):
        return f"{self.item_link(version)}#{version.status}"

    def item_pubdate(self, version):
        return version.published_at or version.updated_at

    def item_updateddate(self, version):
        return version.updated_at

    def item_categories(self, version):
        return [version.model.slug]


@require_safe
def site_feed(request):
    # One feed object per request: it holds the request's site address.
    return caching.cacheable(ReleasesFeed()(request), request, [caching.index_key()])


@require_safe
def model_feed(request, model_slug: str):
    try:
        response = ReleasesFeed()(request, model_slug=model_slug)
    except selectors.NotFound as error:
        # Feed readers poll a name before its first release: the 404 is cached like the feed, under
        # the model's key, which that first publish purges (so the feed appears at once).
        response = HttpResponse(f"{error}\n", status=404, content_type="text/plain; charset=utf-8")
    return caching.cacheable(response, request, [caching.model_key(model_slug)])
