"""The generator interface and the sharded, resumable, multi-process run that drives it.

A generator turns a batch of source items into pool rows. `run_generation` owns everything
around it: split and `--limit` selection, work units (shards of source items in a fixed order),
skipping finished shards (resume), progress, the share of shards each process takes under
`accelerate launch`/`torchrun`, and `pool.json`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from augment.pool import (DATA_DIR, POOL_META, SHARD_PATTERN, PoolWriter, finish_interrupted_swap, holds_pool,
                          make_row_id, replacement_folder, sole_pool_writer, swap_in_replacement)
from augment.seeds import row_seed  # noqa: F401  (re-exported: generators import it from here)
from augment.sources import (arrow_columns, identities_fingerprint, image_identities, select_split,
                             shard_input_fingerprints, source_fingerprint, warn_of_restval_left_out)




class Generator(ABC):
    """One augmentation method. Subclasses set `method` and `modality` and implement `generate`."""

    method: str = ""
    modality: str = "text"  # "text" | "image" | "pair"
    model: str | None = None
    model_revision: str | None = None
    # whether `generate` reads the source's pixels: the pool then records which image files each
    # shard read (a kept shard whose files changed is refused), and other methods never decode an image
    reads_pixels: bool = False
    # whether a shard's rows depend on other items than the shard's (read in `prepare`): each shard's
    # recorded inputs then include the whole source's fingerprint, so any change to the source redoes all
    reads_other_items: bool = False
    # the version of what `generate` writes for the same params: raised when a change of the code
    # changes a pool's rows, so a pool an earlier mat-plus began is not resumed into a mix of both
    # (pool.json's "recipe"; a pool written before the key is recipe 1)
    recipe: int = 1
    # when the current recipe began (UTC, its commit's time): a pool created since then that records what
    # that code recorded (no key before pool.RECIPE_KEY_SINCE, the recipe before this one after) was made
    # by it, so its resume is not refused (pool._recipe_of_unrecorded)
    recipe_since: str | None = None
    # (done, total, unit) within the shard being made, from a model method's loop: set by `run_generation`
    # to the bar's postfix, since a shard of a real-size model takes minutes on a GPU and hours on a CPU
    # with nothing else moving on the screen; None: no one listens
    on_shard_progress: Callable[[int, int, str], None] | None = None
    # whether a run writes a shard from `iter_generate` (rows made as the writer reads them) rather than from
    # `generate`'s list: img-aug's, whose rows are all images
    lazy_rows: bool = False

    def shard_progress(self, done: int, total: int, unit: str) -> None:
        if self.on_shard_progress is not None:
            self.on_shard_progress(done, total, unit)

    def params(self) -> dict[str, Any]:
        """Every parameter that changes the output (recorded in pool.json and checked on resume)."""
        return {}

    def prepare(self, items) -> None:
        """Called once with every source item of the run (split and --limit applied) before the pool
        is created, for methods that need more than the shard at hand (e.g. `shuffle`; such a method
        sets `reads_other_items`) or refuse a source (SourceError: nothing is written)."""

    @abstractmethod
    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        """Return pool rows for `items` (source rows with decoded `image`, `captions`, ...).

        Use `self.row(...)` to build rows and `row_seed` for every random draw, so a row's
        content depends only on (seed, image id, caption index, k).
        """

    def iter_generate(self, items: list[dict], n: int, seed: int) -> Iterator[dict]:
        """`generate`'s rows one at a time (`PoolWriter.write_shard` reads them a slice at a time). A method
        whose rows hold large images makes them as they are read (and sets `lazy_rows`), so a shard's images
        are not all held at once; by default, `generate`'s list."""
        yield from self.generate(items, n, seed)

    def row(self, item: dict, caption_index: int, k: int, seed: int, *, caption: str | None = None,
            image: Any = None, modality: str | None = None, **provenance: Any) -> dict:
        return {
            "row_id": make_row_id(self.method, item["image_id"], caption_index, k),
            "source_image_id": item["image_id"],
            "source_caption_index": caption_index,
            "split": item.get("split", "train"),
            "modality": modality or self.modality,
            "image": image,
            "caption": caption,
            "method": self.method,
            "seed": row_seed(seed, item["image_id"], caption_index, k),
            "provenance": json.dumps(provenance, sort_keys=True, default=str),
        }

    def close(self) -> None:
        """Release models (GPU memory) when a run ends."""

    def pool_notes(self, items, n: int, num_rows: int) -> dict[str, Any]:
        """Entries for a finished pool's pool.json about what it lacks (e.g. images a safety checker
        flagged), from every source item of the run and the rows all its shards hold: taken when the
        pool is finished, so shards kept from an earlier run count too. Their `note` is printed.
        Called after `close`: it must not need the model."""
        return {}


