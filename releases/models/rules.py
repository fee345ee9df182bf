"""The domain's rules that need no database: names, paths, version order, object keys, who sees drafts."""

import re
import unicodedata

from django.core.exceptions import ValidationError

from ..names import MAX_PATH_LENGTH as MAX_PATH_LENGTH  # the models' field length
from ..names import path_problem, structure_problem

VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
RESERVED_VERSIONS = frozenset({"latest"})
_DIGITS = re.compile(r"(\d+)")
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class ImmutableError(ValidationError):
    """A change to something that is published and therefore fixed."""


def validate_model_slug(value: str) -> None:
    if len(value) > 100 or not _SLUG.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a valid model name: use lower-case letters, digits and single hyphens (e.g. index-tts).",
            code="invalid_model_slug",
        )


def validate_tag(value: str) -> None:
    if len(value) > 50 or not _SLUG.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a valid tag: use lower-case letters, digits and single hyphens (e.g. text-to-speech).",
            code="invalid_tag",
        )


def validate_version_string(value: str) -> None:
    if not VERSION_PATTERN.fullmatch(value or ""):
        raise ValidationError(
            f"{value!r} is not a valid version: start with a letter or digit, then up to 63 of "
            "letters, digits, '.', '_', '+', '-' (e.g. v23, 2.0.1).",
            code="invalid_version",
        )
    if value.lower() in RESERVED_VERSIONS:
        raise ValidationError(f"{value!r} is reserved and cannot be a version.", code="reserved_version")


def validate_notes(value: str) -> None:
    """Within RELEASE_NOTES_MAX_BYTES and renderable (see rendering.py)."""
    from ..rendering import render_markdown

    render_markdown(value)


def canonical_path(value: str) -> str:
    """Paths are stored in Unicode NFC: "café.bin" typed on macOS (NFD) and on Linux (NFC) is one path."""
    return unicodedata.normalize("NFC", value)


def validate_relative_path(value: str, *, what: str = "path") -> None:
    """A new file's path: the one rule of names.py (relative, portable to every platform)."""
    _refuse(path_problem(value), value, what)


def _refuse(problem: str | None, value: str, what: str) -> None:
    if problem:
        raise ValidationError(f"File {what} {value!r} {problem}.", code=f"invalid_{what}")


def validate_object_key(key: str, model_slug: str) -> None:
    """Object keys stay inside the model's prefix, so one model never reaches another's objects."""
    _refuse(structure_problem(key), key, "key")  # a key is storage's name, never written to a user's disk
    if not key.startswith(f"{model_slug}/"):
        raise ValidationError(
            f"Object key {key!r} must start with the model's prefix {model_slug + '/'!r}.", code="key_outside_model"
        )


def natural_sort_key(version: str) -> str:
    """A string whose plain ordering is the natural order of versions.

    Each run of digits becomes its length (two digits) then the digits without
    leading zeros, so v9 < v10 < v23 and 1.2 < 1.10; letters compare case-blind.
    """

    def encode(match: re.Match) -> str:
        digits = match.group(1).lstrip("0") or "0"
        return f"{len(digits):02d}{digits}"

    # Hex of the bytes, so that every database collation orders it like the bytes
    # (some collations skip punctuation such as '.', '-' and '+').
    return _DIGITS.sub(encode, version.lower()).encode().hex()


def default_object_key(model_slug: str, version: str, path: str) -> str:
    return f"{model_slug}/{version}/{path}"


def user_sees_drafts(user) -> bool:
    """Drafts are for maintainers who may view versions in the admin (view_version): a staff flag
    alone shows nothing more than the public sees."""
    return bool(
        user is not None
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
        and user.has_perm("releases.view_version")
    )
