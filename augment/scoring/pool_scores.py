"""Score one pool against its source: per-row alignment, per-item diversity, distribution gap.

Definitions (the reference for everything `augment score` writes):

* **Alignment** of a row is the cosine of one image and one caption embedding:
  text rows: the source image with the row's new caption; pair rows: the row's image with its
  caption; image rows: the row's new image with the source caption it was made from
  (`source_caption_index`), and for image rows made from the image alone (index -1) the MEAN of
  the cosines with every caption of the source image (no single caption is "its" caption, and
  taking the first would be arbitrary). CLIPScore = 100 * max(alignment, 0).
* An **item** is (source image, source caption index): the 1:N set training draws from. Its text
  set is the original caption (all of the image's captions when the index is -1, e.g. captions
  generated from the image) plus every new caption of the item's rows; its image set is the
  source image plus every new image of the item's rows. **Diversity** of a set is its mean
  pairwise cosine distance and its Vendi score; a pool's diversity is the mean over its items
  (per modality).
* The **distribution gap** per modality compares the embeddings of the pool's new content with
  the source's content for the items the pool covers (their split(s)): all captions of those
  source images, or the images themselves. It is measured on a seeded uniform sample of at most
  `gap_samples` embeddings per side: Frechet distance and unbiased RBF MMD^2. Each sampled
  embedding keeps its source image id, and the intervals redraw those items, each draw bringing
  the item's pool rows and its source content together.

Rows are read and embedded in chunks that end at item boundaries, so memory does not grow with
the pool beyond a few numbers per row: at most `chunk_rows` rows, or fewer whose stored images reach
`chunk_bytes` (a chunk of 1,024 img-aug rows of 12 MP photos held ~23 GB of image bytes).
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from augment.errors import PoolError
from augment.sources import table_positions, table_rows, take_table_lists
from augment.scoring import measures, store
from augment.scoring.embeddings import Embedder

TEXT_CONTENT = ("text", "pair")  # modalities whose rows carry a new caption
IMAGE_CONTENT = ("image", "pair")  # ... a new image
ROW_COLUMNS = ["row_id", "source_image_id", "source_caption_index", "modality", "method", "caption", "image"]


@dataclass
class ScoreSettings:
    bootstrap: int = 1000  # resamples for the CIs of means (alignment, diversity)
    gap_bootstrap: int = 200  # resamples for the gap CIs (each one fits two Gaussians)
    confidence: float = 0.95
    seed: int = 0
    gap_samples: int = 2000  # per side; the MMD kernel is (2 * gap_samples)^2
    chunk_rows: int = 1024  # pool rows read and embedded at a time (bounds memory with images)
    chunk_bytes: int = 2 ** 30  # ... and fewer rows when their stored images reach this many bytes


# ---------------------------------------------------------------------------------------------
# Items and chunks
# ---------------------------------------------------------------------------------------------


def item_order(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(row indices grouped by item in order of first appearance, start offset of each item)."""
    table = {name: table_column(dataset, name) for name in ("source_image_id", "source_caption_index")}
    image_codes = table["source_image_id"].combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
    caption_index = table["source_caption_index"].to_numpy().astype(np.int64)
    item_codes = image_codes * (int(caption_index.max()) + 2) + (caption_index + 1)
    _, first_row, inverse = np.unique(item_codes, return_index=True, return_inverse=True)
    rank_by_first_row = np.argsort(np.argsort(first_row))
    item_of_row = rank_by_first_row[inverse.reshape(-1)]
    order = np.argsort(item_of_row, kind="stable")
    starts = np.flatnonzero(np.diff(item_of_row[order], prepend=-1))
    return order, starts


def chunk_bounds(starts: np.ndarray, total: int, chunk_rows: int, row_bytes: np.ndarray | None = None,
                 chunk_bytes: int | None = None, item_sources: np.ndarray | None = None,
                 source_bytes: np.ndarray | None = None) -> list[tuple[int, int]]:
    """[begin, end) ranges of the grouped order, ending at item starts: each closes at the first item
    boundary where it holds `chunk_rows` rows or, given `row_bytes` (each row's stored size, in the grouped
    order), `chunk_bytes` bytes. Given `item_sources` (each item's source image, a number) and `source_bytes`
    (each source image's size), the bytes also count the source images of a chunk's items, each once (the
    chunk reads them all: `embed_sources`). An item larger than either limit is a chunk of its own, never split."""
    held = np.concatenate([[0], np.cumsum(row_bytes, dtype=np.int64)]) if row_bytes is not None else None
    counted = chunk_bytes is not None and (held is not None or item_sources is not None)
    bounds, begin, seen, sources_held = [], 0, set(), 0
    boundaries = list(starts[1:]) + [total]
    for item, boundary in enumerate(boundaries):
        if counted and item_sources is not None and int(item_sources[item]) not in seen:
            seen.add(int(item_sources[item]))
            sources_held += int(source_bytes[item_sources[item]])
        stored = (held[boundary] - held[begin] if held is not None else 0) + sources_held
        full = boundary - begin >= chunk_rows or (counted and stored >= chunk_bytes)
        if full or boundary == total:
            bounds.append((begin, int(boundary)))
            begin, seen, sources_held = int(boundary), set(), 0
    return bounds