def _show_shard_progress(bar, shard: str, done: int, total: int, unit: str) -> None:
    bar.set_postfix_str(f"{shard}: {done}/{total} {unit}")


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under accelerate launch / torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_generation(
    generator: Generator,
    source,
    out: str,
    *,
    n: int,
    seed: int = 0,
    split: str | None = "train",
    limit: int | None = None,
    shard_size: int = 256,
    overwrite: bool = False,
    source_name: str = "",
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    barrier=None,
    source_meta: dict | None = None,
    workers: int = 0,
    device_type: str | None = None,
) -> dict | None:
    """Generate the pool `out` from `source` (a SOURCE_FEATURES dataset); return pool.json's dict.

    With several processes each takes shards `rank, rank + world, ...`; after `barrier()` (all
    processes done) rank 0 writes the final pool.json. Shard boundaries depend only on the source,
    `split`, `limit` and `shard_size`, so the pool is the same whatever the number of processes.
    Returns None on ranks other than 0. `source_meta` (e.g. the image root) joins pool.json.
    `workers` DataLoader processes read and decode the next shards' source items while the
    generator works (in order: the pool does not depend on it). `device_type` (cuda, cpu, ...): where a
    model method samples, an identity key (another kind of device samples other rows); None for the
    methods that use no device. One run writes into `out` at a time (`sole_pool_writer`): another
    `augment generate` there meanwhile is refused in one line.
    """
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    with sole_pool_writer(out, rank, world_size):
        return _generate(generator, source, out, n=n, seed=seed, split=split, limit=limit, shard_size=shard_size,
                         overwrite=overwrite, source_name=source_name, progress=progress, rank=rank,
                         world_size=world_size, barrier=barrier, source_meta=source_meta, workers=workers,
                         device_type=device_type)


