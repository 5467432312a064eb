"""Atomic writes: nothing already on disk is lost if a run dies half-way through saving."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    The old folder is moved aside first and deleted only after the new one is in place, so a crash
    at any point leaves either the old or the new folder complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line (its type when it has no text), for one-line messages."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


def check_safetensors(path: str | Path) -> Path:
    """`path`, after checking that it is a complete safetensors file (its header and the data it describes;
    nothing is loaded); a missing, cut or foreign file is one ValueError naming it."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as e:  # safetensors' SafetensorError (not an OSError), OSError
        raise ValueError(f"{path}: truncated or not a safetensors file ({first_line(e)})") from None
    return path
