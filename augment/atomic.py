"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each write goes to `.NAME.tmp-PID` beside the target and is renamed into place (`os.replace` is
atomic on one filesystem). A process killed mid-write leaves its temporary behind;
`remove_stale_temporaries` deletes those whose process is gone, so the next run cleans up.
A whole folder is written beside its target and swapped in by `swap_folder_into_place`.
Written here because the package that did this (atomicwrites) is archived and unmaintained.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\..*)?$")
# what a swap of folder NAME killed by SIGKILL leaves beside it: `.NAME.old-PID` (the replaced folder)
# or `.NAME.partial-PID-xxxxxxxx` (a staged one: save-tiny's, make-sample's; make-sample's asides
# have the hex tail too)
_SWAP_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:old|partial)-(?P<pid>\d+)(?:-[0-9a-f]{8})?$")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a `.NAME.tmp-PID` file of this module's writes (finished or killed)."""
    return _TEMPORARY.match(Path(path).name) is not None


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """Where a write of `path` goes before its rename (`suffix` keeps an extension some writers need)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike, *temporaries: str | os.PathLike):
    """Within: an OSError that names no file, or names one of `temporaries`, is raised again naming
    `path`, the file the user asked for. A full disk (ENOSPC) or a file-size limit (EFBIG) reaches
    Python from a buffer's write or flush, which names no file: the commands' line was
    `error: [Errno 28] No space left on device`, without the file it failed on. A file named as bytes
    (TensorBoard's event files: `b'RUN/tensorboard/events...'`) is named as text."""
    try:
        yield
    except OSError as exc:
        hidden = {os.fspath(t) for t in temporaries}
        named = exc.filename
        if named is not None and os.fspath(named) not in hidden:
            if not isinstance(named, bytes):
                raise
            path = os.fsdecode(named)
        raise OSError(exc.errno, exc.strerror or str(exc) or type(exc).__name__, str(path)) from None


@contextlib.contextmanager
def naming_staged_errors(staged: str | os.PathLike, final: str | os.PathLike):
    """Within: an OSError naming `staged` (a folder built to be swapped in as `final`) or a file in it
    is raised again naming the same place under `final`: the user knows `final`, not the hidden
    `.NAME.partial-PID-xxxxxxxx` (`select --out ro/sel` in a read-only folder said
    `ro/.sel.partial-30610-f1f319ad: Read-only file system`)."""
    try:
        yield
    except OSError as exc:
        staged, named = Path(staged), Path(os.fspath(exc.filename)) if exc.filename is not None else None
        if named is None or not (named == staged or staged in named.parents):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(Path(final) / named.relative_to(staged))) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with naming_write_errors(path, tmp):  # the file the user asked for, not our hidden temporary
            tmp.write_bytes(data)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # e.g. a parent that is a file: the write's own error says so
            tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def save_figure_atomic(figure, path: str | os.PathLike, **savefig_options) -> Path:
    """`figure.savefig(path)` (a matplotlib figure) through `.NAME.tmp-PID.EXT`: the format follows
    the suffix, and a killed run leaves the previous plot, not a truncated one."""
    path = Path(path)
    tmp = temporary_path(path, path.suffix)
    try:
        with naming_write_errors(path, tmp):
            figure.savefig(tmp, **savefig_options)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    is a file, a dangling link, a folder that cannot be written to), or None: the output commands'
    one-line refusal before any work."""
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
    # a read-only file system or no permission: refused now, not after the work (access(2) answers
    # EROFS for root too, so this holds where root's permissions are otherwise unlimited)
    writable_at = folder if folder.is_dir() else ancestor
    if not os.access(writable_at, os.W_OK | os.X_OK):
        where = "it" if writable_at == folder else str(writable_at)
        return f"{where} cannot be written to (a read-only file system, or no permission)"
    return None


@contextlib.contextmanager
def sole_writer(folder: str | os.PathLike, lock_name: str, busy: str):
    """Within: this process alone writes into `folder` (an exclusive lock on `folder/lock_name`, made
    with the folder if need be); another process holding it: MatPlusError `FOLDER: busy`. The lock
    is the kernel's (flock, through filelock), so a killed holder's lock goes with it and never
    blocks the next run. A folder this call created and the block left empty (a run that failed
    before writing anything) is removed again; in a folder that was there, a lock file this call
    created is removed again when the block added nothing beside it (a generate refused for a
    user's folder, or failing on an existing empty one, left it there, and `augment push --to-dir`
    then refused that folder for holding `.generate.lock`; an export accepts it now, and holds it
    itself). `train` and `train eval` each hold one:
    two runs into one folder would interleave their outputs."""
    from filelock import FileLock, Timeout

    from augment.errors import MatPlusError

    folder = Path(folder)
    created = not folder.exists()
    # what an existing folder held before this call's lock file: nothing added beside it -> the file goes again
    before = None if created or (folder / lock_name).exists() else _names(folder)
    lock = FileLock(folder / lock_name, timeout=0)  # creates the folder
    try:
        lock.acquire()
    except Timeout:
        raise MatPlusError(f"{folder}: {busy}") from None
    try:
        yield
    finally:
        lock_only = created and folder.is_dir() and [path.name for path in folder.iterdir()] == [lock_name]
        after = _names(folder) if before is not None else None
        untouched = after is not None and after - {lock_name} == before
        if lock_only or untouched:  # unlinked while held: a run that opened it meanwhile sees it gone and takes a new one
            (folder / lock_name).unlink(missing_ok=True)
        lock.release()
        if lock_only:
            with contextlib.suppress(OSError):  # another run has started writing here since
                folder.rmdir()


def sole_writer_of_processes(folder: str | os.PathLike, lock_name: str, busy: str, is_main: bool, world_size: int,
                             error: type[Exception]) -> contextlib.ExitStack:
    """`sole_writer` for a run of one or several processes: the main one holds the lock until the
    returned stack is closed, and its answer is every process's (broadcast under torch.distributed),
    so all are refused alike (`error`) instead of the others waiting at a barrier for a process that
    left. `train`'s run folder and a pool folder's writers (`augment generate`, `select`) use it."""
    from augment.errors import MatPlusError

    held = contextlib.ExitStack()
    refusal = None
    if is_main:
        try:
            held.enter_context(sole_writer(folder, lock_name, busy))
        except MatPlusError as exc:
            refusal = str(exc)
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            from accelerate.utils import broadcast_object_list

            refusal = broadcast_object_list([refusal], from_process=0)[0]
    if refusal is not None:
        held.close()
        raise error(refusal)
    return held


def _names(folder: Path) -> set[str] | None:
    """The names in `folder`; None when it cannot be listed (not a folder, no permission)."""
    try:
        return {path.name for path in folder.iterdir()}
    except OSError:
        return None


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C and SIGTERM held back (raised again after the block): a swap of a folder is never
    left half-done, with the old contents in a hidden folder the next run would delete as stale.
    Python handlers, not a signal mask: another thread of the process may be the one a signal reaches."""
    if threading.current_thread() is not threading.main_thread():  # handlers can be set there only
        yield
        return
    arrived: list[int] = []
    previous = {number: signal.signal(number, lambda received, _frame: arrived.append(received))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in arrived:
            signal.raise_signal(number)


def remove_dead_swap_leftovers(target: str | os.PathLike, keep: str | os.PathLike | None = None) -> list[Path]:
    """Delete the `.NAME.old-PID` / `.NAME.partial-PID-xxxxxxxx` folders beside `target` (NAME its
    name) whose process is gone, except `keep`; return them. A live process's are its swap in progress."""
    target, keep = Path(target), Path(keep) if keep is not None else None
    if not target.parent.is_dir():
        return []
    removed = []
    for path in target.parent.iterdir():
        match = _SWAP_LEFTOVER.match(path.name)
        if (match and match.group("name") == target.name and path != keep and path.is_dir()
                and not path.is_symlink() and not _process_alive(int(match.group("pid")))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def wait_out_a_swap(target: str | os.PathLike, tries: int = 5) -> None:
    """Return once `target` exists, or at once when it is missing for no swap: a reader that met the
    instant between a swap's two renames (`swap_folder_into_place`: the old folder aside as
    `.NAME.old-PID` of a live process, or the trainer's `.ckpt-old` / `.best-old`, the new one not yet
    renamed in) waits for the second rename (a few tries, 0.75 s in all) instead of reporting the folder
    missing (`augment.pool.load_pool` then asked the Hub for a dataset of that name)."""
    import time

    target = Path(target)
    for attempt in range(tries):
        if target.exists() or not target.parent.is_dir():
            return
        if not any(pid is None or _process_alive(pid) for _, pid in _old_folders_aside(target)):
            return
        time.sleep(0.05 * (attempt + 1))


def _old_folders_aside(target: Path) -> list[tuple[Path, int | None]]:
    """The old folders a swap into `target` set aside, with the process that swapped: `.NAME.old-PID`
    (`-xxxxxxxx` after it for make-sample's), or the trainer's fixed `.NAME-old` (its process: None)."""
    found = []
    # the names compared as they are: a glob of the name read `pool[v2]`'s brackets as a set of characters
    # (its `.pool[v2].old-PID` unseen) and refused `pool**` (ValueError)
    for path in target.parent.iterdir():
        if not path.name.startswith(f".{target.name}") or not path.is_dir():
            continue
        if path.name == f".{target.name}-old":
            found.append((path, None))
        elif ((match := _SWAP_LEFTOVER.match(path.name)) is not None and match.group("name") == target.name
              and path.name.startswith(f".{target.name}.old-")):
            found.append((path, int(match.group("pid"))))
    return found


def swap_leftover_note(target: str | os.PathLike) -> str:
    """For a one-line error saying `target` does not exist: "" or `; ...` naming the old folder a swap
    killed between its two renames (SIGKILL, a crash) left beside it, and the `mv` that puts it back:
    `.NAME.old-PID` (`-xxxxxxxx` after it for make-sample's) of a process that is gone, or the trainer's
    fixed `.NAME-old` (`RUN/.ckpt-old`, `RUN/.best-old`). Every reader said only that `target` was
    missing (a pool: `no such pool folder`), and the next swap into `target` deletes the leftover."""
    import shlex

    target = Path(target)
    try:
        aside = _old_folders_aside(target) if not target.exists() and target.name else []
    except OSError:
        return ""
    found = []
    for path, pid in aside:
        if path.is_symlink() or (pid is not None and _process_alive(pid)):
            continue
        try:
            found.append((path.stat().st_mtime, path, pid))
        except OSError:  # deleted meanwhile (a writer's swap removes dead processes' leftovers): not there to name
            continue
    if not found:
        return ""
    _, aside, pid = max(found, key=lambda item: item[0])  # the latest swap's
    by = "a swap" if pid is None else f"a swap by process {pid}, no longer running,"
    then = "" if pid is None else f" (the next run writing {target.name} deletes it)"
    return (f"; {by} was killed between its two renames and left the old folder at {aside}: "
            f"`mv {shlex.quote(str(aside))} {shlex.quote(str(target))}` restores it{then}")


def staging_path(target: str | os.PathLike) -> Path:
    """Where a folder replacing `target` is written first: `.NAME.partial-PID-xxxxxxxx` beside it,
    a name `remove_dead_swap_leftovers` deletes once its process is gone."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


def swap_folder_into_place(staged: str | os.PathLike, target: str | os.PathLike, *,
                           aside: str | os.PathLike | None = None) -> Path:
    """Rename the finished folder `staged` to `target` (a sibling); return `target`.

    A reader of `target` finds the old folder or the new one, each complete. A rename cannot replace
    a non-empty folder, so an existing `target` is renamed to `aside` first (default `.NAME.old-PID`)
    and deleted after. Ctrl-C and SIGTERM wait until both renames are done: only SIGKILL (or a crash)
    can leave `target` missing between them, with the old folder at `aside`. Leftovers of such
    swaps whose process is gone (`remove_dead_swap_leftovers`) are deleted first. Errors are the
    renames' own OSError; `staged` is the caller's to delete when one is raised.
    """
    staged, target = Path(staged), Path(target)
    # the trainer's readers fall back to fixed names after a kill (RUN/.ckpt-old, .best-old); make-sample keeps its own
    aside = Path(aside) if aside is not None else target.with_name(f".{target.name}.old-{os.getpid()}")
    remove_dead_swap_leftovers(target, keep=staged)
    swapped = False
    try:
        with interrupts_held():
            if target.exists():
                os.replace(target, aside)
            os.replace(staged, target)
            swapped = True
    finally:
        # also when a held Ctrl-C is raised on leaving the block; never after a failed rename, where
        # `aside` may be the only copy
        if swapped:
            shutil.rmtree(aside, ignore_errors=True)
    return target
