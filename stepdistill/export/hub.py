"""Upload an export to the hub, refusing before any network call what must not be published.
"""

from __future__ import annotations

from pathlib import Path

from ..local_paths import files_with_local_paths
from .folders import check_complete

__all__ = ["push_to_hub"]


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "Upload distilled student (stepdistill)") -> str:
    """Create `repo_id` (if needed) and upload the exported `folder`; return the repo URL.

    Refuses, before any network call, a folder that is not a complete export (model_index.json, every component
    folder it names, safetensors weights), one that holds a pickle (*.bin, *.pt, *.pkl, ...), and one in
    which any file contains the token (given, or the one huggingface_hub would use) or a path of this machine
    (`local_paths`).
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder).expanduser()
    check_complete(folder)
    secret = token or get_token()
    if secret:
        leaks = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and _contains(p, secret)]
        if leaks:
            raise ValueError(f"refusing to upload {folder}: the hub token appears in {', '.join(leaks)}")
    local = files_with_local_paths(folder)
    if local:
        shown = "; ".join(f"{f}: {', '.join(paths[:2])}" for f, paths in list(local.items())[:3])
        raise ValueError(f"refusing to upload {folder}: paths of this machine appear in it ({shown}); remove them "
                         f"or replace them with names")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(url)


def _contains(path: Path, secret: str, chunk: int = 1 << 24) -> bool:
    """Whether the file's text contains `secret`. Every file is read (in chunks that overlap by len(secret) - 1)
    but safetensors files, of which only the JSON header (with any metadata) is text."""
    needle, tail = secret.encode(), b""
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            return needle in f.read(min(int.from_bytes(f.read(8), "little"), 1 << 27))
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1):] if len(needle) > 1 else b""
    return False
