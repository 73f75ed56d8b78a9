"""Training data: items of the train split, their 1:N pool views, and each step's batch.

**Item.** One (image, caption) pair of the train split, as in CLIP fine-tuning on Flickr30k or
COCO: an image with 5 captions gives 5 items. Items of the same image share a *key* (the index of
the source image), and the contrastive loss treats everything with one key as positives of each
other, never as negatives.

**Pool views of an item** (image i, caption c), from each selected pool:

* a "text" row of image i (tied to caption c, or to no caption: index -1) -> (image i, new caption);
* an "image" row of image i (tied to c or -1)                            -> (new image, caption c);
* a "pair" row of image i (tied to c or -1)                              -> (new image, new caption).

**Pool draw** (`pool_mode="sample"`, MAT+): each step, each item of the batch keeps its original
pair with probability `p_original`; otherwise one pool is chosen in proportion to `pool_weights`
among the pools that have views of the item, and one of that pool's views uniformly. Items with no
view anywhere keep the original. A draw is counted for the pool whose row was used.

`pool_mode="expand"` (the control without 1:N modelling) adds every pool row to the epoch as an
extra, independent entry (an untied image row takes a caption of its image, drawn per epoch); a
draw is then a pool entry landing in a batch. Keys still follow the source image.

**Determinism.** The batch of global micro-step m is a function of (seed, m) only: the epoch's
order is a permutation seeded by (seed, epoch), and each *slot* of that order (its position in
the epoch) seeds its own pool draw and random crop with (seed, epoch, slot). Every process
computes the same global plan and materialises its own slice, so draw counts need no
communication, `--resume` replays the same data, and what an epoch shows does not depend on the
number of processes, the batch size or gradient accumulation.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from augment.errors import PoolError
from augment.seeds import derive_seed  # noqa: F401  (re-exported: the trainer imports it from here)
from train.config import ConfigError

log = logging.getLogger(__name__)

ORIGINAL = "original"  # name under which draws of the original pair are counted
_NO_POOL = -1


# ----------------------------------------------------------------------------- pools


@dataclass
class PoolViews:
    """One pool, checked against the train split, indexed by the items it augments."""

    name: str
    dataset: Any  # datasets.Dataset with POOL_FEATURES
    modality: list[str]
    caption: list[str | None]
    image_index: np.ndarray  # train image index of each row
    caption_index: np.ndarray  # source caption index of each row (-1: tied to no caption)
    tied: dict[tuple[int, int], list[int]]  # (image, caption) -> rows tied to that caption
    untied: dict[int, list[int]]  # image -> rows tied to no caption
    _image_column: Any = None

    def views_of(self, image: int, caption: int) -> list[int]:
        return self.tied.get((image, caption), []) + self.untied.get(image, [])

    def image(self, row: int):
        """The row's image by the sources' one decoding rule (`open_image`: no EXIF rotation); an
        unreadable one is a SourceError naming the pool and the row, in a loader process too."""
        from augment.sources import open_image, undecoded

        if self._image_column is None:
            self._image_column = undecoded(self.dataset.select_columns(["image", "row_id"]))
        stored = self._image_column[int(row)]
        return open_image(stored["image"], where=f"pool {self.name} row {int(row)} ({stored['row_id']})")

    def __len__(self) -> int:
        return len(self.modality)


def _columns(dataset: Any, *names: str) -> list[list]:
    """Whole columns as Python lists, read through arrow (`augment.sources.arrow_columns`):
    iterating `dataset[name]` goes row by row (seconds for a 20,000-image source, not milliseconds)."""
    from augment.sources import arrow_columns

    return [column.to_pylist() for column in arrow_columns(dataset, list(names))]


class _ListColumn:
    """An arrow list column read one row at a time (`column[i]` is a Python list): the trainer
    draws a few captions per step, and turning every caption of a 20,000-image source into
    Python objects up front cost most of its start-up."""

    def __init__(self, dataset: Any, name: str):
        import pyarrow as pa

        from augment.sources import arrow_columns

        [column] = arrow_columns(dataset, [name])
        self.array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> list:
        return self.array[int(index)].as_py()

    def __iter__(self):  # every row (the captioning task's reference table): one conversion
        return iter(self.array.to_pylist())

    def lengths(self) -> np.ndarray:
        import pyarrow.compute as pc

        return pc.list_value_length(self.array).to_numpy(zero_copy_only=False).astype(np.int64)


def _pool_names(pools: Sequence[Any]) -> list[str]:
    """Each pool's name, made unique (a pool given twice counts its draws separately)."""
    names, seen = [], Counter()
    for pool in pools:
        base = pool.name
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def pool_identity(pool: Any) -> dict:
    """What tells one pool's rows from another's in the same folder: its method, row count and finish stamp
    (`augment.pool`: kept by a re-run that writes no shard, new when rows are written), not its path (a
    pool moved or copied with its pool.json is the same pool)."""
    return {key: pool.meta.get(key) for key in ("method", "num_rows", "finished")}


