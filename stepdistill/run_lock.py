"""One run per output folder: a lock file (`OUTPUT/.run.lock`, the holder's pid and host) taken before the
run writes anything, released when it ends. A second run in the same folder is refused with one line; a lock
left by a process that is no longer running on this host is taken over with a note. A lock from another host
cannot be checked from here, so it is refused with the file to delete once that run is known to be dead."""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_FILE = ".run.lock"


class FolderInUse(FileExistsError):
    """Another live run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None  # half-written by a process killed while taking it: stale


def acquire(folder: str | Path) -> Path:
    """Take `folder`'s run lock for this process (again, if it already holds it); returns the lock file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and (holder["pid"], holder.get("host")) == (me["pid"], me["host"]):
                return path  # this process already runs here (a second run in one Python session)
            if holder is not None and (holder.get("host") != me["host"] or _alive(holder["pid"])):
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("since", 0)))
                where = "" if holder.get("host") == me["host"] else f" on host {holder.get('host')}"
                raise FolderInUse(f"{folder} is in use by another run (pid {holder['pid']}{where}, since {since}): "
                                  f"wait for it to finish or choose another train.output_dir; if that run is dead, "
                                  f"delete {path}") from None
            what = f"pid {holder['pid']}, no longer running" if holder else "unreadable"
            warnings.warn(f"{folder}: took over a stale run lock ({what})", stacklevel=2)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({**me, "since": time.time()}, f)
        atexit.register(release, folder)
        return path
    raise FolderInUse(f"{folder}: could not take the run lock {path} (another run keeps taking it)")


def release(folder: str | Path) -> None:
    """Drop `folder`'s run lock if this process holds it."""
    path = Path(folder) / LOCK_FILE
    holder = _holder(path)
    if holder is not None and (holder["pid"], holder.get("host")) == (os.getpid(), socket.gethostname()):
        path.unlink(missing_ok=True)
