"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each write goes to `.NAME.tmp-PID` beside the target and is renamed into place (`os.replace` is
atomic on one filesystem). A process killed mid-write leaves its temporary behind;
`remove_stale_temporaries` deletes those whose process is gone, so the next run cleans up.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\..*)?$")


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """Where a write of `path` goes before its rename (`suffix` keeps an extension some writers need)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete `.NAME.tmp-PID` files left by killed processes under `folder`; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