def stored_image_bytes(dataset) -> np.ndarray:
    """Each row's stored image size in bytes (0 for a row without image bytes: a text row, or an image
    kept as a path), from the arrow offsets alone: no image byte is read."""
    import pyarrow.compute as pc

    images = dataset.data.table.column("image")  # the table's: `table_column` of a selection takes (copies) the bytes
    stored = pc.struct_field(images, [images.type.get_field_index("bytes")])  # by index: pyarrow 15 has no names
    sizes = pc.fill_null(pc.binary_length(stored), 0).to_numpy().astype(np.int64)
    return sizes[table_positions(dataset, np.arange(len(dataset)))]


# ---------------------------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------------------------


class SourceItems:
    """Source rows by image id, images left undecoded (the cache hashes their bytes)."""

    def __init__(self, source):
        self.dataset = undecoded_images(source)
        self.row_of = {image_id: i for i, image_id in enumerate(table_column(source, "image_id").to_pylist())}

    def check_covers(self, image_ids: list[str], where: str) -> None:
        missing = [i for i in image_ids if i not in self.row_of]
        if missing:
            raise PoolError(f"{where}: {len(missing)} source image ids are not in the source (e.g. {missing[0]!r}); "
                            "pass the pool's source with --source")

    def image_sizes(self, image_ids: list[str]) -> np.ndarray:
        """Each source image's size in bytes, as `fetch` and the embedder hold it: its stored bytes, or the size
        of the file it is kept as (read whole to be hashed); 0 for an id not in the source or a file not there."""
        import pyarrow as pa
        import pyarrow.compute as pc

        images = self.dataset.data.table.column("image")  # the table's, as `stored_image_bytes`
        known = [self.row_of.get(i) for i in image_ids]
        positions = table_positions(self.dataset, [k if k is not None else 0 for k in known])
        stored = pc.binary_length(pc.struct_field(images, [images.type.get_field_index("bytes")]))
        sizes = (pc.fill_null(stored, 0).to_numpy().astype(np.int64)[positions] if len(images)
                 else np.zeros(len(image_ids), np.int64))
        paths = pc.struct_field(images, [images.type.get_field_index("path")])
        as_files = np.flatnonzero(sizes == 0)
        for k, path in zip(as_files, paths.take(pa.array(positions[as_files])).to_pylist() if len(as_files) else []):
            try:
                sizes[k] = os.path.getsize(path) if path else 0
            except OSError:
                sizes[k] = 0
        sizes[[k for k, row in enumerate(known) if row is None]] = 0
        return sizes

    def fetch(self, image_ids: list[str]) -> tuple[list, list[list[str]]]:
        rows = take_rows(self.dataset, ["image", "captions"], [self.row_of[i] for i in image_ids])
        return rows["image"], rows["captions"]


@dataclass
class SourceVectors:
    """Embeddings of the source items one chunk touches."""

    image: dict[str, np.ndarray]
    captions: dict[str, np.ndarray]  # (captions, d) per image id


def embed_sources(image_ids: list[str], source: SourceItems, embedder: Embedder) -> SourceVectors:
    images, captions = source.fetch(image_ids)
    image_vectors = embedder.images(images, names=[f"image {i!r}" for i in image_ids])
    flat = [c for caps in captions for c in caps]
    caption_vectors = embedder.texts(flat)
    bounds = np.cumsum([0] + [len(caps) for caps in captions])
    return SourceVectors(
        image=dict(zip(image_ids, image_vectors)),
        captions={i: caption_vectors[bounds[k]:bounds[k + 1]] for k, i in enumerate(image_ids)},
    )


# ---------------------------------------------------------------------------------------------
# One chunk
# ---------------------------------------------------------------------------------------------


@dataclass
class ChunkRows:
    row_id: list
    source_image_id: list
    source_caption_index: list
    modality: list
    method: list
    caption: list
    image: list

    def __len__(self) -> int:
        return len(self.row_id)