def described_pool(identity: dict) -> str:
    """A `pool_identity` in a refusal's words: `finished STAMP, N rows of METHOD`."""
    return f"finished {identity.get('finished')}, {identity.get('num_rows')} rows of {identity.get('method')}"


# in `train --resume`'s refusal of a pool made again since the run began (the study trains such a run again)
POOL_MADE_AGAIN = "is another pool than the run trained on"


def check_same_data_on_every_process(data: "TrainData", world_size: int) -> None:
    """Under torchrun every process reads the source and the pools itself: a pool that an `augment generate
    --overwrite` or `select` swapped in between two processes' reads (or a source replaced meanwhile) gave
    them different rows, unchecked, while a checkpoint's state records process 0's. After loading, the
    processes gather their small record (`pool_identity` of each pool, the source's fingerprint) and all
    refuse in one line when one differs from process 0's."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    from accelerate.utils import gather_object

    every = gather_object([{"source": data.fingerprint, "pools": data.pool_identities}])
    first = every[0]
    for rank, record in enumerate(every[1:], start=1):
        if record["source"] != first["source"]:
            raise PoolError(f"process {rank} read another training source than process 0 (fingerprint "
                            f"{record['source']}, process 0's {first['source']}): it was replaced while the processes "
                            "read it; run again once it is no longer being written")
        for (name, theirs), ours in zip(record["pools"].items(), first["pools"].values()):
            if theirs != ours:
                raise PoolError(
                    f"pool {name}: process {rank} read another pool than process 0 ({described_pool(theirs)}; "
                    f"process 0: {described_pool(ours)}): it was replaced "
                    "while the processes read it (an augment generate --overwrite or select into it); run again "
                    "once that is done")


def index_pool(pool: Any, name: str, train_index: dict[str, int], caption_counts: Sequence[int],
               all_ids: dict[str, str], fingerprint: str, allow_mismatch: bool) -> PoolViews:
    """Check that `pool` fits the train split and index its rows; refuse it with PoolError if not.

    Refused: rows naming image ids the source lacks, rows of images outside the train split (they
    would leak evaluation data), caption indices the image does not have, unknown modalities, and
    (unless `allow_mismatch`) a pool made from a source with another fingerprint.
    """
    from augment.sources import arrow_columns

    where = f"pool {name} ({pool.path})"
    made_from = pool.meta.get("source_fingerprint")
    if made_from and made_from != fingerprint:
        message = (f"{where} was made from another source (fingerprint {made_from}, this source "
                   f"{fingerprint})")
        if not allow_mismatch:
            raise PoolError(message + "; pass --allow-pool-mismatch to use it anyway")
        log.warning("%s; used anyway (--allow-pool-mismatch)", message)
    elif not made_from and not allow_mismatch:  # every pool this project writes records it
        raise PoolError(f"{where} records no source fingerprint, so nothing shows it was made from this source "
                        "(its ids could name other images); pass --allow-pool-mismatch to use it anyway")
    # whole columns through arrow (`_columns`): `dataset[name]` is read row by row, each pass formatting
    # every row (nine passes; 2.5 min of start-up for a 600k-row pool, COCO's 118k images x 5 captions)
    image_ids, caption_indices, modalities, captions = _columns(
        pool.dataset, "source_image_id", "source_caption_index", "modality", "caption")
    [row_id_column] = arrow_columns(pool.dataset, ["row_id"])  # only an error names a row: no list of them

    def row_id(row: int) -> str:  # how errors name a row: its position alone means nothing to a user
        return row_id_column[row].as_py()

    unknown = sorted({i for i in image_ids if i not in all_ids})
    if unknown:
        raise PoolError(f"{where}: {len(unknown)} source image ids are not in the source "
                        f"(e.g. {unknown[:3]}); was it made from another dataset?")
    outside = sorted({i for i in image_ids if i not in train_index})
    if outside:
        splits = sorted({all_ids[i] for i in outside})
        why = ("training on them would leak evaluation data" if set(splits) & {"val", "test"} else
               f"they are outside the split trained on: join {'+'.join(splits)} to --train-split (e.g. "
               "train+restval) or make the pool from the split trained on")
        raise PoolError(f"{where}: rows augment {len(outside)} images of split(s) {splits} "
                        f"(e.g. {outside[:3]}); {why}")
    bad_modality = sorted({m for m in modalities if m not in ("text", "image", "pair")})
    if bad_modality:
        raise PoolError(f"{where}: unknown modalities {bad_modality}")

    image_index = np.fromiter((train_index[i] for i in image_ids), dtype=np.int64, count=len(image_ids))
    caption_index = np.asarray(caption_indices, dtype=np.int64)
    counts = np.asarray(caption_counts, dtype=np.int64)[image_index] if len(image_index) else np.zeros(0, np.int64)
    wrong = np.flatnonzero((caption_index < -1) | (caption_index >= counts))
    if len(wrong):
        row = int(wrong[0])
        raise PoolError(f"{where}: row {row} ({row_id(row)}) ties to caption {caption_index[row]} of image "
                        f"{image_ids[row]!r}, which has {counts[row]} captions")
    for row, (modality, caption) in enumerate(zip(modalities, captions)):
        if modality in ("text", "pair") and not (caption or "").strip():
            raise PoolError(f"{where}: {modality} row {row} ({row_id(row)}) has no caption")

    tied: dict[tuple[int, int], list[int]] = defaultdict(list)
    untied: dict[int, list[int]] = defaultdict(list)
    for row, (image, caption) in enumerate(zip(image_index.tolist(), caption_index.tolist())):
        if caption < 0:
            untied[image].append(row)
        else:
            tied[(image, caption)].append(row)
    if not len(image_index):
        log.warning("%s has no rows; it will never be drawn", where)
    return PoolViews(name, pool.dataset, modalities, captions, image_index, caption_index,
                     dict(tied), dict(untied))


# ----------------------------------------------------------------------------- batch plans


@dataclass(frozen=True)
class View:
    """What one batch position shows: an item's original pair or one pool row of it."""

    key: int  # train image index: positives share it
    caption: int  # the item's source caption index
    pool: int = _NO_POOL  # index into the pools, -1 for the original pair
    row: int = -1  # row in that pool
    slot: int = -1  # position in the epoch's order: seeds this view's draw and crop


