"""What an unknown name could have meant: the closest model slugs (did you mean), a model's versions
when the version is unknown, and the stored spelling of a version named in another case (versions
are case-blind, as the admin's unique constraint treats them: `V23` is `v23`).

Asked only on the error path, so the queries here never cost a page that exists."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .models import MLModel, Version

MAX_SLUGS = 5000  # the names compared for "did you mean"; a catalogue is far smaller
MAX_LISTED_VERSIONS = 12


@dataclass(frozen=True)
class Suggestions:
    """What an error page and an API `detail` add to "there is no ...": plain names, no URLs."""

    models: list[str] = field(default_factory=list)  # closest slugs to an unknown model
    model: str = ""  # the known model whose version was not found
    versions: list[str] = field(default_factory=list)  # its visible versions, newest first
    latest: str | None = None

    def sentence(self) -> str:
        if self.models:
            return "Did you mean " + " or ".join(repr(slug) for slug in self.models) + "?"
        if self.versions:
            shown = ", ".join(self.versions[:MAX_LISTED_VERSIONS])
            more = (
                f" and {len(self.versions) - MAX_LISTED_VERSIONS} more"
                if len(self.versions) > MAX_LISTED_VERSIONS
                else ""
            )
            latest = f" (latest: {self.latest})" if self.latest else ""
            return f"Its versions: {shown}{more}{latest}."
        return ""


def for_missing(slug: str, version: str | None, user) -> Suggestions:
    """Close model slugs when `slug` names no model `user` may see; else that model's versions."""
    if not usable(slug) or (version and not usable(version)):
        return Suggestions()  # NUL, surrogates, novels: nothing to compare, and PostgreSQL refuses NUL
    visible = MLModel.objects.visible_to(user)
    model = visible.filter(slug=slug).first()
    if model is None:
        slugs = list(visible.order_by("slug").values_list("slug", flat=True)[:MAX_SLUGS])
        return Suggestions(models=closest(slug.lower(), slugs))
    if version is None:
        return Suggestions()
    versions = Version.objects.visible_to(user).filter(model=model).natural_order()
    names = [name for name, status in versions.values_list("version", "status") if status != Version.Status.WITHDRAWN]
    latest = Version.objects.latest_for(model)
    return Suggestions(model=slug, versions=names, latest=latest.version if latest else None)


def usable(name: str) -> bool:
    """Whether a name from a URL is worth comparing at all: short, printable, not empty."""
    return bool(name) and len(name) <= 100 and name.isprintable()


def closest(name: str, candidates: list[str], limit: int = 3) -> list[str]:
    """The candidates that read most like `name` (difflib's ratio), best first; a candidate that
    starts with or contains `name` counts too (`index` finds `index-tts`)."""
    close = difflib.get_close_matches(name, candidates, n=limit, cutoff=0.6)
    if len(close) < limit and len(name) >= 3:
        close += [c for c in candidates if name in c and c not in close][: limit - len(close)]
    return close


def stored_spelling(slug: str, version: str, user) -> str | None:
    """The version's own name when `version` names it in another case (`V23` -> `v23`), if `user` may
    see it; None when there is no such version or the spelling is already exact. One query."""
    if not usable(slug) or not usable(version) or version.lower() == "latest":
        return None
    found = (
        Version.objects.visible_to(user)
        .filter(model__slug=slug, version__iexact=version)
        .values_list("version", flat=True)
        .first()
    )
    return found if found is not None and found != version else None


def withdrawal_reason(slug: str, version: str) -> str:
    """Why a withdrawn version was withdrawn, when the maintainer said (kept in `yanked_reason`)."""
    if not usable(slug) or not usable(version):
        return ""
    found = Version.objects.filter(model__slug=slug, version=version, status=Version.Status.WITHDRAWN)
    return found.values_list("yanked_reason", flat=True).first() or ""