def table_column(dataset, name: str):
    """Column `name` of `dataset` as a pyarrow ChunkedArray in the dataset's row order, read from
    its table (Dataset.select_columns would fingerprint a new dataset first)."""
    column = dataset.data.table.column(name)
    rows = table_rows(dataset)
    return column if rows is None else column.take(rows)


def undecoded_images(dataset):
    """`dataset` whose table holds its images as datasets' Image storage ({"bytes", "path"}):
    as it is when the column is an Image feature already (the storage does not depend on
    `decode`), else cast (a cast fingerprints a new dataset: milliseconds per call)."""
    from datasets import Image

    if isinstance(dataset.features.get("image"), Image):
        return dataset
    return dataset.cast_column("image", Image(decode=False))


def take_rows(dataset, columns: list[str], indices) -> dict[str, list]:
    """Rows `indices` of `dataset`'s `columns` as plain lists, the stored values (images as
    {"bytes", "path"}, undecoded): one arrow take. Dataset.select(...).to_dict() gives the same
    lists at 5-20x the cost (it fingerprints the index list and formats through Python); converted a record
    batch at a time (`take_table_lists`)."""
    return take_table_lists(dataset.data.table.select(columns), table_positions(dataset, indices))


def read_chunk(dataset, indices: np.ndarray) -> ChunkRows:
    return ChunkRows(**take_rows(dataset, ROW_COLUMNS, indices))


def _row_vectors(rows: ChunkRows, kinds: tuple[str, ...], values: list, embed, named: bool = False) -> dict[int, np.ndarray]:
    """Row position -> embedding of its new content, for rows whose modality is in `kinds`;
    `named`: `embed` takes each row's name too (for an image that does not decode)."""
    positions = [k for k, m in enumerate(rows.modality) if m in kinds]
    if not positions:
        return {}
    chosen = [values[k] for k in positions]
    vectors = embed(chosen, names=[f"pool row {rows.row_id[k]}" for k in positions]) if named else embed(chosen)
    return dict(zip(positions, vectors))


def check_caption_indices(rows: ChunkRows, source: SourceVectors) -> None:
    for row_id, image_id, index in zip(rows.row_id, rows.source_image_id, rows.source_caption_index):
        if index >= len(source.captions[image_id]) or index < -1:
            raise PoolError(f"row {row_id!r}: source_caption_index {index} but source image {image_id!r} "
                            f"has {len(source.captions[image_id])} captions")


def row_scores(rows: ChunkRows, texts: dict, images: dict, source: SourceVectors) -> dict[str, list]:
    """The rows.parquet columns of one chunk (see the module docstring for the definitions): the
    cosines as row-wise products of stacked float32 embeddings (per-row numpy calls were most of
    this step), rows made from all of an image's captions (index -1) one at a time."""
    count = len(rows)
    indices = rows.source_caption_index
    source_image = np.stack([source.image[i] for i in rows.source_image_id])
    # each row's own source caption (index -1: a placeholder, those rows are done one by one)
    caption = np.stack([source.captions[i][max(index, 0)] for i, index in zip(rows.source_image_id, indices)])
    text, image = np.zeros_like(source_image), np.zeros_like(source_image)
    if texts:
        text[list(texts)] = np.stack(list(texts.values()))
    if images:
        image[list(images)] = np.stack(list(images.values()))
    modality = np.array(rows.modality)
    all_captions = np.array([index < 0 for index in indices], dtype=bool)
    # the alignment partner of each row, by modality (image rows: their caption, or captions)
    partner = np.where(modality[:, None] == "text", source_image, np.where(modality[:, None] == "pair", image, caption))
    own = modality == "text"
    alignment = np.einsum("nd,nd->n", partner, np.where(own[:, None] | (modality[:, None] == "pair"), text, image))
    text_distance = 1.0 - np.einsum("nd,nd->n", caption, text)
    image_distance = 1.0 - np.einsum("nd,nd->n", source_image, image)
    for k in np.flatnonzero(all_captions):  # index -1: the mean (image) and max (text) over every caption
        originals = source.captions[rows.source_image_id[k]]
        if modality[k] == "image":
            alignment[k] = np.mean(originals @ image[k])
        if k in texts:
            text_distance[k] = 1.0 - np.max(originals @ text[k])
    has_text, has_image = np.zeros(count, dtype=bool), np.zeros(count, dtype=bool)
    has_text[list(texts)], has_image[list(images)] = True, True
    names = {"text": "source image", "pair": "row"}
    return {
        "alignment": alignment.tolist(),
        "alignment_partner": [names.get(m) or ("source captions (mean)" if whole else "source caption")
                              for m, whole in zip(rows.modality, all_captions.tolist())],
        "text_distance_to_source": _where_present(text_distance, has_text),
        "image_distance_to_source": _where_present(image_distance, has_image),
        "clipscore": measures.clipscore(alignment.tolist()).tolist(),
    }


