"""Embeddings computed once per content and kept on disk, so re-scoring never re-encodes.

Layout of a cache folder (by default `POOL/scores/<scorer-slug>/embeddings/`)::

    text-<stamp>.safetensors    "keys" (m, 16) uint8 and "embeddings" (m, d) float32,
    image-<stamp>.safetensors   metadata {"scorer_id", "kind", "cache_version"}

A key is the first 16 bytes of the SHA-256 of the content: the caption's UTF-8 text, or the
image file's bytes. Keys are per folder and the folder is per scorer (its slug), and every
file records the scorer id; files of another scorer are ignored. Each `put` writes one new
file atomically (temporary name, then rename), so a killed run leaves only whole files, with the
mode a plain `open()` gives (0666 less the umask; safetensors >= 0.8 writes 0600, which kept the
other users of a shared `--cache-dir` from reading them). A file whose content cannot be read
back (truncated, garbage) is a miss, as in the source cache (`augment.source_cache`): a warning
names it, it is deleted, and its embeddings are computed again and written to a new file, never
an error (one bad file would stop every pool sharing a `--cache-dir`). A file that cannot be
opened (no permission, an I/O error) is a miss too, but kept: it says nothing about its content,
and in a shared folder it is someone else's valid file.

The in-memory index is numpy arrays (24 bytes per cached embedding), and a look-up reads back only
the rows it needs (a file whole, for that look-up only, when its rows are scattered through it), so
memory does not hold every embedding.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from augment.errors import first_line

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
KINDS = ("text", "image")
KEY_BYTES = 16
# what one slice of a cache file costs a look-up, in bytes of the file read whole (a slice per run of consecutive
# rows: 6-9 us each, 9-43 KiB of a whole read on a 2-core machine): a look-up whose runs cost more reads the file
# whole and takes its rows (100k scattered rows of a 200k x 64 file, one slice each: 0.52 s, 0.12 s read whole)
SLICE_COST_BYTES = 16 * 2**10
# encoded image bytes below which images are decoded inline, whatever --workers says: starting
# a DataLoader worker (fork, shared-memory hand-back; once per run) costs ~0.1 s CPU and 0.3 s wall
# on a shared 2-core machine, about what inline decoding of 16 MB of PNG/JPEG costs (1,024
# small 64 px PNGs, 4 MB, decode in 0.1 s; 1,024 Flickr JPEGs, ~150 MB, take seconds)
WORKER_MIN_BYTES = 16 * 2**20


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:KEY_BYTES]


def image_key(image_bytes: bytes) -> bytes:
    return hashlib.sha256(image_bytes).digest()[:KEY_BYTES]


def image_bytes_of(image: Any) -> bytes:
    """The encoded bytes of an undecoded `datasets` image ({"bytes", "path"}) or a PIL image."""
    if isinstance(image, dict):
        if image.get("bytes"):
            return image["bytes"]
        if image.get("path"):
            with open(image["path"], "rb") as handle:  # not pathlib: its parsing cost as much as the read
                from augment.sources import check_unchanged_since_read

                check_unchanged_since_read(image["path"], os.fstat(handle.fileno()), f"image file {image['path']}")
                return handle.read()
        raise ValueError("image has neither bytes nor a path")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # a decoded image: hash its lossless encoding
    return buffer.getvalue()


def decode_image(image_bytes: bytes, path: str | None = None, name: str | None = None):
    """Decode by the sources' one rule; an error names the record (`name`: "image '000003'",
    "pool row ROW_ID") and `path`, the file the bytes were read from, as the other commands do
    (without either it reads "image (embedded bytes)")."""
    from augment.sources import open_image

    where = None if name is None else (f"{name} ({path})" if path else name)
    return open_image({"path": path, "bytes": image_bytes}, where=where)


def _prepared_batch(prepare, payloads: list[dict]):
    """The images `payloads` ({"path", "bytes"}, bytes read) decoded, preprocessed by `prepare` (the
    scorer's `image_preparer`) and stacked: what a DataLoader worker hands the scorer's model."""
    return prepare([decode_image(payload["bytes"], payload["path"], payload.get("name")) for payload in payloads])


class EmbeddingCache:
    """Content-keyed embeddings of one scorer in one folder."""

    def __init__(self, folder: str | os.PathLike, scorer_id: str):
        self.folder = Path(folder)
        self.scorer_id = scorer_id
        self._files: list[Path] = []
        self._counts: list[int] = []  # each file's number of keys: its embeddings must have as many rows
        self._index = {kind: _KeyIndex() for kind in KINDS}
        self._read_index()

    def __len__(self) -> int:
        return sum(len(index) for index in self._index.values())

    def _read_index(self) -> None:
        from safetensors import SafetensorError, safe_open

        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="numpy") as handle:
                    meta = handle.metadata() or {}
                    if meta.get("scorer_id") != self.scorer_id or meta.get("cache_version") != CACHE_VERSION:
                        continue
                    keys = handle.get_tensor("keys")
                    kind = meta["kind"]
                if kind not in KINDS:
                    raise ValueError(f"unknown kind {kind!r}")
                if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != KEY_BYTES:
                    raise ValueError(f"keys of shape {keys.shape} and type {keys.dtype}, not (m, {KEY_BYTES}) uint8")
            except OSError as exc:  # before SafetensorError's cases: not the content's fault
                _not_openable(path, exc)
                continue
            except (SafetensorError, KeyError, ValueError) as exc:
                _unreadable(path, exc)
                continue
            self._register(kind, path, keys)

    def _register(self, kind: str, path: Path, keys: np.ndarray) -> None:
        self._files.append(path)
        self._counts.append(len(keys))
        self._index[kind].add(keys, len(self._files) - 1)

    def lookup(self, kind: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, embeddings of the found keys in order, or None when none is found)."""
        file_ids, rows = self._index[kind].find(keys)
        found = file_ids >= 0
        out = None
        for file_id in np.unique(file_ids[found]):
            chosen = file_ids == file_id
            embeddings = self._rows_of(int(file_id), rows[chosen])
            if embeddings is None:  # unreadable: its keys are misses, encoded again
                self._index[kind].drop(int(file_id))
                found &= ~chosen
                continue
            if out is None:
                out = np.empty((len(keys), embeddings.shape[1]), dtype=np.float32)
            out[chosen] = embeddings
        return found, None if out is None else out[found]

    def _rows_of(self, file_id: int, rows: np.ndarray) -> np.ndarray | None:
        """Rows `rows` of file `file_id`'s embeddings, or None when it cannot be read back (it was indexed,
        then damaged or deleted). Only those rows are read, a slice per run of consecutive rows: a chunk's
        captions are often found in many files (a common caption is cached where it first appeared), and
        whole files kept a few at a time were read again chunk after chunk (5 s of a 37 s re-score). Rows so scattered
        that their slices would cost more than the file (`SLICE_COST_BYTES` a slice) are taken from it read whole."""
        from safetensors import SafetensorError, safe_open

        path = self._files[file_id]
        try:
            with safe_open(str(path), framework="numpy") as handle:
                stored = handle.get_slice("embeddings")
                shape, dtype = stored.get_shape(), stored.get_dtype()
                if dtype != "F32" or len(shape) != 2 or shape[0] != self._counts[file_id]:
                    raise ValueError(f"embeddings of shape {tuple(shape)} and type {dtype}, "
                                     f"not ({self._counts[file_id]}, d) float32")
                wanted, back = np.unique(rows, return_inverse=True)
                breaks = np.flatnonzero(np.diff(wanted) != 1) + 1  # the runs' bounds (np.split into runs: 0.27 s at 50k)
                starts, ends = wanted[np.r_[0, breaks]], wanted[np.r_[breaks - 1, -1]] + 1
                if len(starts) * SLICE_COST_BYTES >= shape[0] * shape[1] * 4:  # many scattered rows: the file whole
                    block = handle.get_tensor("embeddings")[wanted]
                else:
                    block = np.concatenate([stored[int(start):int(end)] for start, end in zip(starts, ends)])
        except OSError as exc:
            _not_openable(path, exc)
            return None
        except (SafetensorError, KeyError, ValueError) as exc:
            _unreadable(path, exc)
            return None
        return block[back.reshape(-1)]

    def put(self, kind: str, keys: np.ndarray, embeddings: np.ndarray) -> Path:
        from safetensors import SafetensorError
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.time_ns()}-{os.getpid()}"
        path = self.folder / f"{kind}-{stamp}.safetensors"
        from augment.atomic import current_umask, naming_write_errors, temporary_path

        tmp = temporary_path(path)  # .NAME.tmp-PID: the next run deletes it if this one is killed
        tensors = {"keys": np.ascontiguousarray(keys, dtype=np.uint8), "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}
        try:
            with naming_write_errors(path, tmp):
                try:
                    save_file(tensors, str(tmp), metadata={"scorer_id": self.scorer_id, "kind": kind,
                                                           "cache_version": CACHE_VERSION})
                except SafetensorError as exc:  # a full disk: "I/O error: No space left on device (os error 28)"
                    raise _write_error(exc) from None
                os.chmod(tmp, 0o666 & ~current_umask())  # safetensors writes 0600: readable as the umask allows
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._register(kind, path, tensors["keys"])
        return path


def _write_error(exc: BaseException) -> OSError:
    """safetensors' failed write as the OSError it reports in words (`... (os error 28)`), naming no file
    yet: the commands print an OSError as one line; a SafetensorError was a traceback, exit status 1."""
    import re

    found = re.search(r"\(os error (\d+)\)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code) if found else f"could not be written ({first_line(exc)})")


def _not_openable(path: Path, exc: OSError) -> None:
    """A cache file this process cannot open or read (no permission, an I/O error, deleted
    meanwhile): said in one line and left in place (another user's valid file in a shared
    --cache-dir); its embeddings are computed again here."""
    log.warning("embedding cache file %s cannot be read (%s): kept, its embeddings are computed again",
                path, first_line(exc))


def _unreadable(path: Path, exc: Exception) -> None:
    """A cache file whose content cannot be parsed: said in one line and deleted (its embeddings are
    computed again and written to a new file; files are only ever written whole, so it is damaged)."""
    log.warning("embedding cache file %s is unreadable (%s): deleted, its embeddings are computed again",
                path, first_line(exc))
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


class _KeyIndex:
    """Sorted 16-byte keys -> (file id, row), looked up with numpy's searchsorted.

    The keys are a few sorted runs, oldest first, each at least twice the size of the next (a
    log-structured merge): a put sorts its own keys and merges runs only while the newest is as large
    as half the one before, so n keys cost O(n log n) sorting in all. One sorted array re-sorted
    whole after every put was quadratic in the cache: `augment score` puts once per chunk, 14.6 s
    of sorting for 612k keys in 2,400 puts, ~1 min at a COCO pool's 1.2M captions."""

    def __init__(self):
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (keys, file ids, rows), oldest first

    def __len__(self) -> int:
        return sum(len(keys) for keys, _, _ in self._runs)

    def add(self, keys: np.ndarray, file_id: int) -> None:
        keys = as_key_strings(keys)
        if not len(keys):  # a file of no keys (a valid one): an empty run would break `find`'s lookups
            return
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], np.full(len(keys), file_id, dtype=np.int32), order.astype(np.int32)))
        while len(self._runs) > 1 and 2 * len(self._runs[-1][0]) >= len(self._runs[-2][0]):
            newer = self._runs.pop()
            older = self._runs.pop()
            merged = [np.concatenate([a, b]) for a, b in zip(older, newer)]
            order = np.argsort(merged[0], kind="stable")  # a key in both: the older entry first, as it is found
            self._runs.append(tuple(part[order] for part in merged))

    def drop(self, file_id: int) -> None:
        """Forget the keys of file `file_id` (unreadable): they are misses from now on, and the
        same keys written again to another file are found there."""
        kept_runs = []
        for keys, file_ids, rows in self._runs:
            kept = file_ids != file_id
            kept_runs.append((keys[kept], file_ids[kept], rows[kept]))
        self._runs = [run for run in kept_runs if len(run[0])]

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(file id, row) per key; file id -1 where the key is not cached. A key in several files is
        found in the one indexed first."""
        wanted = as_key_strings(keys)
        file_ids = np.full(len(wanted), -1, dtype=np.int32)
        rows = np.zeros(len(wanted), dtype=np.int32)
        for run_keys, run_files, run_rows in self._runs:  # oldest first: a key found stays found there
            open_ = file_ids < 0
            if not open_.any():
                break
            query = wanted[open_]
            positions = np.minimum(np.searchsorted(run_keys, query), len(run_keys) - 1)
            hit = run_keys[positions] == query
            where = np.flatnonzero(open_)[hit]
            file_ids[where] = run_files[positions[hit]]
            rows[where] = run_rows[positions[hit]]
        return file_ids, rows


def as_key_strings(keys: np.ndarray | Sequence[bytes]) -> np.ndarray:
    """(n,) fixed-width byte strings from (n, 16) uint8 arrays or lists of 16-byte digests."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint8:
        return np.ascontiguousarray(keys).view(f"S{KEY_BYTES}").reshape(-1)
    return np.array(list(keys), dtype=f"S{KEY_BYTES}")