@dataclass
class BatchPlan:
    """The global micro-batch of one step: its views and how many came from each pool."""

    micro_step: int
    epoch: int
    views: list[View]
    draws: dict[str, int] = field(default_factory=dict)

    def local(self, rank: int, per_process: int) -> list[View]:
        return self.views[rank * per_process:(rank + 1) * per_process]


@dataclass
class Batch:
    """One process's share of a step: [0, 1] pixels, captions, keys."""

    pixels: torch.Tensor  # [B, 3, H, W], unnormalised
    texts: list[str]
    keys: torch.Tensor  # [B] long: train image index
    sources: list[str]  # "original" or the pool name, per position

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread (pin_memory=True on CUDA)."""
        return dataclasses.replace(self, pixels=self.pixels.pin_memory(), keys=self.keys.pin_memory())


class TrainData:
    """The train split as items (or expand-mode entries), plus the selected pools' views."""

    def __init__(self, source: Any, pools: Sequence[Any] = (), *, split: str = "train",
                 pool_weights: Sequence[float] | None = None, p_original: float = 0.5,
                 pool_mode: str = "sample", seed: int = 0, allow_pool_mismatch: bool = False, grad_accum: int = 1):
        from augment.sources import select_split, source_fingerprint, undecoded, warn_of_restval_left_out

        self.seed = int(seed)
        # an epoch is whole optimizer steps: the micro-batches left over are dropped, as open_clip_train
        # drops an epoch's last partial batches, so --epochs and --val-frequency count passes over the data
        self.grad_accum = int(grad_accum)
        self.pool_mode = pool_mode
        self.p_original = float(p_original)
        self.source = source  # every split (in-training validation reads its val split)
        self.fingerprint = source_fingerprint(source)
        if split == "all":
            # every row trained on, the val/test images `train eval` and --val-frequency measure on among them
            # (and pools made from them let through: the pool check compares with the chosen split)
            [splits] = _columns(source, "split")
            held_out = sum(1 for name in splits if name in ("val", "test"))
            if held_out:
                raise ConfigError(f"--train-split all would train on the source's {held_out} val/test images, "
                                  "which evaluation measures on; train on --train-split train")
        self.train = select_split(source, split)
        warn_of_restval_left_out(source, split, "--train-split")
        [self.image_ids] = _columns(self.train, "image_id")
        self.captions = _ListColumn(self.train, "captions")
        self._images = undecoded(self.train.select_columns(["image"]))  # decoded by source_image, naming the record
        train_index = {image_id: i for i, image_id in enumerate(self.image_ids)}
        all_ids = dict(zip(*_columns(source, "image_id", "split"))) if pools else {}  # only pools need them
        caption_counts = self.captions.lengths()
        self.pool_names = _pool_names(pools)
        # which pools' rows are trained on, recorded in a checkpoint's state: a pool regenerated in its folder
        # (generate --overwrite) between a kill and the resume would otherwise go on with other rows unseen
        self.pool_identities = {name: pool_identity(pool) for pool, name in zip(pools, self.pool_names)}
        self.pools = [
            index_pool(pool, name, train_index, caption_counts, all_ids, self.fingerprint, allow_pool_mismatch)
            for pool, name in zip(pools, self.pool_names)
        ]
        weights = list(pool_weights) if pool_weights is not None else [1.0] * len(self.pools)
        self.pool_weights = np.asarray(weights, dtype=np.float64)

        # items: every (image, caption) pair of the split, in the source's order
        self.item_image = np.repeat(np.arange(len(self.image_ids)), caption_counts)
        starts = np.cumsum(caption_counts) - caption_counts  # each image's first item
        self.item_caption = (np.arange(len(self.item_image)) - np.repeat(starts, caption_counts)).astype(np.int64)
        entries_image, entries_caption = [self.item_image], [self.item_caption]
        entries_pool, entries_row = [np.full(len(self.item_image), _NO_POOL)], [np.full(len(self.item_image), -1)]
        if pool_mode == "expand":
            for k, pool in enumerate(self.pools):
                entries_image.append(pool.image_index)
                entries_caption.append(pool.caption_index)
                entries_pool.append(np.full(len(pool), k))
                entries_row.append(np.arange(len(pool)))
        self.entry_image = np.concatenate(entries_image)
        self.entry_caption = np.concatenate(entries_caption)
        self.entry_pool = np.concatenate(entries_pool)
        self.entry_row = np.concatenate(entries_row)
        self._order_cache: tuple[int, np.ndarray] | None = None

    # sizes -------------------------------------------------------------------------------------

    @property
    def num_items(self) -> int:
        return len(self.item_image)

    @property
    def num_entries(self) -> int:
        """Items, plus every pool row in expand mode: what one epoch goes through."""
        return len(self.entry_image)

    def micro_steps_per_epoch(self, global_batch: int) -> int:
        return self.num_entries // global_batch // self.grad_accum * self.grad_accum

    # planning ----------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng(derive_seed(self.seed, "order", epoch))
            self._order_cache = (epoch, rng.permutation(self.num_entries))
        return self._order_cache[1]

    def plan(self, micro_step: int, global_batch: int) -> BatchPlan:
        """The global micro-batch number `micro_step` (0-based, counted over the whole run)."""
        per_epoch = self.micro_steps_per_epoch(global_batch)
        if per_epoch < 1:
            raise ConfigError(f"the train split has {self.num_entries} entries, fewer than one global "
                              f"batch of {global_batch}; lower --batch-size")
        epoch, position = divmod(micro_step, per_epoch)
        first = position * global_batch
        entries = self._epoch_order(epoch)[first:first + global_batch]
        views = []
        for slot, entry in enumerate(entries.tolist(), start=first):
            rng = np.random.default_rng(derive_seed(self.seed, "draw", epoch, slot))
            if self.pool_mode == "expand":
                view = self._expand_view(entry, rng)
            else:
                view = self._sample_view(int(self.entry_image[entry]), int(self.entry_caption[entry]), rng)
            views.append(dataclasses.replace(view, slot=slot))
        draws = Counter({name: 0 for name in [ORIGINAL, *self.pool_names]})
        draws.update(ORIGINAL if v.pool == _NO_POOL else self.pool_names[v.pool] for v in views)
        return BatchPlan(micro_step, epoch, views, dict(draws))

    def _sample_view(self, image: int, caption: int, rng: np.random.Generator) -> View:
        # draw order is fixed (one uniform, then pool, then row) so a plan depends on seeds only
        keep = rng.random() < self.p_original
        if keep or not self.pools:
            return View(image, caption)
        candidates = [(k, self.pools[k].views_of(image, caption)) for k in range(len(self.pools))]
        candidates = [(k, rows) for k, rows in candidates if rows and self.pool_weights[k] > 0]
        if not candidates:
            return View(image, caption)
        weights = np.asarray([self.pool_weights[k] for k, _ in candidates])
        choice = rng.choice(len(candidates), p=weights / weights.sum())
        k, rows = candidates[choice]
        return View(image, caption, k, int(rows[rng.integers(len(rows))]))

    def _expand_view(self, entry: int, rng: np.random.Generator) -> View:
        image, caption = int(self.entry_image[entry]), int(self.entry_caption[entry])
        pool = int(self.entry_pool[entry])
        if caption < 0:  # an untied pool row: an image row needs one of its image's captions, drawn per epoch
            caption = int(rng.integers(len(self.captions[image])))
        return View(image, caption, pool, int(self.entry_row[entry]))

    # materialising ------------------------------------------------------------------------------

    def source_image(self, image: int):
        from augment.sources import open_record_image

        return open_record_image(self._images[int(image)]["image"], self.image_ids[int(image)])

    def view_content(self, view: View) -> tuple[Any, str, str]:
        """(PIL image, caption, source name) of a view."""
        if view.pool == _NO_POOL:
            return self.source_image(view.key), self.captions[view.key][view.caption], ORIGINAL
        pool = self.pools[view.pool]
        modality = pool.modality[view.row]
        image = pool.image(view.row) if modality in ("image", "pair") else self.source_image(view.key)
        caption = pool.caption[view.row] if modality in ("text", "pair") else self.captions[view.key][view.caption]
        return image, caption, pool.name

    def materialise(self, plan: BatchPlan, rank: int, per_process: int,
                    preprocess: Callable[[Any], torch.Tensor]) -> Batch:
        """Decode and preprocess this process's share of the plan.

        Each image's random augmentation is seeded by (seed, epoch, slot), so it does not depend
        on which process or DataLoader worker handles it, nor on the batch size.
        """
        from augment.sources import large_images_named

        views = plan.local(rank, per_process)
        pixels, texts, sources = [], [], []
        for view in views:
            image, caption, source = self.view_content(view)
            crop_seed = derive_seed(self.seed, "crop", plan.epoch, view.slot)
            # every RNG a transform may draw from (torchvision: torch; others: random, NumPy)
            # (torch's CPU stream only: torch.manual_seed also seeds every accelerator, ~200x slower)
            torch.default_generator.manual_seed(crop_seed)
            random.seed(crop_seed)
            np.random.seed(crop_seed % (2**32))
            with large_images_named():  # a random crop of a very large image: named once by its decoding
                pixels.append(preprocess(image))
            texts.append(caption)
            sources.append(source)
        keys = torch.tensor([v.key for v in views], dtype=torch.long)
        return Batch(torch.stack(pixels), texts, keys, sources)