def _where_present(values: np.ndarray, present: np.ndarray) -> list:
    return [value if here else None for value, here in zip(values.tolist(), present.tolist())]


@dataclass
class ItemSets:
    """The items of one chunk as row numbers into one matrix per modality (originals first,
    then the rows' new content): sets are gathered by size, never copied one at a time."""

    keys: list  # (source image id, caption index) per set
    modalities: list  # "text" or "image" per set
    members: list  # row numbers into vectors[modality] per set
    vectors: dict  # modality -> (rows, d) embeddings


def item_sets(rows: ChunkRows, texts: dict, images: dict, source: SourceVectors) -> ItemSets:
    """The text and image sets (originals included) of the items of one chunk."""
    sets = ItemSets([], [], [], {})
    image_ids = list(source.image)
    if not image_ids:
        return sets
    first_caption = dict(zip(image_ids, np.cumsum([0] + [len(source.captions[i]) for i in image_ids]).tolist()))
    image_row = {image_id: k for k, image_id in enumerate(image_ids)}

    def caption_rows(image_id: str, index: int) -> list[int]:  # all of the image's captions for index -1
        start = first_caption[image_id]
        return list(range(start, start + len(source.captions[image_id]))) if index < 0 else [start + index]

    originals = {
        "text": (np.concatenate([source.captions[i] for i in image_ids]), caption_rows),
        "image": (np.stack([source.image[i] for i in image_ids]), lambda image_id, index: [image_row[image_id]]),
    }
    for modality, new in (("text", texts), ("image", images)):
        if not new:
            continue
        base, original_rows = originals[modality]
        members: dict[tuple, list[int]] = {}
        positions = list(new)
        for offset, k in enumerate(positions):
            key = (rows.source_image_id[k], rows.source_caption_index[k])
            if key not in members:
                members[key] = original_rows(*key)
            members[key].append(len(base) + offset)
        sets.vectors[modality] = np.concatenate([base, np.stack([new[k] for k in positions])])
        for key, member_rows in members.items():
            sets.keys.append(key)
            sets.modalities.append(modality)
            sets.members.append(member_rows)
    return sets


