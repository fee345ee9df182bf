"""Byte ranges for the local backend's file server, as RFC 9110 (section 14) defines them.

One range per request (a multi-range request is answered with the whole file, which the
RFC allows); `If-Range` honoured with a strong comparison against the file's ETag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})", re.ASCII)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive


class Unsatisfiable(Exception):
    """416: no byte of the requested range exists."""


def requested_range(method: str, range_header: str, if_range: str, etag: str, size: int) -> ByteRange | None:
    """The range to send, None for the whole file, or Unsatisfiable.

    Range applies to GET only; a range that cannot be parsed, or an If-Range that does not
    match the current ETag exactly (dates never match: no Last-Modified is sent), means the
    whole file.
    """
    if method != "GET" or not range_header:
        return None
    if if_range and if_range.strip() != etag:
        return None
    match = _RANGE.fullmatch(range_header.strip())
    if not match or not any(match.groups()):
        return None
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored, the whole file
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)
