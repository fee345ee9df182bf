"""The "Use this model" box of the model and version pages: the lines a visitor copies to get one
version's files (shell, Python, PowerShell, curl of one file), built from its stable URLs.

Every block is safe to paste into an interactive shell: no `set -e`, and a failed refresh of the
saved client says so and carries on with the copy already there."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .links import VersionLinks
from .models import File, Version


@dataclass(frozen=True, slots=True)
class OneFile:
    path: str
    sha256: str
    stable_url: str


@dataclass(frozen=True, slots=True)
class UseBox:
    model: str
    version: str
    folder: str  # where the lines put the files, relative to the current directory
    shell: str
    python: str
    powershell: str
    curl: str
    file: OneFile | None


def main_file(version: Version, links: VersionLinks) -> OneFile | None:
    """The version's largest file (its weights, usually): the one the curl tab fetches. One query."""
    row = File.objects.filter(version=version).order_by("-size", "path").values_list("path", "sha256").first()
    return OneFile(row[0], row[1], links.file(row[0])) if row else None


def largest_of(files, links: VersionLinks) -> OneFile | None:
    """The same choice from files already loaded (the version page has them): no query."""
    file = min(files, key=lambda f: (-f.size, f.path), default=None)
    return OneFile(file.path, file.sha256, links.file(file.path)) if file else None


def shell_lines(links: VersionLinks) -> str:
    """The start-script lines: they keep a copy of the client beside the files, so a later start
    works with the site down."""
    folder = f"checkpoints/{links.model}/{links.version}"
    return (
        f'MODEL_DIR="{folder}"\n'
        f'mkdir -p "$MODEL_DIR" && curl -fsSL {links.client()} -o "$MODEL_DIR/.fetch-model.sh.new"'
        ' && mv "$MODEL_DIR/.fetch-model.sh.new" "$MODEL_DIR/.fetch-model.sh"'
        ' || echo "fetch-model: cannot refresh the client; using the saved copy" >&2\n'
        f'sh "$MODEL_DIR/.fetch-model.sh" {links.model} {links.version} "$MODEL_DIR"'
    )


def python_lines(links: VersionLinks) -> str:
    folder = f"checkpoints/{links.model}/{links.version}"
    return (
        f"curl -fsSL {links.python_client()} -o fetch_model.py.new && mv fetch_model.py.new fetch_model.py"
        ' || echo "fetch-model: cannot refresh the client; using the saved copy" >&2\n'
        f"python3 fetch_model.py {links.model} {links.version} {folder}"
    )


def powershell_lines(links: VersionLinks) -> str:
    return (
        f"Invoke-WebRequest {links.python_client()} -OutFile fetch_model.py\n"
        f"python fetch_model.py {links.model} {links.version} checkpoints\\{links.model}\\{links.version}"
    )


def curl_lines(file: OneFile | None, links: VersionLinks) -> str:
    """One file by its stable URL, then its SHA-256 checked (`sha256sum -c` reads the line)."""
    if file is None:
        return ""
    target = shlex.quote(file.path)
    return f"curl -fL --create-dirs -o {target} {file.stable_url}\necho {shlex.quote(f'{file.sha256}  {file.path}')} | sha256sum -c"


def use_box(version: Version, links: VersionLinks, file: OneFile | None) -> UseBox:
    return UseBox(
        model=links.model,
        version=links.version,
        folder=f"checkpoints/{links.model}/{links.version}",
        shell=shell_lines(links),
        python=python_lines(links),
        powershell=powershell_lines(links),
        curl=curl_lines(file, links),
        file=file,
    )
