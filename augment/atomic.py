"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each write goes to `.NAME.tmp-PID` beside the target and is renamed into place (`os.replace` is
atomic on one filesystem). A process killed mid-write leaves its temporary behind;
`remove_stale_temporaries` deletes those whose process is gone, so the next run cleans up.
Written here because the package that did this (atomicwrites) is archived and unmaintained.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\..*)?$")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a `.NAME.tmp-PID` file of this module's writes (finished or killed)."""
    return _TEMPORARY.match(Path(path).name) is not None


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


def current_umask() -> int:
    """The process's umask (Linux reads it without changing it; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_as_umask(folder: str | os.PathLike) -> None:
    """Files under `folder` created owner-only (safetensors >= 0.8 writes 0600) get the mode a plain
    `open()` gives them (0666 less the umask), as every other file of a run: a checkpoint on a shared
    machine stays readable by whom the user's umask allows. Other modes are left as they are."""
    mode = 0o666 & ~current_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            path.chmod(mode)


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


def output_folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be made or written into ("it is a file, not a folder", an ancestor that
    is a file, a dangling link), or None: the output commands' one-line refusal before any work."""
    if folder.is_symlink() and not folder.exists():
        return f"it is a link to a missing {os.readlink(folder)}"
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    ancestor = folder.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        if ancestor.is_symlink():
            return f"{ancestor} is a link to a missing {os.readlink(ancestor)}"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    return None
