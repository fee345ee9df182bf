"""docs/benchmarks.md as `make bench` rewrites it: the opening paragraph, the table and the profile
section are the run's; every other section (written by hand from other runs, or by `make load`) is
kept as it was, in its place. A `BENCH_ONLY=uploads` run replaces only the publish rows and the
profile section."""

from __future__ import annotations

PROFILE_HEADING = "## Where a publish's time goes"
UPLOAD_ROWS = ("| publish_release", "| what one", "| tasks the worker")  # the rows BENCH_ONLY=uploads writes


def sections(report: str) -> tuple[str, list[str]]:
    """The text before the first `## ` heading, and each section from its heading to the next."""
    head, *rest = ("\n" + report).split("\n## ")
    return head.lstrip("\n"), ["## " + section for section in rest]


def joined(head: str, parts: list[str]) -> str:
    return "\n".join(part.rstrip("\n") + "\n" for part in [head, *parts] if part.strip())


def with_section(report: str, section: str) -> str:
    """`report` with `section` (from its `## ` heading on) where the section of that heading was, or
    at the end when it had none."""
    heading = section.split("\n", 1)[0]
    head, parts = sections(report)
    if any(part.split("\n", 1)[0] == heading for part in parts):
        return joined(head, [section if part.split("\n", 1)[0] == heading else part for part in parts])
    return joined(head, [*parts, section])


def full_report(old: str | None, intro: str, table: str, profile: str) -> str:
    """A whole run's report: the new opening and table, `old`'s sections kept in their places, and its
    profile section replaced by `profile` (dropped when the run made none)."""
    kept = [part for part in (sections(old)[1] if old else []) if profile or not part.startswith(PROFILE_HEADING)]
    report = joined(f"# Benchmarks\n\n{intro}\n\n{table}\n", kept)
    return with_section(report, profile) if profile else report


def with_upload_rows(report: str, table: str, profile: str, header: str) -> str:
    """`report` with its publish rows replaced by those of `table` (a BENCH_ONLY=uploads run) and its
    profile section by `profile`, dated with `header`."""
    new_rows = [line for line in table.splitlines() if line.startswith(UPLOAD_ROWS)]
    lines, placed = [], False
    for line in report.splitlines():
        if line.startswith(UPLOAD_ROWS):
            if not placed:
                lines += new_rows
                placed = True
            continue
        lines.append(line)
    result = "\n".join(lines) + "\n"
    if not profile:
        return result
    return with_section(result, profile.replace("\n\nOne ", f"\n\nThe publish rows above: {header}. One ", 1))
