"""Select a sub-pool by method, modality and stored per-row scores.

Filters apply in this order:

1. row filters: `methods`, `modality`, `min_alignment` <= alignment <= `max_alignment`;
2. `top_k_per_item`: per item (source image, source caption index) the K best-aligned rows
   (ties keep pool order);
3. `max_per_item`: per item at most K rows, the first in pool order (deterministic).

Alignment filters and top-k need the scores `augment score` stored beside the pool; the other
filters do not. The selected pool keeps the parent's rows unchanged (images byte for byte) and
records its provenance in pool.json: method "select", `parent` (path and pool.json less its per-shard `shard_inputs`), the
filters and the scorer.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from augment.errors import PoolError
from augment.schema import MODALITIES
from augment.source_formats import TABLE_KEYS


@dataclass
class SelectFilters:
    min_alignment: float | None = None
    max_alignment: float | None = None
    max_per_item: int | None = None
    top_k_per_item: int | None = None
    methods: list[str] = field(default_factory=list)
    modality: str | None = None

    def needs_scores(self) -> bool:
        return self.min_alignment is not None or self.max_alignment is not None or self.top_k_per_item is not None

    def check(self) -> None:
        if self.modality is not None and self.modality not in MODALITIES:
            raise PoolError(f"--modality must be one of {list(MODALITIES)}, got {self.modality!r}")
        for name in ("max_per_item", "top_k_per_item"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PoolError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.min_alignment is not None and self.max_alignment is not None and self.min_alignment > self.max_alignment:
            raise PoolError(f"--min-alignment {self.min_alignment} is above --max-alignment {self.max_alignment}")


def pool_columns(pool, names: list[str]) -> dict[str, np.ndarray]:
    table = pool.dataset.select_columns(names).with_format("arrow")[:]
    return {name: table[name].to_numpy(zero_copy_only=False) for name in names}


def row_alignment(pool, scorer: str | None) -> tuple[np.ndarray, dict]:
    """Per-row alignment in pool order from the stored side table, and the scorer entry.

    PoolError when the pool has no scores (of that scorer) or they miss some of its rows.
    """
    import pyarrow.compute as pc

    from augment.scoring import store

    with store.reading_scores(pool.path):  # an entry and its table of one run, not of a re-score half-way
        entry = store.find_scorer_entry(pool.path, scorer)
        hint = f"run `augment score {pool.path} --scorer {entry['scorer']['name']}` again"
        if not store.scored_as_it_is(entry, pool):
            raise PoolError(f"{pool.path}: the pool's data files changed (rewritten, copied without their times, or exported by augment push) "
                            f"after it was scored; {hint}")
        table = store.read_entry_table(pool.path, entry, "rows", ["row_id", "alignment"])  # this entry's run's table only
    row_ids = pool.dataset.select_columns(["row_id"]).with_format("arrow")[:]["row_id"]
    positions = pc.index_in(row_ids, value_set=table["row_id"].combine_chunks())
    missing = positions.null_count
    if missing:
        raise PoolError(f"{pool.path}: {missing} rows have no stored scores (the pool changed since it was scored); {hint}")
    alignment = table["alignment"].combine_chunks().take(positions)
    return alignment.to_numpy(zero_copy_only=False), entry


def select_rows(pool, filters: SelectFilters, scorer: str | None = None) -> tuple[np.ndarray, dict | None]:
    """(indices of the selected rows in pool order, the scorer entry used or None)."""
    filters.check()
    if scorer is not None and not filters.needs_scores():  # it would be silently ignored
        raise PoolError(f"--scorer {scorer} is read only by --min-alignment, --max-alignment and --top-k-per-item: "
                        "leave it out or add one of them")
    columns = pool_columns(pool, ["source_image_id", "source_caption_index", "modality", "method"])
    keep = np.ones(len(pool), dtype=bool)
    if filters.methods:
        present = set(np.unique(columns["method"]).tolist())
        absent = [method for method in filters.methods if method not in present]
        if absent:  # a typo kept nothing of that method, silently (a selection over pools of other methods may mean it)
            print(f"warning: --methods {','.join(absent)}: no row of {pool.path} has "
                  f"{'that method' if len(absent) == 1 else 'these methods'} (its methods: {', '.join(sorted(present))})",
                  file=sys.stderr)
        keep &= np.isin(columns["method"], filters.methods)
    if filters.modality:
        keep &= columns["modality"] == filters.modality
    alignment, entry = (None, None)
    if filters.needs_scores():
        alignment, entry = row_alignment(pool, scorer)
        keep &= np.isfinite(alignment)  # a row without a score (NaN) passes no score filter, top-k included
        if filters.min_alignment is not None:
            keep &= alignment >= filters.min_alignment
        if filters.max_alignment is not None:
            keep &= alignment <= filters.max_alignment
    kept = np.flatnonzero(keep)
    items = [(a, int(c)) for a, c in zip(columns["source_image_id"][kept], columns["source_caption_index"][kept])]
    if filters.top_k_per_item is not None:
        kept, items = _per_item(kept, items, filters.top_k_per_item, rank=-alignment[kept])
    if filters.max_per_item is not None:
        kept, items = _per_item(kept, items, filters.max_per_item, rank=None)
    return kept, entry


def _per_item(indices: np.ndarray, items: list, limit: int, rank: np.ndarray | None) -> tuple[np.ndarray, list]:
    """At most `limit` rows per item: the lowest `rank` (stable), else the first in pool order."""
    order = np.argsort(rank, kind="stable") if rank is not None else np.arange(len(indices))
    taken: dict = {}
    chosen = []
    for position in order:
        item = items[position]
        if taken.get(item, 0) < limit:
            taken[item] = taken.get(item, 0) + 1
            chosen.append(position)
    chosen = np.sort(np.asarray(chosen, dtype=np.int64))  # back to pool order
    return indices[chosen], [items[p] for p in chosen]


ROW_BLOCK_BYTES = 64 * 2**20  # rows `iter_rows` reads at a time, in bytes of the pool's table


def iter_rows(pool, indices: np.ndarray):
    """The selected rows as dicts, images in their stored form ({"bytes", "path"}, undecoded) so their
    bytes are copied unchanged: taken from the pool's arrow table a block at a time (datasets' row
    formatting, a select of the rows then one formatted row each, was most of a selection's time: 55 s
    for 600k rows)."""
    from augment.sources import table_positions, take_table_rows

    table = pool.dataset.data.table
    positions = table_positions(pool.dataset, indices)  # once for all blocks (a selected or shuffled pool's rows)
    # a block of rows is Python objects at once: at most ROW_BLOCK_BYTES of the table's rows on average
    # (1,000 rows of 800 KB images were 800 MB, then as much again in the arrow rows they came from)
    block = int(max(1, min(1000, ROW_BLOCK_BYTES // max(table.nbytes / max(table.num_rows, 1), 1))))
    for start in range(0, len(positions), block):
        yield from take_table_rows(table, positions[start:start + block]).to_pylist()


def select_pool(pool, out: str, filters: SelectFilters, scorer: str | None = None, overwrite: bool = False,
                allow_empty: bool = False) -> dict:
    """Write the selected rows of `pool` as a new pool at `out`; return its pool.json.

    A selection that keeps no row is refused (nothing is written) unless `allow_empty`.
    """
    from augment.atomic import output_folder_problem
    from augment.pool import folders_overlap, write_pool

    problem = output_folder_problem(Path(out))
    if problem:
        raise PoolError(f"{out}: {problem}; choose another --out")
    if folders_overlap(out, pool.path):  # --overwrite would delete the shards it reads: the pool replaced by its subset
        raise PoolError(f"{out}: overlaps the pool folder {pool.path}; choose another --out")
    indices, entry = select_rows(pool, filters, scorer)
    if len(indices) == 0 and not allow_empty:
        raise PoolError(f"{pool.path}: no row of {len(pool)} passes the filters ({describe_filters(filters)}); "
                        f"nothing written to {out} (--allow-empty writes an empty pool anyway)")
    meta = selection_meta(pool, out, filters, entry, len(indices))
    return write_pool(out, iter_rows(pool, indices), meta, overwrite=overwrite)


def describe_filters(filters: SelectFilters) -> str:
    chosen = {k: v for k, v in asdict(filters).items() if v not in (None, [], "")}
    return ", ".join(f"{k}={v}" for k, v in chosen.items()) or "no filters"


def selection_meta(pool, out: str, filters: SelectFilters, entry: dict | None, selected: int) -> dict:
    parent = pool.meta
    return {
        "name": Path(out).name,
        "method": "select",
        "modality": filters.modality or parent.get("modality"),
        "model": None,
        # the identity keys a resume compares: selecting again with other filters needs --overwrite
        "params": {"filters": asdict(filters), "scorer": entry["scorer"]["id"] if entry else None},
        "seed": parent.get("seed"),
        "n": parent.get("n"),
        "split": parent.get("split"),
        "limit": parent.get("limit"),
        "source": parent.get("source"),
        "image_root": parent.get("image_root"),
        "source_split": parent.get("source_split"),
        "source_format": parent.get("source_format"),
        **{key: parent[key] for key in TABLE_KEYS if parent.get(key) is not None},
        "source_fingerprint": parent.get("source_fingerprint"),
        "source_items": parent.get("source_items"),
        # the parent's provenance without its per-shard input fingerprints: its resume's own check, one
        # entry per shard (megabytes at --shard-size 1 on a large source), copied into every selection
        "parent": {"path": str(Path(pool.path).resolve()), "meta": {k: v for k, v in parent.items() if k != "shard_inputs"}},
        "filters": asdict(filters),
        "scorer": entry["scorer"] if entry else None,
        "selected_rows": selected,
        "parent_rows": len(pool),
    }
