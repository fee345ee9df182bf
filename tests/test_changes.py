"""What changed between two versions' files."""

from releases.changes import Changed, FileState, compare


def state(path, size, digest):
    return FileState(path, size, digest * 64)


def test_added_removed_and_changed_by_sha256_with_sizes():
    before = [state("a.bin", 10, "a"), state("b.bin", 20, "b"), state("same.txt", 5, "s")]
    after = [state("a.bin", 15, "c"), state("c.bin", 7, "d"), state("same.txt", 5, "s")]
    changes = compare("v1", before, after)
    assert changes.previous == "v1"
    assert changes.added == [state("c.bin", 7, "d")]
    assert changes.removed == [state("b.bin", 20, "b")]
    assert changes.changed == [Changed("a.bin", 10, 15)] and changes.changed[0].size_difference == 5
    assert changes.unchanged == 1 and changes.any
    assert changes.size_difference == 7 - 20 + 5
    assert changes.as_json() == {"previous": "v1", "added": ["c.bin"], "removed": ["b.bin"], "changed": ["a.bin"]}


def test_a_file_with_the_same_size_but_other_bytes_is_changed():
    changes = compare("v1", [state("m.pt", 10, "a")], [state("m.pt", 10, "b")])
    assert [file.path for file in changes.changed] == ["m.pt"] and changes.size_difference == 0


def test_identical_versions_change_nothing():
    files = [state("m.pt", 10, "a")]
    changes = compare("v1", files, files)
    assert not changes.any and changes.unchanged == 1


def test_the_first_version_has_nothing_to_compare_with():
    changes = compare(None, [], [state("m.pt", 10, "a")])
    assert changes.previous is None and not changes.any
    assert changes.as_json() == {"previous": None, "added": [], "removed": [], "changed": []}