class MicroBatches(torch.utils.data.Dataset):
    """Map-style dataset of one process's micro batches, indexed by the global micro step.

    Item m is (plan, batch) of micro step m: a DataLoader over `range(first, last)` with
    `batch_size=None` decodes whole micro batches in its workers, ahead of the loop, and because a
    batch depends on (seed, m) only it is the same whichever worker (or the main process, with 0
    workers) makes it.
    """

    def __init__(self, data: TrainData, global_batch: int, rank: int, per_process: int,
                 preprocess: Callable[[Any], torch.Tensor]):
        self.data, self.global_batch, self.rank, self.per_process = data, global_batch, rank, per_process
        self.preprocess = preprocess

    def __getitem__(self, micro_step: int) -> tuple[BatchPlan, Batch] | "_Failed":
        try:
            plan = self.data.plan(int(micro_step), self.global_batch)
            return plan, self.data.materialise(plan, self.rank, self.per_process, self.preprocess)
        except Exception as exc:  # noqa: BLE001 - re-raised as itself by `micro_batches`
            return _Failed(exc)


class _Failed:
    """An exception a worker caught, carried back whole: torch would re-raise it wrapped in a new
    one whose first line names the worker, not the bad image (as augment.loading does)."""

    def __init__(self, exception: Exception):
        self.exception = exception


