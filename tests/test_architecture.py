"""The shape of the code: no import cycles in releases/ (imports inside functions count too),
modules of a readable size, and third-party SDKs only where their concern lives."""

import ast
from pathlib import Path

import pytest

from .servers import REPO_ROOT

APP = REPO_ROOT / "releases"
MAX_LINES = 420  # "about 400"
# The served Python client is one file by contract (users save it beside their app), so it is
# held to a limit of its own: raised from 900 when it took on the record of what it verified,
# offline starts, bounded reads of every answer, subsets and adaptive connections, and from 1300
# for run reports (counted, sent, or kept in DEST_DIR for the next run), which cannot live in a
# second module.
CLIENT_MAX_LINES = 1450


def modules() -> dict[str, Path]:
    found = {}
    for path in APP.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The releases.* modules that `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for neighbour in sorted(graph[node]):
            if state.get(neighbour) == "open":
                return stack[stack.index(neighbour) :] + [neighbour]
            if neighbour not in state and (cycle := visit(neighbour)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_of_releases_has_no_cycle():
    known = modules()
    graph = {name: imports_of(name, path, set(known)) - {name} for name, path in known.items()}
    # A package's __init__ re-exports its own modules; that is not a cycle through the package.
    for name in graph:
        graph[name] = {target for target in graph[name] if not name.startswith(target + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_readable(name):
    lines = len(modules()[name].read_text().splitlines())
    limit = CLIENT_MAX_LINES if name == "releases.client.fetch_model" else MAX_LINES
    assert lines <= limit, f"{name} has {lines} lines"


@pytest.mark.parametrize("sdk", ["boto3", "botocore", "storages"])
def test_only_storage_and_aws_touch_the_aws_sdks(sdk):
    allowed = {"releases.aws", "releases.checks"} | {name for name in modules() if name.startswith("releases.storage")}
    users = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(imported == sdk or imported.startswith(sdk + ".") for imported in names):
                users.add(name)
    assert users <= allowed, users - allowed
