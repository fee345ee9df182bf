"""`binary_size`: byte counts in KiB, MiB, GiB (releases.sizes), for templates."""

from django import template

from ..sizes import binary_size as _binary_size

register = template.Library()


@register.filter
def binary_size(size) -> str:
    return _binary_size(size or 0)
