"""The normalised-source cache: a text source is parsed and checked once, then mapped from Arrow.

`load_source` reads a JSON/CSV/metadata.jsonl source record by record (parse, field checks,
path resolution): about 2 s per 20,000 records. What it builds is one Arrow table, so the first
read writes that table, with the source's content fingerprint, to an Arrow IPC file here, and
later reads memory-map it instead (no parse, no per-record check): start-up no longer grows with
the source. The `datasets` way: its cache files are Arrow too, keyed for local files by their
path and modification time, not by a content hash.

**Key.** One cache file per source as named and reading options (`image_root`, `split`, CSV
columns, `allow_outside_root`, and the working folder when a path is relative: the table's image
paths are built from the names as given). Inside it: the identity (size, mtime_ns, ctime_ns) of
every file the read parsed and the mtime_ns of every image folder it listed. A hit needs all of
them unchanged: an edited or touched source file, or an image added, removed or renamed in a
listed folder, means a fresh read (which rewrites the entry). No content hash: hashing a 28 MB
JSON costs a tenth of parsing it, and stat is what `datasets` trusts for local files too
(ctime is added so a file copied back with its old mtime, `cp -p`, still counts as changed).

**Racy files** (git's term): a file or folder changed less than `RACY_SECONDS` before the read
began could change again within the same timestamp tick unseen, so such a read is not cached (the
next read caches it).

**Size.** A hit marks its entry used (mtime); each write keeps the `MAX_ENTRIES` most recently
used entries within `MAX_BYTES` and deletes the rest (sources come and go: a study writes many).

A cache file that cannot be read back (truncated, garbage, another version, a schema that is not
the source schema) is a miss and is rewritten, never an error; a cache folder that cannot be
written is a warning. Writes are atomic (`augment.atomic.temporary_path` + `os.replace`), so a
killed writer leaves no half file under the entry's name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augment.atomic import remove_stale_temporaries, temporary_path

log = logging.getLogger(__name__)

# bump when the reading rules change what a source's table holds (2: an image folder's ids are its
# files' paths without suffix, were their stems)
CACHE_VERSION = 2
METADATA_KEY = b"mat-plus-source-cache"
MAX_ENTRIES = 64  # the folder keeps the most recently used entries: sources come and go (a study writes many)
MAX_BYTES = 4 * 2**30
RACY_SECONDS = 2.0  # longer than any file-system timestamp tick in use (FAT: 2 s; ext4, xfs, tmpfs: < 10 ms)


def cache_home() -> Path:
    """Where mat-plus keeps its caches by default: `$XDG_CACHE_HOME/mat-plus`, else `~/.cache/mat-plus` (the
    XDG rule huggingface_hub and torch follow too; a cluster that points XDG_CACHE_HOME at scratch space
    moves every cache with it)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    # the spec: a relative path in it is invalid and ignored (it would put the cache wherever a command runs)
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path("~/.cache").expanduser()) / "mat-plus"


def default_cache_folder() -> Path:
    """`$MATPLUS_CACHE/sources` (default `cache_home()/sources`)."""
    return (Path(os.environ["MATPLUS_CACHE"]).expanduser() if os.environ.get("MATPLUS_CACHE") else cache_home()) / "sources"


def file_identity(path: str | os.PathLike) -> list[int] | None:
    """[size, mtime_ns, ctime_ns] of a file (symlinks followed), None when it is gone."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def path_identity(path: str | os.PathLike) -> list:
    """[absolute path, `file_identity`]: which file is read and whether it changed (another root,
    a file replaced in place, even with its old mtime)."""
    path = os.fspath(path)
    return [path if os.path.isabs(path) else os.path.abspath(path), file_identity(path)]


def identity_within(identity: list, base: str) -> list:
    """A `path_identity` with its path relative to the folder `base` (absolute) when it lies inside it: what
    a folder moved with its files keeps (a path elsewhere stays absolute)."""
    inside = Path(identity[0]).is_relative_to(base)
    return [os.path.relpath(identity[0], base), *identity[1:]] if inside else identity


def folder_stamp(path: str | os.PathLike) -> int | None:
    """A folder's mtime_ns (changes when an entry is added, removed or renamed), None when absent."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@dataclass
class CachedSource:
    """What a hit gives back: the memory-mapped table and what was recorded with it."""

    table: Any  # pyarrow.Table, schema metadata as `schema` gives it
    format: str
    fingerprint: str  # the source's content fingerprint (`augment.sources.source_fingerprint`)
    state: str  # names this entry's table for `datasets` (its own fingerprint would hash every row)


