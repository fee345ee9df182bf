"""Byte ranges as RFC 9110 defines them: the pure rules, then through the file server."""

import pytest

from releases.http_ranges import ByteRange, Unsatisfiable, requested_range

ETAG = '"abc"'


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=90-", 100, ByteRange(90, 99)),
        ("bytes=90-500", 100, ByteRange(90, 99)),  # the last position is clamped to the file
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=-500", 100, ByteRange(0, 99)),  # a suffix longer than the file: all of it
        (" bytes=1-2 ", 100, ByteRange(1, 2)),
        ("bytes=5-3", 100, None),  # invalid: ignored, the whole file
        ("bytes=1-2,5-6", 100, None),  # several ranges: the whole file
        ("lines=1-2", 100, None),
        ("bytes=-", 100, None),
        ("bytes=\uff11-2", 100, None),  # full-width digits are not digits here
        ("", 100, None),
    ],
)
def test_ranges_that_can_be_served(header, size, expected):
    assert requested_range("GET", header, "", ETAG, size) == expected


@pytest.mark.parametrize(
    "header, size", [("bytes=100-200", 100), ("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_ranges_no_byte_of_which_exists_are_unsatisfiable(header, size):
    with pytest.raises(Unsatisfiable):
        requested_range("GET", header, "", ETAG, size)


@pytest.mark.parametrize(
    "if_range, served",
    [(ETAG, ByteRange(0, 9)), ('"stale"', None), (f"W/{ETAG}", None), ("Sat, 28 Nov 2026 05:00:00 GMT", None)],
    ids=["current etag", "stale etag", "weak etag", "a date"],
)
def test_if_range_sends_the_range_only_for_the_current_entity(if_range, served):
    assert requested_range("GET", "bytes=0-9", if_range, ETAG, 100) == served


def test_range_applies_to_get_only():
    assert requested_range("HEAD", "bytes=0-9", "", ETAG, 100) is None