def item_columns(sets: ItemSets) -> dict[str, list]:
    distances, vendi = np.zeros(len(sets.keys)), np.zeros(len(sets.keys))
    for modality, vectors in sets.vectors.items():
        chosen = [k for k, m in enumerate(sets.modalities) if m == modality]
        distances[chosen], vendi[chosen] = measures.set_diversity_indexed(vectors, [sets.members[k] for k in chosen])
    return {
        "source_image_id": [key[0] for key in sets.keys],
        "source_caption_index": [key[1] for key in sets.keys],
        "modality": list(sets.modalities),
        "set_size": [len(members) for members in sets.members],
        "mean_pairwise_distance": distances.tolist(),
        "vendi": vendi.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# Accumulators over the whole pool
# ---------------------------------------------------------------------------------------------


class Totals:
    """What the summary needs, kept small: per-row and per-item values, fixed-size samples."""

    def __init__(self, settings: ScoreSettings):
        seed, size = settings.seed, settings.gap_samples
        self.alignment: dict[str, list] = {m: [] for m in ("text", "image", "pair")}
        self.alignment_items: dict[str, list] = {m: [] for m in ("text", "image", "pair")}  # each row's source item
        self.diversity: dict[str, dict[str, list]] = {m: {"mean_pairwise_distance": [], "vendi": []} for m in ("text", "image")}
        self.source_alignment: list = []
        self.source_alignment_items: list = []
        self.pool_sample = {"text": measures.Reservoir(size, seed + 1), "image": measures.Reservoir(size, seed + 2)}
        self.source_sample = {"text": measures.Reservoir(size, seed + 3), "image": measures.Reservoir(size, seed + 4)}
        self.sources_seen: set[str] = set()

    def add_rows(self, rows: ChunkRows, columns: dict, texts: dict, images: dict) -> None:
        for modality, alignment, item in zip(rows.modality, columns["alignment"], rows.source_image_id):
            self.alignment[modality].append(alignment)
            self.alignment_items[modality].append(item)
        # each sampled row keeps its source item (the key the alignment intervals redraw): the
        # gap's bootstrap redraws items, pairing a pool row with its item's source content
        if texts:
            self.pool_sample["text"].add(np.stack(list(texts.values())), [rows.source_image_id[k] for k in texts])
        if images:
            self.pool_sample["image"].add(np.stack(list(images.values())), [rows.source_image_id[k] for k in images])

    def add_items(self, columns: dict) -> None:
        for modality, distance, vendi in zip(columns["modality"], columns["mean_pairwise_distance"], columns["vendi"]):
            self.diversity[modality]["mean_pairwise_distance"].append(distance)
            self.diversity[modality]["vendi"].append(vendi)

    def add_sources(self, source: SourceVectors) -> None:
        """Each source item once: its captions and image join the gap's reference sample (in
        one reservoir call per modality: the same sample as one call per item, the draws being
        made row by row in order)."""
        new = [image_id for image_id in source.image if image_id not in self.sources_seen]
        if not new:
            return
        self.sources_seen.update(new)
        captions = [source.captions[image_id] for image_id in new]
        caption_items = [image_id for image_id, c in zip(new, captions) for _ in range(len(c))]
        self.source_sample["text"].add(np.concatenate(captions), caption_items)
        self.source_sample["image"].add(np.stack([source.image[image_id] for image_id in new]), new)
        self.source_alignment.extend(np.concatenate([c @ source.image[i] for i, c in zip(new, captions)]).tolist())
        self.source_alignment_items.extend(caption_items)


# ---------------------------------------------------------------------------------------------
# The whole pool
# ---------------------------------------------------------------------------------------------


def score_pool(pool, source_dataset, embedder: Embedder, settings: ScoreSettings, source_name: str = "",
               progress: bool = False, source_fp: str | None = None, inputs_key: str | None = None) -> dict:
    """Score `pool` (augment.pool.Pool); write its side tables; return its scores.json entry.
    The tables are renamed into place only once the summary is computed (its gap bootstrap takes
    seconds at real widths): an error or interrupt before that leaves the stored tables as they
    were. `inputs_key` (`inputs_key`) is written into the tables, so an entry is only ever read with
    the tables its own run wrote (a run killed between renaming them and writing its entry leaves
    new tables beside the old entry: `store.read_entry_table` refuses that pair)."""
    from augment.progress import progress_bar

    if len(pool) == 0:
        raise PoolError(f"{pool.path}: pool has no rows to score")
    source = SourceItems(source_dataset)
    source.check_covers(pool_source_ids(pool.dataset), str(pool.path))
    encoded_before, reused_before = dict(embedder.encoded), dict(embedder.reused)
    undecoded = undecoded_images(pool.dataset)  # images in their stored form
    order, starts = item_order(pool.dataset)
    totals = Totals(settings)
    folder = store.scorer_dir(pool.path, embedder.scorer.slug)
    table_meta = {"scores_version": store.SCORES_VERSION, "scorer": embedder.scorer.describe(), "pool_rows": len(pool),
                  "inputs_key": inputs_key}
    rows_writer = store.TableWriter(folder / store.ROWS_FILE, store.row_schema(), table_meta)
    items_writer = store.TableWriter(folder / store.ITEMS_FILE, store.item_schema(), table_meta)
    bar = progress_bar(total=len(pool), desc=f"scoring {pool.name}", unit="row", disable=not progress)
    try:
        try:
            row_bytes = stored_image_bytes(undecoded)[order]
            # each item's source image, which its chunk reads too (a text pool of large photos held 1,024 at once)
            item_ids = table_column(pool.dataset, "source_image_id").take(order[starts]).to_pylist()
            source_ids = list(dict.fromkeys(item_ids))
            code = {image_id: k for k, image_id in enumerate(source_ids)}
            item_sources = np.array([code[i] for i in item_ids], dtype=np.int64)
            for begin, end in chunk_bounds(starts, len(order), settings.chunk_rows, row_bytes, settings.chunk_bytes,
                                           item_sources, source.image_sizes(source_ids)):
                _score_chunk(read_chunk(undecoded, order[begin:end]), source, embedder, totals, rows_writer, items_writer)
                bar.update(end - begin)
        finally:
            bar.close()
        rows_writer.finish()
        items_writer.finish()
        summary = summarise(pool, totals, embedder, settings, source_name, source_dataset, source_fp, progress)
        rows_writer.commit()
        items_writer.commit()
    except BaseException:
        rows_writer.abort()
        items_writer.abort()
        raise
    summary["encoding"] = {
        "encoded": {k: v - encoded_before[k] for k, v in embedder.encoded.items()},
        "reused": {k: v - reused_before[k] for k, v in embedder.reused.items()},
    }
    return summary


def pool_source_ids(dataset) -> list[str]:
    return table_column(dataset, "source_image_id").unique().to_pylist()


def _score_chunk(rows: ChunkRows, source: SourceItems, embedder: Embedder, totals: Totals,
                 rows_writer: store.TableWriter, items_writer: store.TableWriter) -> None:
    source_vectors = embed_sources(list(dict.fromkeys(rows.source_image_id)), source, embedder)
    check_caption_indices(rows, source_vectors)
    texts = _row_vectors(rows, TEXT_CONTENT, rows.caption, embedder.texts)
    images = _row_vectors(rows, IMAGE_CONTENT, rows.image, embedder.images, named=True)
    columns = row_scores(rows, texts, images, source_vectors)
    rows_writer.write({
        "row_id": rows.row_id, "source_image_id": rows.source_image_id,
        "source_caption_index": rows.source_caption_index, "modality": rows.modality, "method": rows.method,
        **columns,
    })
    item_table = item_columns(item_sets(rows, texts, images, source_vectors))
    items_writer.write(item_table)
    totals.add_rows(rows, columns, texts, images)
    totals.add_items(item_table)
    totals.add_sources(source_vectors)


def summarise(pool, totals: Totals, embedder: Embedder, settings: ScoreSettings, source_name: str,
              source_dataset, source_fp: str | None = None, progress: bool = False) -> dict:
    """The scores.json entry of this pool and scorer (`progress`: a bar for each gap bootstrap that
    takes more than GAP_BAR_DELAY seconds)."""
    from augment.sources import source_fingerprint

    all_alignment = [v for values in totals.alignment.values() for v in values]
    all_items = [item for items in totals.alignment_items.values() for item in items]
    present = {m: len(v) for m, v in totals.alignment.items() if v}
    # alignment intervals redraw items, not rows (the rows of an item move together)
    by_item = {"all": (all_alignment, all_items), "clipscore": (measures.clipscore(all_alignment), all_items),
               "source": (totals.source_alignment, totals.source_alignment_items)}
    if len(present) > 1:  # one modality: its numbers are the overall ones
        by_item.update({("alignment", m): (v, totals.alignment_items[m]) for m, v in totals.alignment.items() if v})
    # the diversity means (one value per item) in one call: series of one length share one index matrix
    diversity_present = {m: measures_of for m, measures_of in totals.diversity.items() if measures_of["vendi"]}
    series = {(modality, name): values for modality, measures_of in diversity_present.items()
              for name, values in measures_of.items()}
    intervals = dict(zip(series, measures.bootstrap_means(list(series.values()), settings.bootstrap,
                                                         settings.confidence, settings.seed)))
    intervals.update(zip(by_item, measures.bootstrap_item_means(list(by_item.values()), settings.bootstrap,
                                                                settings.confidence, settings.seed)))
    overall = intervals["all"]
    slug = embedder.scorer.slug
    return {
        "scores_version": store.SCORES_VERSION,
        "scorer": embedder.scorer.describe(),
        # "finished" (pool.json's) tells select whether the pool was rewritten after scoring
        "pool": {"path": str(pool.path), "name": pool.name, "method": pool.method, "num_rows": len(pool),
                 "rows_by_modality": present, "finished": pool.meta.get("finished"), "files": pool_file_stamps(pool)},
        "source": {"path": source_name, "fingerprint": source_fp or source_fingerprint(source_dataset),
                   "pool_source_fingerprint": pool.meta.get("source_fingerprint"),
                   "items_covered": len(totals.sources_seen)},
        "settings": asdict(settings),
        "resampling": measures.RESAMPLING,  # how the intervals were drawn (push leaves out other schemes')
        "alignment": {"all": overall, **{m: intervals.get(("alignment", m), overall) for m in present}},
        "clipscore": {"all": intervals["clipscore"]},
        "source_alignment": intervals["source"],
        "diversity": {
            modality: {name: intervals[(modality, name)] for name in measures_of} | {"items": len(measures_of["vendi"])}
            for modality, measures_of in diversity_present.items()
        },
        "gap": {modality: _gap(totals, modality, settings, progress) for modality in _content_modalities(present)},
        "tables": {
            "rows": f"{store.SCORES_DIR}/{slug}/{store.ROWS_FILE}",
            "items": f"{store.SCORES_DIR}/{slug}/{store.ITEMS_FILE}",
        },
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "package_versions": dict(_package_versions()),
    }


def _content_modalities(present: dict) -> list[str]:
    kinds = []
    if any(m in present for m in TEXT_CONTENT):
        kinds.append("text")
    if any(m in present for m in IMAGE_CONTENT):
        kinds.append("image")
    return kinds


# seconds a gap bootstrap runs before its bar shows: at real widths it takes seconds after the rows'
# bar has finished (ViT-B-16's 512: ~12 CPU s a modality), at the tiny twins' a few milliseconds
GAP_BAR_DELAY = 1.0


def _gap(totals: Totals, modality: str, settings: ScoreSettings, progress: bool = False) -> dict:
    from augment.progress import progress_bar

    pool, source = totals.pool_sample[modality], totals.source_sample[modality]
    bar = progress_bar(total=settings.gap_bootstrap, desc=f"{modality} gap bootstrap", unit="resample", delay=GAP_BAR_DELAY,
                       disable=not progress or settings.gap_bootstrap <= 0)
    try:
        return measures.gap_measures(
            pool.sample(), source.sample(), n_resamples=settings.gap_bootstrap, confidence=settings.confidence,
            seed=settings.seed, items_x=pool.ids(), items_y=source.ids(), on_resamples=bar.update,
        )
    finally:
        bar.close()



def score_and_save(pool, source_dataset, scorer, settings: ScoreSettings | None = None,
                   cache_dir: str | None = None, source_name: str = "", plot: bool = True,
                   progress: bool = False, force: bool = False, workers: int = 0,
                   source_fp: str | None = None, source_images: str | None = None) -> dict:
    """Score `pool` with `scorer`, write rows/items tables, scores.json and (with `plot`) the PNG.

    The embedding cache lives in `cache_dir` (share one between pools of the same source to
    encode the source once) or by default in POOL/scores/<slug>/embeddings. When the pool was
    already scored from the same inputs (`inputs_key`: pool files, source, scorer, settings)
    and its side tables are there, nothing is recomputed (`force` recomputes): the stored
    entry comes back with "reused": True. `workers` decode images for the scorer in DataLoader
    worker processes (0: in this process). `source_fp` / `source_images`: the source's
    `source_fingerprint` / `image_files_fingerprint` (of `source_root(source_name)`) when the
    caller has them (else computed).
    """
    from augment.scoring import report
    from augment.scoring.embeddings import EmbeddingCache
    from augment.sources import image_files_fingerprint, source_fingerprint

    settings = settings or ScoreSettings()
    source_fp = source_fp or source_fingerprint(source_dataset)
    source_images = source_images or image_files_fingerprint(source_dataset, root=source_root(source_name))
    keys = inputs_keys(pool, source_fp, scorer, settings, source_images)
    key = keys[0]
    with store.scoring_lock(pool.path):  # one run at a time writes this pool's scores (a second waits)
        stored = None if force else reuse_stored(pool, scorer, keys, plot, source_name=source_name)
        if stored is not None:
            return stored
        folder = cache_dir or store.default_cache_dir(pool.path, scorer.slug)
        try:
            with Embedder(scorer, EmbeddingCache(folder, scorer.id), workers=workers) as embedder:
                entry = score_pool(pool, source_dataset, embedder, settings, source_name=source_name,
                                   progress=progress, source_fp=source_fp, inputs_key=key)
        except RuntimeError as exc:  # the decoding workers live for the whole run: torch's SIGCHLD handler
            # raises a dead one's error wherever the scoring is (encoding texts, measuring), not only in `images`
            from augment.loading import raise_worker_death

            raise_worker_death(exc, "re-run the same command: it reads back the embeddings cached so far", workers)
        entry["inputs_key"] = key
        report.update_scores_json(pool.path, entry)  # after the tables: see score_pool
        if plot:
            report.plot_scores(pool.path, entry)
    return entry


def reuse_stored(pool, scorer, keys: tuple[str, ...], plot: bool = False, source_name: str = "") -> dict | None:
    """The stored entry (with "reused": True) when `pool` was scored by `scorer` (a `Scorer` or a
    `ScorerIdentity`: only its id and slug are read) from the inputs of one of `keys` (`inputs_keys`), made the pool's latest
    again (with `plot`, scores.png drawn again for it when that changed the latest, or when missing:
    the plot shows the latest scorer); None when it must be scored. The key holds no place, so a
    pool moved with its source finds its scores: the entry then records where the pool and its
    source (`source_name`, when given) are now, as a new score would."""
    from augment.scoring import report

    with store.scoring_lock(pool.path):
        stored = reusable_entry(pool.path, scorer.slug, keys)
        if stored is None:
            return None
        became_latest = store.read_scores_json(pool.path).get("latest") != scorer.slug
        # the key holds the resampling scheme: an entry it matches was drawn by this one (recorded since)
        here = {**stored, "pool": {**stored["pool"], "path": str(pool.path)}, "resampling": measures.RESAMPLING}
        if source_name and isinstance(stored.get("source"), dict):
            here["source"] = {**stored["source"], "path": source_name}
        if became_latest or here != stored:
            report.update_scores_json(pool.path, here)
            stored = here
        if plot and (became_latest or not (pool.path / store.SCORES_PLOT).is_file()):
            report.plot_scores(pool.path, stored)
    return {**stored, "reused": True}


def pool_file_stamps(pool) -> list[list]:
    """[name, size, modification time] of each of the pool's data files: what `augment select` checks
    before it trusts stored scores (a shard rewritten in place after scoring)."""
    from augment.source_cache import file_identity

    return [[shard.name, *(file_identity(shard) or [None, None])[:2]] for shard in sorted(pool.path.glob("data/*.parquet"))]


# Settings that bound memory only, outside the key: their chunks change which texts share an encoding batch, so a
# score moves at float32 rounding (~1e-7 a row, ~1e-9 on means), as --batch-size and the device do, also outside
# it. --chunk-rows was in the key until 2026-12-07: `inputs_keys` also gives the key as written then.
MEMORY_SETTINGS = ("chunk_rows", "chunk_bytes")


def inputs_keys(pool, source_fp: str, scorer, settings: ScoreSettings, source_images: str) -> tuple[str, str]:
    """(`inputs_key`, the same key as entries scored before 2026-12-07 recorded it, with --chunk-rows in it): a
    stored entry under either is reused, so no pool scored before is scored again for the change."""
    return (inputs_key(pool, source_fp, scorer, settings, source_images),
            inputs_key(pool, source_fp, scorer, settings, source_images, with_chunk_rows=True))


def inputs_key(pool, source_fp: str, scorer, settings: ScoreSettings, source_images: str,
               with_chunk_rows: bool = False) -> str:
    """A digest of everything a pool's scores depend on: the pool's data files (name, size,
    modification and change times) and pool.json's finish stamp, the source's fingerprint and
    the identity of its image files (`image_files_fingerprint` of `source_root`: another
    --image-root, an image replaced in place), the scorer's weights id, the settings, the package
    versions (mat-plus, torch, transformers...) and the resampling scheme (`measures.RESAMPLING`).
    Equal keys mean a re-score would write the same numbers. No place is in it (neither the
    pool's nor the source's path, and image paths inside the source are relative to it): a pool
    moved with its source (`mv` keeps the files' times) keeps its scores; a copy without its
    times does not."""
    from augment.source_cache import file_identity

    shards = sorted(pool.path.glob("data/*.parquet"))
    files = [[s.name, file_identity(s)] for s in shards]
    inputs = {
        "scores_version": store.SCORES_VERSION, "pool_rows": len(pool), "pool_finished": pool.meta.get("finished"),
        "pool_files": files, "source": source_fp, "source_images": source_images,
        "scorer": scorer.id,
        # MEMORY_SETTINGS outside: a pool scored again with other chunks to fit a smaller machine keeps its scores
        "settings": {name: value for name, value in asdict(settings).items()
                     if name not in MEMORY_SETTINGS or (with_chunk_rows and name == "chunk_rows")},
        "packages": _package_versions(), "resampling": measures.RESAMPLING,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def source_root(source_name: str | None) -> str | None:
    """The folder a source named by a path lies in (the folder itself, or a JSON file's folder):
    `image_files_fingerprint`'s root in the score key; None for a Hub id or no name."""
    if not source_name or not os.path.exists(source_name):
        return None
    return source_name if os.path.isdir(source_name) else os.path.dirname(os.path.abspath(source_name))


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple:
    """Installed versions, looked up once per process (the metadata scan takes tens of ms)."""
    from augment.pool import package_versions

    return tuple(sorted(package_versions().items()))


def reusable_entry(pool_path, slug: str, keys: tuple[str, ...]) -> dict | None:
    """The stored entry of scorer `slug` when it was computed from the inputs of one of `keys` and both side
    tables are present, readable, in this scores version and written by that entry's run; else None."""
    try:
        document = store.read_scores_json(pool_path)
    except (PoolError, ValueError):  # another version or a broken file: score again
        return None
    entry = ((document or {}).get("scorers") or {}).get(slug)
    if not entry or entry.get("inputs_key") not in keys:
        return None
    folder = store.scorer_dir(pool_path, slug)
    if not all(store.table_is_current(folder / name, entry["inputs_key"]) for name in (store.ROWS_FILE, store.ITEMS_FILE)):
        return None
    return entry
