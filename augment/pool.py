"""Reading and writing pools: a sharded parquet `datasets` table plus `pool.json`.

On-disk layout (also exactly what the Hub holds after `augment push`, so `load_dataset(DIR)`
reads it)::

    POOL/
      pool.json                 provenance: method, model, parameters, seed, source fingerprint...
      data/shard-00000.parquet  one file per work unit of source items, written atomically
      data/shard-00001.parquet
      README.md                 data card (written by `augment push`)

Every shard is written to a temporary name and renamed into place, so a killed run leaves only
whole shards; re-running the same command skips them and writes the rest (resume).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Iterable

from augment.errors import PoolError
from augment.schema import (
    POOL_FEATURES,
    POOL_SCHEMA_VERSION,
    SchemaError,
    check_pool_features,
    check_pool_row,
)

POOL_META = "pool.json"
DATA_DIR = "data"
SHARD_PATTERN = "shard-{index:05d}.parquet"

# these meta keys must match for a re-run to resume into an existing pool
IDENTITY_KEYS = ("method", "model", "model_revision", "params", "seed", "source_fingerprint", "n", "split", "limit", "shard_size")

_PACKAGES = ("mat-plus", "torch", "open_clip_torch", "transformers", "diffusers", "datasets", "nltk", "Pillow")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            pass
    return versions


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def make_row_id(method: str, image_id: str, caption_index: int, k: int) -> str:
    return f"{method}:{image_id}:{caption_index}:{k}"


# ----------------------------------------------------------------------------- writing


class PoolWriter:
    """Writes a pool shard by shard; re-opening the same pool with the same identity resumes it.

    `meta` holds the pool's provenance (see `IDENTITY_KEYS` for what must match on resume).
    """

    def __init__(self, out_dir: str | os.PathLike, meta: dict, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.data_dir = self.out_dir / DATA_DIR
        meta_path = self.out_dir / POOL_META
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            if not meta_path.exists():
                raise PoolError(f"{self.out_dir}: exists and is not a pool; choose another --out")
            old = json.loads(meta_path.read_text())
            if overwrite:
                for shard in self.data_dir.glob("*.parquet"):
                    shard.unlink()
            else:
                changed = [k for k in IDENTITY_KEYS if _normalised(old.get(k)) != _normalised(meta.get(k))]
                if changed:
                    raise PoolError(
                        f"{self.out_dir}: holds a pool made with different {changed}; "
                        "use another --out, or --overwrite to replace it"
                    )
                meta = {**old, **meta, "created": old.get("created")}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.meta = {
            "schema_version": POOL_SCHEMA_VERSION,
            "created": meta.get("created") or _utc_now(),
            "package_versions": package_versions(),
            **{k: v for k, v in meta.items() if k != "created"},
            "status": "in-progress",
        }
        write_json_atomic(meta_path, self.meta)

    def shard_path(self, index: int) -> Path:
        return self.data_dir / SHARD_PATTERN.format(index=index)

    def has_shard(self, index: int) -> bool:
        return self.shard_path(index).exists()

    def write_shard(self, index: int, rows: list[dict]) -> Path:
        """Validate and write one shard atomically; an empty shard is written too (it marks done)."""
        from datasets import Dataset

        for row in rows:
            check_pool_row(row, f"pool {self.out_dir.name}, row {row.get('row_id')!r}")
        columns = {name: [row.get(name) for row in rows] for name in POOL_FEATURES}
        table = Dataset.from_dict(columns, features=POOL_FEATURES)
        final = self.shard_path(index)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        table.to_parquet(str(tmp))
        os.replace(tmp, final)
        return final

    def finalize(self, expected_shards: int | None = None, extra: dict | None = None) -> dict:
        shards = sorted(self.data_dir.glob("shard-*.parquet"))
        if expected_shards is not None and len(shards) != expected_shards:
            raise PoolError(f"{self.out_dir}: {len(shards)} of {expected_shards} shards written; re-run to finish")
        import pyarrow.parquet as pq

        self.meta.update(extra or {})
        self.meta["num_rows"] = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
        self.meta["num_shards"] = len(shards)
        self.meta["status"] = "complete"
        self.meta["finished"] = _utc_now()
        write_json_atomic(self.out_dir / POOL_META, self.meta)
        return self.meta


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def write_pool(out_dir: str | os.PathLike, rows: Iterable[dict], meta: dict, overwrite: bool = False, shard_rows: int = 5000) -> dict:
    """Write a whole pool from rows in one go (select, adversarial examples, copies)."""
    writer = PoolWriter(out_dir, meta, overwrite=overwrite)
    buffer: list[dict] = []
    index = 0
    for row in rows:
        buffer.append(row)
        if len(buffer) >= shard_rows:
            writer.write_shard(index, buffer)
            buffer, index = [], index + 1
    if buffer or index == 0:
        writer.write_shard(index, buffer)
        index += 1
    return writer.finalize(expected_shards=index)


# ----------------------------------------------------------------------------- reading


@dataclass
class Pool:
    """A pool as read back: the validated rows and their provenance."""

    path: Path
    dataset: Any  # datasets.Dataset with POOL_FEATURES
    meta: dict

    @property
    def method(self) -> str:
        return self.meta.get("method", "?")

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.name

    def __len__(self) -> int:
        return len(self.dataset)


def resolve_pool_path(path_or_id: str) -> Path:
    """A local pool folder, or a Hub dataset id (`org/name` or `org/name@revision`) downloaded,
    or taken from the cache, as one."""
    path = Path(path_or_id)
    if path.exists():
        return path
    repo_id, _, revision = str(path_or_id).partition("@")
    parts = repo_id.split("/")
    if len(parts) == 2 and all(parts) and not repo_id.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision or None))
        except Exception as exc:  # offline, 401/404...: one line, never a token
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise PoolError(f"cannot fetch pool {path_or_id!r} from the Hub: {type(exc).__name__}: {first}") from None
    raise PoolError(f"{path_or_id}: no such pool folder")


def load_pool(path_or_id: str | os.PathLike, allow_partial: bool = False) -> Pool:
    """Read and validate a pool; refuse wrong schemas and unfinished pools with a clear error."""
    import pyarrow.parquet as pq
    from datasets import Features, load_dataset

    path = resolve_pool_path(str(path_or_id))
    meta_path = path / POOL_META
    if not meta_path.exists():
        raise PoolError(f"{path}: not a pool (no {POOL_META})")
    meta = json.loads(meta_path.read_text())
    version = meta.get("schema_version")
    if version != POOL_SCHEMA_VERSION:
        raise SchemaError(f"{path}: pool schema v{version}, this mat-plus reads v{POOL_SCHEMA_VERSION}")
    if meta.get("status") != "complete" and not allow_partial:
        raise PoolError(f"{path}: pool is not finished (status {meta.get('status')!r}); re-run its generate command to resume it")
    shards = sorted((path / DATA_DIR).glob("*.parquet"))
    if not shards:
        raise PoolError(f"{path}: pool has no data shards")
    for shard in shards:
        features = Features.from_arrow_schema(pq.read_schema(shard))
        check_pool_features(features, f"{path.name}/{DATA_DIR}/{shard.name}")
    dataset = load_dataset("parquet", data_files=[str(s) for s in shards], split="train", features=POOL_FEATURES)
    return Pool(path=path, dataset=dataset, meta=meta)