def _generate(generator: Generator, source, out: str, *, n: int, seed: int, split: str | None, limit: int | None,
              shard_size: int, overwrite: bool, source_name: str, progress: bool, rank: int, world_size: int,
              barrier, source_meta: dict | None, workers: int, device_type: str | None) -> dict | None:
    """`run_generation`, this process holding the pool's writer lock (or its rank 0 holding it)."""
    from augment.progress import progress_bar

    items = select_split(source, split)
    if rank == 0:
        warn_of_restval_left_out(source, split, "--split")
    if limit is not None:
        items = items.select(range(min(limit, len(items))))
    num_shards = max(1, math.ceil(len(items) / shard_size))
    fingerprint = source_fingerprint(source)
    images = image_identities(items) if generator.reads_pixels else None  # stats only: nothing decoded
    meta = {
        "name": os.path.basename(os.path.abspath(out)),  # `--out .` is the folder's name
        "method": generator.method,
        "modality": generator.modality,
        "model": generator.model,
        "model_revision": generator.model_revision,
        "params": generator.params(),
        "recipe": generator.recipe,
        "seed": seed,
        "n": n,
        "split": split,
        "limit": limit,
        "shard_size": shard_size,
        "source": source_name,
        "source_fingerprint": fingerprint,
        # what each shard is made from (with a pixel method: its image files): a resume keeps only the
        # shards whose inputs are unchanged, so fixing (or --skip-bad skipping) an image of a shard not
        # yet written does not stop it
        "shard_inputs": shard_input_fingerprints(items, shard_size, images, fingerprint if generator.reads_other_items else None),
        # which image files the whole run reads: what a pool written before `shard_inputs` is checked on
        **({"source_images": identities_fingerprint(images)} if images is not None else {}),
        "source_items": len(items),
        **({"device_type": device_type} if device_type else {}),
        **(source_meta or {}),
    }
    def describe_shard(index: int) -> str:  # a refused kept shard, named with its source images
        [column] = arrow_columns(items, ["image_id"])  # ids only: no image decoded
        ids = column[index * shard_size:(index + 1) * shard_size].to_pylist()
        span = f"{ids[0]!r}" if len(ids) == 1 else f"{ids[0]!r} to {ids[-1]!r}" if ids else "none now"
        return f"{DATA_DIR}/{SHARD_PATTERN.format(index=index)} (source images {span})"

    # before the pool exists: a method's refusal of this source (a procedural method on a source that is
    # not the sample world, shuffle with one image) left a pool.json that blocked the corrected command
    generator.prepare(items)
    # --overwrite over a pool: the new one is written inside its folder and swapped in when complete
    replacement = replacement_folder(out)
    if rank == 0:
        # rank 0 decides and creates the pool (or its replacement) before the others open it; a killed
        # replacement is scratch (--overwrite starts over) unless a SIGKILL cut its swap short
        finish_interrupted_swap(out)
        shutil.rmtree(replacement, ignore_errors=True)
        replacing = overwrite and holds_pool(Path(out))
        writer = (PoolWriter(replacement, meta, describe_shard=describe_shard) if replacing
                  else PoolWriter(out, meta, overwrite=overwrite, describe_shard=describe_shard,
                                  recipe_since=generator.recipe_since))
    else:
        holds_pool(Path(out))  # its refusal of a folder that is no pool, in every process (not a gloo error)
    if barrier is not None:
        barrier()
    if rank != 0:  # what rank 0 created (a late process deciding alone took its fresh pool.json for an old one)
        replacing = overwrite and (replacement / POOL_META).is_file()
        writer = PoolWriter(replacement if replacing else out, meta, describe_shard=describe_shard,
                            recipe_since=generator.recipe_since)
    finished = {k for k in range(num_shards) if writer.has_shard(k)}
    if finished and rank == 0:  # say so: the progress bar alone does not tell why it starts ahead
        print(f"resuming {out}: {len(finished)} of {num_shards} shards kept (--overwrite starts over)", file=sys.stderr)
    mine = [k for k in range(num_shards) if k % world_size == rank]
    todo = [k for k in mine if k not in finished]
    # kept shards as the bar's start (tqdm's `initial`): updated in after the bar opened, they showed only when
    # the first new shard was done (0 until then) and counted in the rate, as if made in that shard's time
    # the total is this process's shards (rank 0's bar): the whole source's left it at 1/WORLD_SIZE when done
    def shard_range(k: int) -> range:  # the source rows of shard k
        return range(k * shard_size, min((k + 1) * shard_size, len(items)))

    bar = progress_bar(total=sum(len(shard_range(k)) for k in mine), initial=sum(len(shard_range(k)) for k in mine if k not in todo),
                       desc=f"{generator.method} -> {meta['name']}", unit="item", disable=not progress or rank != 0)
    from augment.loading import SHARD_WORKERS, ordered_batches, raise_worker_death

    shard_rows = [shard_range(k) for k in todo]
    # a shard is the unit: decoding one takes far less than generating from it, so a worker or
    # two, one shard ahead each, keep the model fed without holding many decoded shards
    read = items if generator.reads_pixels else items.remove_columns(["image"])  # no image decoded for nothing
    after_worker_death = "re-run the same command to resume (finished shards are kept)"
    loader = ordered_batches(read, shard_rows, min(workers, SHARD_WORKERS), prefetch=1,
                             after_worker_death=after_worker_death)
    try:
        for k, batch in zip(todo, loader):
            if not bar.disable:
                generator.on_shard_progress = partial(_show_shard_progress, bar, f"shard {k + 1}/{num_shards}")
                if bar.postfix:  # the last shard's report ('shard 1/40: 256/256 images') is not this shard's
                    bar.set_postfix_str(f"shard {k + 1}/{num_shards}")
            made = generator.iter_generate if generator.lazy_rows else generator.generate
            writer.write_shard(k, made(batch, n, seed))
            bar.update(len(batch))
    except RuntimeError as exc:  # torch's SIGCHLD handler raises a worker's death wherever the main process is
        raise_worker_death(exc, after_worker_death)
    finally:
        generator.on_shard_progress = None
        bar.close()
        generator.close()
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    notes: dict = {}
    def pool_notes(num_rows: int) -> dict:
        notes.update(generator.pool_notes(items, n, num_rows))
        return notes
    meta = writer.finalize(expected_shards=num_shards, notes=pool_notes)
    if replacing:
        swap_in_replacement(out)
    if notes.get("note"):
        print(f"{out}: {notes['note']}", file=sys.stderr)
    return meta