def as_key_bytes(keys: Sequence[bytes]) -> np.ndarray:
    """(n, 16) uint8 array of digests, the form stored in cache files."""
    if len(keys) == 0:
        return np.empty((0, KEY_BYTES), dtype=np.uint8)
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES)


class Embedder:
    """A scorer behind a cache: each distinct content is encoded once, ever, per scorer."""

    def __init__(self, scorer, cache: EmbeddingCache, workers: int = 0):
        self.scorer = scorer
        self.cache = cache
        self.workers = workers  # DataLoader processes decoding images ahead of the scorer
        self.encoded = {"text": 0, "image": 0}
        self.reused = {"text": 0, "image": 0}
        self._path_keys: dict[str, bytes] = {}  # image file path -> key, of the last `images` call
        self._decoding = None  # the DataLoader workers, started by the first call that needs them

    def close(self) -> None:
        """End the DataLoader workers (a later call starts them again)."""
        if self._decoding is not None:
            self._decoding.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        return self._embed("text", keys, list(texts), self.scorer.encode_texts)

    def images(self, images: Sequence[Any], names: Sequence[str] | None = None) -> np.ndarray:
        """Embeddings of undecoded `datasets` images ({"bytes", "path"}) or PIL images; `names`:
        each image's record, for the error when one does not decode.

        An image file this call or the previous one read (a pool row pointing at its source
        image: the source items of a chunk are embedded just before its rows) keeps the key
        hashed then instead of being read and hashed again; its bytes are read only if it must
        be encoded."""
        previous, self._path_keys = self._path_keys, {}
        keys, payloads = [], []
        for number, image in enumerate(images):
            path = image.get("path") if isinstance(image, dict) and not image.get("bytes") else None
            key = (previous.get(path) or self._path_keys.get(path)) if path else None
            if key is None:
                data = image_bytes_of(image)
                key = image_key(data)
                # with the file it was read from: that names the image if it fails to decode
                payload = {"path": image.get("path") if isinstance(image, dict) else None, "bytes": data}
            else:
                payload = dict(image)  # read in _encode_images if needed
            if names is not None:
                payload["name"] = names[number]
            if path:
                self._path_keys[path] = key
            keys.append(key)
            payloads.append(payload)
        return self._embed("image", keys, payloads, self._encode_images)

    def _encode_images(self, payloads: list):
        """Decode and preprocess (in worker processes when there are several batches), encode
        in this one, in order: the workers' share is the decoding and the model's eval
        transform, so the main process only runs the model."""
        import torch

        from augment.loading import DecodingWorkers, raise_worker_death

        payloads = [data if data.get("bytes") else {**data, "bytes": image_bytes_of(data)} for data in payloads]
        size = self.scorer.batch_size
        batches = [payloads[start:start + size] for start in range(0, len(payloads), size)]
        # one batch, or too little to decode: a worker's start-up would cost more than it saves
        enough = len(batches) > 1 and sum(len(data["bytes"]) for data in payloads) >= WORKER_MIN_BYTES
        # (the scorer's preprocessing only, not its model: this is pickled for spawned workers)
        prepare = functools.partial(_prepared_batch, self.scorer.image_preparer())
        if not (enough and self.workers > 0):
            prepared = (prepare(batch) for batch in batches)
        else:
            # started once for the whole run, not once per chunk (each start imports torch in every
            # worker under spawn and forkserver); a loader item is a whole model batch of payloads,
            # sent to the one worker that decodes it and stacked there: one tensor crosses the process
            # boundary per batch (per-image tensors would each open a shared-memory handle)
            if self._decoding is None:
                self._decoding = DecodingWorkers(None, {"prepare": prepare}, self.workers)
            prepared = (pixels for [pixels] in self._decoding.passes("prepare", [[batch] for batch in batches]))
        try:
            parts = [self.scorer.encode_prepared(pixels) for pixels in prepared]
        except RuntimeError as exc:  # torch's SIGCHLD handler raises a dead worker's error inside the encoding too
            raise_worker_death(exc, workers=self.workers)
        return torch.cat(parts)

    def _embed(self, kind: str, keys: list[bytes], payloads: list, encode) -> np.ndarray:
        if not keys:
            return np.empty((0, 0), dtype=np.float32)
        unique: "OrderedDict[bytes, int]" = OrderedDict()
        for position, key in enumerate(keys):
            unique.setdefault(key, position)
        unique_keys = list(unique)
        found, cached = self.cache.lookup(kind, as_key_bytes(unique_keys))
        missing = [key for key, hit in zip(unique_keys, found) if not hit]
        table: dict[bytes, np.ndarray] = {}
        if cached is not None:
            table.update(zip([k for k, hit in zip(unique_keys, found) if hit], cached))
        if missing:
            new = encode([payloads[unique[key]] for key in missing]).numpy().astype(np.float32)
            self.cache.put(kind, as_key_bytes(missing), new)
            table.update(zip(missing, new))
        self.encoded[kind] += len(missing)
        self.reused[kind] += len(keys) - len(missing)
        return np.stack([table[key] for key in keys])