# what a dead loader worker's one line (`augment.loading.worker_death`) says to do next
AFTER_WORKER_DEATH = "--resume latest continues from the last checkpoint"


def _keep_items(item):
    """collate_fn of `batch_size=None` loaders whose items are already batches."""
    return item


def micro_batches(dataset: MicroBatches, first: int, last: int, workers: int, pin_memory: bool,
                  prefetch: int = 2):
    """(plan, batch) for micro steps first..last-1 in order, decoded by a DataLoader with `workers`
    processes (0: in this process), `prefetch` batches ahead per worker, pinned when asked."""
    from augment.loading import raise_worker_death, worker_options

    options = {}
    if workers > 0:
        options = {"prefetch_factor": prefetch, "persistent_workers": True, **worker_options(workers)}
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(first, last), num_workers=workers,
                                         pin_memory=pin_memory, collate_fn=_keep_items, **options)
    items = iter(loader)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except RuntimeError as exc:
            raise_worker_death(exc, AFTER_WORKER_DEATH, workers)
        if isinstance(item, _Failed):
            raise item.exception
        yield item


def load_train_data(config, progress: bool = False, report_skipped: bool = True) -> TrainData:
    """Read the source and the pools named in `config` and check that they fit together; with
    --skip-bad the skipped records' report is written (`report_skipped`: by one process)."""
    from augment.pool import load_pool
    from augment.sources import check_skip_report_target, load_source

    if config.skip_bad and config.skip_report:  # named: refused before the source is read, as every command does
        check_skip_report_target(config.skip_report, config.train_data)
    source, report = load_source(config.train_data, image_root=config.image_root, split=config.source_split,
                                 skip_bad=config.skip_bad, validate=config.validate, progress=progress,
                                 allow_outside_root=config.allow_outside_root, csv_img_key=config.csv_img_key,
                                 csv_caption_key=config.csv_caption_key, csv_separator=config.csv_separator)
    if report.skipped and report_skipped:
        target = report.write_skipped(config.skip_report, config.out)
        print(f"skipped {len(report.skipped)} bad records; report: {target}", file=sys.stderr)
    pools = [load_pool(path) for path in config.pools]
    return TrainData(source, pools, split=config.train_split, pool_weights=config.pool_weights,
                     p_original=config.p_original, pool_mode=config.pool_mode, seed=config.seed,
                     allow_pool_mismatch=config.allow_pool_mismatch, grad_accum=config.grad_accum)
