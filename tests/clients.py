"""What the tests of both served clients share: the files of the version they fetch, the wrong
bodies a proxy or portal might send, and a way to read a folder back."""

import os
import subprocess
from pathlib import Path

FILES = {
    "model.pt": os.urandom(3 * 1024 * 1024),
    "config.yaml": b"sample_rate: 24000\n",
    "checkpoints/vocoder.bin": os.urandom(200_000),
    "empty.txt": b"",  # an empty file is a file too
}


WRONG_BODIES = {
    "captive portal": (
        b"<!doctype html><title>Sign in to the Wi-Fi</title>",
        "text/html",
        "the server sent an HTML page instead of the file",
    ),
    "empty": (b"", "application/octet-stream", "the server sent an empty body"),
    "short": (b"truncated", "application/octet-stream", "got 9 bytes, the site publishes"),
    "long": (b"x" * (len(FILES["config.yaml"]) + 1), "application/octet-stream", "got 20 bytes, the site publishes 19"),
    "other bytes": (b"y" * len(FILES["config.yaml"]), "application/octet-stream", "SHA-256 mismatch (got "),
}


RECORD = ".fetch-model.json"  # the Python client's note of what it fetched (checked on its own)


def tree(root):
    """Every file under root and its bytes (but the Python client's record)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root) != Path(RECORD)
    }


def run_process(command: list[str], *, env: dict | None = None, wait: bool = True):
    """A client run in a session of its own (so a test can kill it and its children): the finished
    run's CompletedProcess, or the running Popen when `wait` is false."""
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
