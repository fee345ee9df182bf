"""Byte counts as people read them: binary units labelled as such (KiB, MiB, GiB), one choice for
pages, the admin and the commands, so the same file never shows as both "200.0 MiB" and "200.0 MB"."""

from __future__ import annotations

UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def binary_size(size: int) -> str:
    """`3_000_000` -> "2.9 MiB"; under 1 KiB the exact count ("512 bytes")."""
    size = int(size)
    if abs(size) < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = float(size)
    for unit in UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
