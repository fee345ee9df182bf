"""How `make bench`, `BENCH_ONLY=uploads make bench` and `make load` rewrite docs/benchmarks.md:
each replaces what its run measured and keeps every other section, the ones written by hand
included, where it was. Checked on the shipped report itself."""

import sys

import pytest

from .servers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import report  # noqa: E402  bench/report.py: plain functions, none of the bench's servers

SHIPPED = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
TABLE = "| measure | result | target | met |\n| --- | --- | --- | --- |\n| publish_release: new row | 1 s | x | yes |"
PROFILE = f"{report.PROFILE_HEADING}\n\nOne `publish_release` of the 1 GiB file, new profile.\n"


def headings(text: str) -> list[str]:
    return [part.split("\n", 1)[0] for part in report.sections(text)[1]]


def section(text: str, heading: str) -> str:
    return next(part for part in report.sections(text)[1] if part.startswith(heading))


@pytest.fixture
def hand_written() -> list[str]:
    """The shipped report's sections that no bench run writes."""
    written = (report.PROFILE_HEADING, "## Load")
    found = [heading for heading in headings(SHIPPED) if not heading.startswith(written)]
    assert len(found) >= 3, found  # the client-life, image and publish-limits sections
    return found


def test_a_full_run_replaces_its_table_and_profile_and_keeps_every_other_section_in_place(hand_written):
    rewritten = report.full_report(SHIPPED, "Run of today.", TABLE, PROFILE)
    assert rewritten.startswith(f"# Benchmarks\n\nRun of today.\n\n{TABLE}\n")
    assert headings(rewritten) == headings(SHIPPED)
    for heading in [*hand_written, "## Load"]:
        assert section(rewritten, heading).rstrip() == section(SHIPPED, heading).rstrip(), heading
    assert section(rewritten, report.PROFILE_HEADING) == PROFILE
    assert "| signing: boto3" not in rewritten  # the old table is gone


def test_an_uploads_run_replaces_only_the_publish_rows_and_the_profile(hand_written):
    rewritten = report.with_upload_rows(SHIPPED, TABLE, PROFILE, "Run of today")
    assert [line for line in rewritten.splitlines() if line.startswith(report.UPLOAD_ROWS)] == [TABLE.splitlines()[-1]]
    assert "| signing: boto3" in rewritten and headings(rewritten) == headings(SHIPPED)
    assert "The publish rows above: Run of today. One `publish_release`" in section(rewritten, report.PROFILE_HEADING)
    for heading in [*hand_written, "## Load"]:
        assert section(rewritten, heading).rstrip() == section(SHIPPED, heading).rstrip(), heading


def test_a_load_run_replaces_its_section_in_place_or_adds_it():
    load = "## Load\n\nWritten by `make load` (bench/load.py).\n\nnew figures\n"
    rewritten = report.with_section(SHIPPED, load)
    assert headings(rewritten) == headings(SHIPPED) and section(rewritten, "## Load") == load
    assert report.with_section("# Benchmarks\n", load) == f"# Benchmarks\n\n{load}"
