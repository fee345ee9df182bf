"""What changed between two versions' files: added, removed and changed paths (by SHA-256), with
the size differences. Pure: the selectors read the rows, pages and API show the result."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FileState:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Changed:
    path: str
    size_before: int
    size_after: int

    @property
    def size_difference(self) -> int:
        return self.size_after - self.size_before


@dataclass(frozen=True, slots=True)
class Changes:
    previous: str | None  # the version compared with; None when there is none
    added: list[FileState] = field(default_factory=list)
    removed: list[FileState] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)
    unchanged: int = 0

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @property
    def size_difference(self) -> int:
        return (
            sum(file.size for file in self.added)
            - sum(file.size for file in self.removed)
            + sum(file.size_difference for file in self.changed)
        )

    def as_json(self) -> dict:
        """The API's `changes`: paths only, as the contract says."""
        return {
            "previous": self.previous,
            "added": [file.path for file in self.added],
            "removed": [file.path for file in self.removed],
            "changed": [file.path for file in self.changed],
        }


def compare(previous: str | None, before: list[FileState], after: list[FileState]) -> Changes:
    """Changes from `before` (the files of version `previous`) to `after`, each list in path order."""
    if previous is None:
        return Changes(previous=None)
    old = {file.path: file for file in before}
    new = {file.path: file for file in after}
    changed = [
        Changed(path, old[path].size, new[path].size)
        for path in sorted(old.keys() & new.keys())
        if old[path].sha256 != new[path].sha256
    ]
    return Changes(
        previous=previous,
        added=[new[path] for path in sorted(new.keys() - old.keys())],
        removed=[old[path] for path in sorted(old.keys() - new.keys())],
        changed=changed,
        unchanged=len(old.keys() & new.keys()) - len(changed),
    )
