"""The one rule for a file's path: what the site accepts for a new file, so that every client can
write it on every platform (the served Python client carries the same rule; a test holds them to it).

Two checks, each answering with the problem (a phrase completing "File path 'x' ...") or None:

- `structure_problem`: a relative POSIX path that cannot climb out of its folder. Object keys, and
  the paths of files published before the portable rule, are held to this one only, so that those
  files stay downloadable (`manage.py list_unsafe_paths` lists them).
- `path_problem`: the structure, and names that Windows can hold (no device names, none of
  ``< > : " | ? *``, no segment ending in a dot or a space).

Both refuse text that cannot be stored: a lone surrogate has no UTF-8 form, for the database or
for any file system.
"""

from __future__ import annotations

MAX_PATH_LENGTH = 1024
FORBIDDEN_CHARACTERS = frozenset('<>:"|?*')
# Windows opens these as devices whatever the extension ("nul.txt" is NUL) or trailing spaces.
DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{digit}" for device in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"}
)


def _is_control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127


def structure_problem(path: str) -> str | None:
    """Whether ``path`` is relative, bounded, valid Unicode and free of empty, '.' and '..' segments."""
    if not path:
        return "is empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"is longer than {MAX_PATH_LENGTH} characters"
    if path.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in path:
        return "must not contain a backslash"
    if any(_is_control(char) for char in path):
        return "must not contain control characters"
    segments = path.split("/")
    if "" in segments:
        return "must not contain an empty segment ('//' or a trailing '/')"
    if any(segment in {".", ".."} for segment in segments):
        return "must not contain '.' or '..' segments"
    if not _encodable(path):
        return "is not valid Unicode (it holds a lone surrogate)"
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a new file's path, or None when every platform can hold it."""
    problem = structure_problem(path)
    if problem:
        return problem
    if forbidden := sorted(FORBIDDEN_CHARACTERS.intersection(path)):
        return f'must not contain {" ".join(forbidden)} (no name on Windows may hold any of < > : " | ? *)'
    for segment in path.split("/"):
        if segment.endswith((".", " ")):
            return f"has a name ending in a dot or a space ({segment!r}), which Windows drops"
        if device_name(segment):
            return f"uses the name {segment!r}, which Windows reserves for a device"
    return None


def device_name(segment: str) -> bool:
    """Whether Windows takes ``segment`` for a device: its part before the first dot, without
    trailing spaces, compared case-blind ("nul.txt", "Com1 .bin", "LPT\u00b9")."""
    return segment.split(".", 1)[0].rstrip(" ").upper() in DEVICE_NAMES


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