class SourceCache:
    """The cache entry of one source read with one set of options."""

    def __init__(self, folder: str | os.PathLike, source: str, options: dict):
        self.folder = Path(folder)
        named = {"version": CACHE_VERSION, "source": str(source), **options}
        if any(name and not os.path.isabs(str(name)) for name in (source, options.get("image_root"))):
            named["cwd"] = os.getcwd()  # relative names: the table's image paths are relative to it
        digest = hashlib.sha256(json.dumps(named, sort_keys=True, default=str).encode()).hexdigest()[:32]
        self.path = self.folder / f"{digest}.arrow"
        self.started_ns = time.time_ns()  # racy-file reference: when this read began

    # ---------------------------------------------------------------- reading

    def load(self, schema) -> CachedSource | None:
        """The entry if it exists, reads back whole and still matches its files and folders."""
        import pyarrow as pa

        if not self.path.is_file():
            return None
        try:
            with pa.memory_map(str(self.path)) as source:
                table = pa.ipc.open_file(source).read_all()  # zero-copy: buffers point into the map
            recorded = json.loads(table.schema.metadata[METADATA_KEY])
            if recorded.get("version") != CACHE_VERSION or not table.schema.equals(schema, check_metadata=False):
                return None
            # full: damaged bytes inside a caption (not UTF-8) are a miss here, not a UnicodeDecodeError when
            # a row is read; it reads every value once (7 ms for 27 MB of captions and paths)
            table.validate(full=True)
            files, folders = recorded["files"], recorded["folders"]
            if any(file_identity(path) != identity for path, identity in files.items()):
                return None
            if any(folder_stamp(path) != stamp for path, stamp in folders.items()):
                return None
            state = hashlib.sha256(self.path.name.encode() + table.schema.metadata[METADATA_KEY]).hexdigest()[:16]
            try:
                os.utime(self.path)  # recently used: pruned last
            except OSError:
                pass
            return CachedSource(table.replace_schema_metadata(schema.metadata), str(recorded["format"]),
                                str(recorded["fingerprint"]), state)
        except (OSError, pa.ArrowException, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.info("source cache %s unreadable (%s): reading the source again", self.path, exc)
            return None

    # ---------------------------------------------------------------- writing

    def racy(self, files: dict[str, list[int] | None], folders: dict[str, int | None]) -> bool:
        """Whether a file or folder changed too shortly before this read began to be trusted."""
        limit = self.started_ns - int(RACY_SECONDS * 1e9)
        # mtime only: a change after an old mtime sets a new one (and a new ctime), so the entry
        # is only unsafe when the recorded mtime itself is recent
        stamps = [identity[1] for identity in files.values() if identity]
        stamps += [stamp for stamp in folders.values() if stamp is not None]
        return any(stamp > limit for stamp in stamps)

    def store(self, table, fmt: str, fingerprint: str, files: dict[str, list[int] | None],
              folders: dict[str, int | None]) -> bool:
        """Write the entry atomically; False (nothing written) for racy files or an unwritable folder."""
        import pyarrow as pa

        if any(identity is None for identity in files.values()) or self.racy(files, folders):
            return False
        recorded = {"version": CACHE_VERSION, "format": fmt, "fingerprint": fingerprint,
                    "files": files, "folders": folders}
        metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(recorded).encode()}
        table = table.replace_schema_metadata(metadata)
        tmp = temporary_path(self.path)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, self.path)
        except (OSError, pa.ArrowException) as exc:
            log.warning("cannot write the source cache in %s (%s); set MATPLUS_CACHE to a writable folder",
                        self.folder, exc)
            return False
        finally:
            try:  # missing_ok covers only a missing file, not a path through a file or a refused search
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        prune(self.folder, keep=self.path)
        return True


def prune(folder: Path, keep: Path | None = None, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Delete the least recently used entries beyond `max_entries` or `max_bytes` (never `keep`),
    and the temporaries of killed writers."""
    remove_stale_temporaries(folder, recursive=False)
    entries = []
    for path in folder.glob("*.arrow"):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((path == keep, stat.st_mtime_ns, stat.st_size, path))
    entries.sort(reverse=True)  # `keep`, then the most recently used
    removed, total = [], 0
    for number, (_, _, size, path) in enumerate(entries):
        total += size
        if path != keep and (number >= max_entries or total > max_bytes):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
