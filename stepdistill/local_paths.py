"""No paths of this machine in what a run publishes: the command line quoted in results and model cards has
them replaced (a file of the checkout by its path in the checkout, any other by `<local>/NAME`), and an upload
refuses a folder whose text mentions one, as it refuses one holding the hub token."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: its files are quoted by their path in it
# An absolute path, not the path part of a URL (`https://host/a/b`: preceded by ':' or '/').
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])(?:~|/)(?:/?[\w.+@-]+)+/?")


def _public(value: str) -> str:
    if not (value.startswith("/") or value.startswith("~")):
        return value
    path = Path(os.path.expanduser(value))
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return f"<local>/{path.name}" if path.name else "<local>"


def public_token(token: str) -> str:
    """One command-line token with a local path replaced (`key=/abs/x` -> `key=<local>/x`)."""
    key, eq, value = token.partition("=")
    return f"{key}={_public(value)}" if eq and not key.startswith("/") else _public(token)


def public_command(argv: list[str] | None = None, launcher: str = "accelerate launch") -> str:
    """The command that ran (`sys.argv`), as it can be published."""
    return " ".join([launcher, *(public_token(t) for t in (sys.argv if argv is None else argv))])


def local_paths(text: str) -> list[str]:
    """The absolute paths of this machine in `text`: each one that exists here, or whose folder does (at least
    two levels down, so `/usr` in prose or `/v1` in an API path do not count)."""
    found = []
    for match in _ABSOLUTE.finditer(text):
        path = Path(os.path.expanduser(match.group(0).rstrip("/.")))
        parents = [path, *path.parents]
        if any(len(p.parts) >= 3 and p.exists() for p in parents) and match.group(0) not in found:
            found.append(match.group(0))
    return found


def files_with_local_paths(folder: str | Path) -> dict[str, list[str]]:
    """{file relative to `folder`: its local paths} for every text file in `folder` that mentions one."""
    folder = Path(folder)
    hits = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.stat().st_size > 10_000_000:
            continue
        try:
            text = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # weights and other binary files
        paths = local_paths(text)
        if paths:
            hits[str(p.relative_to(folder))] = paths
    return hits
