"""The pool schema is declared once; writers validate rows, readers refuse anything else."""
from __future__ import annotations

import functools
import json
import operator
import os
import re
import sys

import pytest
from PIL import Image

from augment.errors import PoolError
from augment.generators.base import Generator, row_seed, run_generation
from augment.pool import PoolWriter, load_pool, write_pool
from augment.schema import POOL_FEATURES, POOL_SCHEMA_VERSION, SchemaError
from augment.sources import load_source
from tests.conftest import loader_worker_outlives_killed_parent


def _row(i, modality="text", caption="a red circle", image=None):
    return dict(row_id=f"m:{i}:0:0", source_image_id=str(i), source_caption_index=0, split="train",
                modality=modality, image=image, caption=caption, method="m", seed=i, provenance="{}")


def test_round_trip_text_and_image_rows(tmp_path):
    rows = [_row(0), _row(1, "image", None, Image.new("RGB", (8, 8), (255, 0, 0)))]
    meta = write_pool(tmp_path / "p", rows, {"method": "m"})
    assert meta["status"] == "complete" and meta["num_rows"] == 2 and meta["schema_version"] == POOL_SCHEMA_VERSION
    pool = load_pool(tmp_path / "p")
    assert pool.dataset.features == POOL_FEATURES
    assert pool.dataset[0]["caption"] == "a red circle" and pool.dataset[0]["image"] is None
    assert pool.dataset[1]["image"].getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("name", ["pool[v2]", "pool*", "pool?"])
def test_a_pool_in_a_folder_whose_name_looks_like_a_pattern_loads(tmp_path, name):
    """datasets reads data_files as glob patterns: a pool in `pool[v2]` matched no file and was reported as a
    damaged shard ("Instruction 'train' corresponds to no data"; audit BK)."""
    write_pool(tmp_path / name, [_row(0), _row(1)], {"method": "m"})
    assert load_pool(tmp_path / name).dataset["caption"] == ["a red circle", "a red circle"]


def test_an_image_from_a_file_is_held_in_the_pool_not_named_by_its_path(tmp_path, monkeypatch):
    """datasets.Image stores a PIL image opened from a file, or bytes given with a file's name, as the path
    alone: a generator returning `Image.open(f)` (drawn on since) or a temporary file's bytes and name made a
    pool that lost the image with the file (a review's finding; no built-in generator does)."""
    import io

    from PIL import ImageDraw

    drawn = tmp_path / "drawn.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(drawn)
    opened = Image.open(drawn)
    ImageDraw.Draw(opened).point((0, 0), fill=(255, 0, 0))  # drawn on after opening: the file no longer holds it
    named = tmp_path / "named.png"
    Image.new("RGB", (8, 8), (0, 255, 0)).save(named)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buffer, format="PNG")
    rows = [_row(0, "image", None, opened), _row(1, "image", None, {"bytes": buffer.getvalue(), "path": str(named)})]
    write_pool(tmp_path / "p", rows, {"method": "m"})
    drawn.unlink()
    named.unlink()
    stored = load_pool(tmp_path / "p").dataset.cast_column("image", POOL_FEATURES["image"].__class__(decode=False))
    assert [row["image"]["path"] for row in stored] == [None, "named.png"]  # the name kept, never the file
    pool = load_pool(tmp_path / "p")
    assert pool.dataset[0]["image"].convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert pool.dataset[0]["image"].convert("RGB").getpixel((1, 1)) == (0, 0, 255)
    assert pool.dataset[1]["image"].getpixel((0, 0)) == (9, 9, 9)
    # a row pulled from the Hub ({"bytes", "path": its name}) written again keeps its bytes and name, even beside
    # a file of that name in the working folder (datasets.Image would store that file's path instead)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "pulled.png")
    write_pool(tmp_path / "q", [_row(2, "image", None, {"bytes": buffer.getvalue(), "path": "pulled.png"})], {"method": "m"})
    (tmp_path / "pulled.png").unlink()
    again = load_pool(tmp_path / "q").dataset
    assert again.cast_column("image", POOL_FEATURES["image"].__class__(decode=False))[0]["image"]["path"] == "pulled.png"
    assert again[0]["image"].getpixel((0, 0)) == (9, 9, 9)


def test_an_image_closed_before_it_was_read_is_held_in_the_pool(tmp_path):
    """A generator returning an image from `with Image.open(f) as im: return im` hands over a closed image whose
    pixels were never read: datasets stored it as the file's path (lost with the file), and since the pool
    holds such images as bytes (2ac87bc) its copy stopped the write with a bare AssertionError from Pillow."""
    source = tmp_path / "closed.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(source)
    with Image.open(source) as closed:
        pass
    write_pool(tmp_path / "p", [_row(0, "image", None, closed)], {"method": "m"})
    source.unlink()
    assert load_pool(tmp_path / "p").dataset[0]["image"].convert("RGB").getpixel((3, 3)) == (0, 0, 255)


def test_a_shard_of_generated_images_is_the_file_datasets_own_encoding_writes(tmp_path, monkeypatch):
    """write_shard encodes a generator's PIL images itself, in slices, without datasets' pickled hash of the
    table (its peak memory was 2.5x the rows'): the file must stay byte for byte what `Dataset.from_dict`
    wrote, images of several modes and a slice boundary included."""
    import datasets.arrow_dataset
    from datasets import Dataset

    def image(i):
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        return Image.frombytes(mode, (9, 7), bytes((i * 37 + j) % 251 for j in range(9 * 7 * len(mode) if mode != "P" else 63)))

    rows = [_row(i, "image", None, image(i)) if i % 3 else _row(i) for i in range(70)]
    rows[5] = _row(5, "pair", "a stored pair", {"bytes": b"\x89PNG stored as is", "path": None})
    monkeypatch.setattr(datasets.arrow_dataset, "generate_fingerprint",
                        lambda *a, **k: pytest.fail("the shard's table was hashed whole (pickled) for a fingerprint"))
    written = PoolWriter(tmp_path / "p", {"method": "m"}).write_shard(0, rows)
    monkeypatch.undo()
    expected = tmp_path / "expected.parquet"
    Dataset.from_dict({name: [row.get(name) for row in rows] for name in POOL_FEATURES},
                      features=POOL_FEATURES).to_parquet(str(expected))
    assert written.read_bytes() == expected.read_bytes()


def test_a_shard_of_augmented_images_is_written_without_holding_all_its_images(karpathy_dir, tmp_path, monkeypatch):
    """img-aug made a shard's rows as one list, so a shard held every image it made until the last was made,
    then their encoded bytes and arrow's copy beside them (256 640x480 sources at --n 5: 1,280 images of
    0.9 MB; 800 rows peaked at 3.0 GB, 1.7 GB now). Its rows are now made as the writer reads them, one slice
    at a time: at most a slice's images are alive at once, and the shard is the file the list wrote."""
    import weakref

    from augment.generators.imgaug import ImageAugmentGenerator
    from augment.pool import SHARD_SLICE_ROWS

    source, _ = load_source(str(karpathy_dir))
    generator = ImageAugmentGenerator("crop-flip", {"crop_scale": [0.5, 1.0], "flip_p": 0.5})
    made_so_far, most = [], [0]
    augment = generator.augment

    def counted(image, seed):
        made = augment(image, seed)
        made_so_far.append(weakref.ref(made))
        most[0] = max(most[0], sum(ref() is not None for ref in made_so_far))
        return made

    monkeypatch.setattr(generator, "augment", counted)
    meta = run_generation(generator, source, str(tmp_path / "lazy"), n=50, seed=3, split="all", progress=False)
    assert meta["num_rows"] == 300 > 2 * SHARD_SLICE_ROWS and meta["num_shards"] == 1
    assert most[0] <= SHARD_SLICE_ROWS, f"{most[0]} images alive at once"

    items = [source[k] for k in range(len(source))]
    written = PoolWriter(tmp_path / "list", {"method": "img-aug"}).write_shard(0, generator.generate(items, 50, 3))
    assert (tmp_path / "lazy" / "data" / "shard-00000.parquet").read_bytes() == written.read_bytes()


def test_a_shards_encoded_slices_are_on_disk_not_in_memory_while_the_rest_is_made(tmp_path):
    """A shard's encoded table was held whole until it was written (0.5 GB for 800 img-aug rows of 640x480, ~29 GB
    for 256 12-megapixel photos at --n 5). Each slice now goes to an arrow file beside the shard as it is made and
    the shard is written from it memory-mapped: while later rows are made, the earlier slices' bytes are in that
    file; it is gone once the shard is written, or when a row is refused; the shard is byte for byte the file
    datasets writes from the whole table."""
    import io
    import random

    from datasets import Dataset

    from augment.pool import SHARD_SLICE_ROWS

    def noise(i):  # incompressible: a slice's PNGs are as large as its pixels
        return Image.frombytes("RGB", (64, 64), random.Random(i).randbytes(64 * 64 * 3))

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return len(buffer.getvalue())

    folder = tmp_path / "p" / "data"
    staged_sizes = []

    def rows(count, bad_at=None):
        for i in range(count):
            if i in (2 * SHARD_SLICE_ROWS, 2 * SHARD_SLICE_ROWS + 10):  # two slices made and written
                staged = [path for path in folder.glob(".shard-00000.parquet.tmp-*.arrow")]
                staged_sizes.append(sum(path.stat().st_size for path in staged))
            yield _row(i, "image", None, noise(i)) if i != bad_at else {**_row(i), "modality": "nonsense"}

    count = 2 * SHARD_SLICE_ROWS + 20
    written = PoolWriter(tmp_path / "p", {"method": "m"}).write_shard(0, rows(count))
    two_slices = sum(png(noise(i)) for i in range(2 * SHARD_SLICE_ROWS))
    assert len(staged_sizes) == 2 and staged_sizes[0] >= two_slices and staged_sizes[1] == staged_sizes[0]
    assert sorted(path.name for path in folder.iterdir()) == ["shard-00000.parquet"]
    expected = tmp_path / "expected.parquet"
    whole = list(rows(count))
    Dataset.from_dict({name: [row.get(name) for row in whole] for name in POOL_FEATURES},
                      features=POOL_FEATURES).to_parquet(str(expected))
    assert written.read_bytes() == expected.read_bytes()

    with pytest.raises(SchemaError):
        PoolWriter(tmp_path / "q", {"method": "m"}).write_shard(0, rows(count, bad_at=SHARD_SLICE_ROWS + 3))
    assert list((tmp_path / "q" / "data").iterdir()) == []


def test_an_oserror_of_a_lazy_generators_rows_is_not_said_to_be_the_shards(tmp_path, monkeypatch):
    """write_shard reads its rows while writing the staged arrow file: an OSError naming no file raised by the
    rows themselves (a lazy generator's: PIL's "image file is truncated") was renamed as a write error of the
    shard (`[Errno None] image file is truncated: OUT/data/shard-00000.parquet`); it is raised as it was, and
    nothing is left in data/ (audit BD). A full disk while staging still names the shard."""
    import errno

    import pyarrow.ipc

    def rows():
        yield _row(0)
        raise OSError("image file is truncated (3 bytes not processed)")

    with pytest.raises(OSError) as raised:
        PoolWriter(tmp_path / "p", {"method": "m"}).write_shard(0, rows())
    assert raised.value.filename is None and str(raised.value) == "image file is truncated (3 bytes not processed)"
    assert list((tmp_path / "p" / "data").iterdir()) == []

    class FullDisk:  # the staged arrow file's write fails in a buffer, naming no file: the shard is named
        def __init__(self, sink, schema):
            pass

        def write_table(self, table):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pyarrow.ipc, "new_file", FullDisk)
    with pytest.raises(OSError) as raised:
        PoolWriter(tmp_path / "q", {"method": "m"}).write_shard(0, [_row(0)])
    assert raised.value.filename == str(tmp_path / "q" / "data" / "shard-00000.parquet")
    assert list((tmp_path / "q" / "data").iterdir()) == []


def test_a_shard_replaced_with_its_old_mtime_is_read_anew(tmp_path):
    """`datasets` keys its Arrow cache on a file's path and mtime: a shard replaced as `cp -p` does was read stale."""
    import os
    import shutil

    write_pool(tmp_path / "p", [_row(0)], {"method": "m"})
    write_pool(tmp_path / "q", [_row(0, caption="a blue square")], {"method": "m"})
    assert load_pool(tmp_path / "p").dataset[0]["caption"] == "a red circle"
    [shard] = sorted((tmp_path / "p" / "data").glob("*.parquet"))
    [other] = sorted((tmp_path / "q" / "data").glob("*.parquet"))
    stat = shard.stat()
    shutil.copyfile(other, shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_pool(tmp_path / "p").dataset[0]["caption"] == "a blue square"


@pytest.mark.parametrize("bad, message", [
    (dict(modality="video"), "modality must be one of"),
    (dict(caption="  "), "empty caption"),
    (dict(modality="image", caption=None), "has no image"),
    (dict(source_image_id=""), "no source_image_id"),
])
def test_writer_refuses_bad_rows(tmp_path, bad, message):
    with pytest.raises(SchemaError, match=message):
        write_pool(tmp_path / "p", [{**_row(0), **bad}], {"method": "m"})
    assert not list((tmp_path / "p" / "data").glob("*.parquet"))  # nothing half-written


@pytest.mark.parametrize("column, value, message", [
    ("caption", "", "shard-00001.parquet, row 1 ('m:3:0:0'): text row has an empty caption"),
    ("caption", "\u200b\u200d", "shard-00001.parquet, row 1 ('m:3:0:0'): text row has an empty caption"),
    ("modality", "video", "shard-00001.parquet, row 1 ('m:3:0:0'): modality must be one of"),
    ("source_image_id", "", "shard-00001.parquet, row 1 ('m:3:0:0'): row has no source_image_id"),
    ("row_id", "m:0:0:0", "shard-00001.parquet: row 1 has row_id 'm:0:0:0', which another row of the pool has too"),
])
def test_reader_refuses_a_row_edited_after_writing_naming_shard_and_row(tmp_path, column, value, message):
    """Rows are checked when written; a shard edited or written by another tool since would be
    pushed, scored and selected as it is (a duplicate id takes its first copy's scores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_pool(tmp_path / "p", [_row(i) for i in range(4)], {"method": "m"}, shard_rows=2)
    shard = tmp_path / "p" / "data" / "shard-00001.parquet"
    table = pq.read_table(shard)
    values = table[column].to_pylist()
    values[1] = value
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.string())), shard)
    with pytest.raises((PoolError, SchemaError), match=re.escape(message)):
        load_pool(tmp_path / "p")


def test_the_readers_table_rules_agree_with_the_writers_row_rules():
    """`pool_row_problems` (the reader's rules on whole columns) and `check_pool_row` (the writer's,
    row by row) must flag the same rows: a rule added to one only would let such rows through the
    reader, or flag rows it then cannot name."""
    import pyarrow as pa

    from augment.schema import ROW_RULE_COLUMNS, check_pool_row, pool_row_problems

    # invisible format characters (Cf) alone, as `is_blank` reads them: a zero-width space, joiner, byte-order
    # mark, left-to-right mark; beside text they are part of a caption (an emoji's joiner, a right-to-left one's mark)
    captions = ["a cat", "", " ", "\t\n", "\u3000", "\x1c", "\xa0", "\u2028x", None,
                "\u200b", " \u200d ", "\ufeff", "\u200e\u200f", "\u200bx", "\U0001f468\u200d\U0001f469",
                "\U0001343a", "\U00013430\U0001343f"]  # Egyptian format controls: Cf since Unicode 15.0
    rows = [{"row_id": f"r{i}", "modality": modality, "caption": caption, "source_image_id": source}
            for i, (modality, caption, source) in enumerate(
                (m, c, s) for m in ("text", "image", "pair", "video", "", None) for c in captions for s in ("img", "", None))]
    table = pa.table({name: pa.array([row[name] for row in rows], pa.string()) for name in ROW_RULE_COLUMNS})
    flagged = pool_row_problems(table).to_pylist()

    def breaks(row) -> bool:
        try:
            check_pool_row({**row, "image": True}, "here")
        except SchemaError:
            return True
        return False

    assert flagged == [breaks(row) for row in rows]
    assert 0 < sum(flagged) < len(rows)


def test_an_empty_shard_passes_the_row_rules(tmp_path):
    """An empty shard (what `select --allow-empty` writes) reads as columns with no chunks; pyarrow 25, the
    newest on Python 3.10, segfaulted on indices_nonzero of those (the reader's row rules), killing
    `train mat+` instead of its "has no rows" line. In a subprocess, so a crash fails only this test."""
    import subprocess

    code = (
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "from augment.pool import check_shard_rows\n"
        "from augment.schema import ROW_RULE_COLUMNS\n"
        "pq.write_table(pa.table({n: pa.array([], pa.string()) for n in ROW_RULE_COLUMNS}), sys.argv[1])\n"
        "ids = set()\n"
        "check_shard_rows(pq.ParquetFile(sys.argv[1]), 'empty.parquet', ids)\n"
        "assert ids == set()\n"
        "print('checked')\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty.parquet")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and done.stdout.strip() == "checked", (done.returncode, done.stderr[-2000:])


def test_reader_refuses_wrong_schema_and_version(tmp_path):
    write_pool(tmp_path / "p", [_row(0)], {"method": "m"})
    meta_path = tmp_path / "p" / "pool.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(SchemaError, match="schema v99"):
        load_pool(tmp_path / "p")
    meta_path.write_text(json.dumps(meta))

    from datasets import Dataset

    shard = next((tmp_path / "p" / "data").glob("*.parquet"))
    Dataset.from_dict({"row_id": ["x"], "caption": ["y"]}).to_parquet(str(shard))
    with pytest.raises(SchemaError, match="missing columns"):
        load_pool(tmp_path / "p")


def test_reader_refuses_unfinished_and_missing(tmp_path):
    writer = PoolWriter(tmp_path / "p", {"method": "m"})
    writer.write_shard(0, [_row(0)])
    with pytest.raises(PoolError, match="not finished"):
        load_pool(tmp_path / "p")
    assert len(load_pool(tmp_path / "p", allow_partial=True)) == 1
    with pytest.raises(PoolError, match="no such pool"):
        load_pool(tmp_path / "nothing")


def test_writer_refuses_changed_parameters(tmp_path):
    PoolWriter(tmp_path / "p", {"method": "m", "seed": 0})
    with pytest.raises(PoolError, match="different"):
        PoolWriter(tmp_path / "p", {"method": "m", "seed": 1})
    PoolWriter(tmp_path / "p", {"method": "m", "seed": 1}, overwrite=True)


def test_a_pool_begun_by_an_earlier_recipe_is_not_resumed_into_a_mix(tmp_path):
    """A captioner pool an earlier mat-plus began (captions decoded `man ' s`, before recipe 2) was
    resumed by the new one (`man's`), exit 0: one pool of two decodings. A pool written before the
    key is recipe 1, so the generators that did not change resume it as before."""
    from augment.generators.captioner import CaptionerGenerator
    from augment.hub import same_pool

    PoolWriter(tmp_path / "p", {"method": "i2t-x", "seed": 0}).write_shard(0, [_row(0)])  # no recipe: the old writer
    PoolWriter(tmp_path / "p", {"method": "i2t-x", "seed": 0, "recipe": 1})  # recipe 1 generators resume it
    with pytest.raises(PoolError, match=rf"different recipe \(recipe 1, now {CaptionerGenerator.recipe}: an earlier "
                                        r"mat-plus wrote its rows otherwise"):
        PoolWriter(tmp_path / "p", {"method": "i2t-x", "seed": 0, "recipe": CaptionerGenerator.recipe})
    assert len(list((tmp_path / "p" / "data").glob("*.parquet"))) == 1  # nothing lost
    assert same_pool({"method": "eda", "recipe": 1}, {"method": "eda"})  # a pool pushed before the key


def test_a_copy_pushed_before_a_key_was_recorded_is_the_same_pool():
    """Every key of `KEYS_ADDED_SINCE` that one side lacks is unchecked, as a resume leaves it: a copy pushed
    before the source's image fingerprint was recorded read as another pool (push wanted --force, which
    deletes the repository's files first); a recorded key that differs still is another pool."""
    from augment.hub import same_pool
    from augment.pool import KEYS_ADDED_SINCE

    ours = {"method": "eda", "recipe": 1, "source_images": "abc", "device_type": "cuda"}
    for key in KEYS_ADDED_SINCE:
        older = {k: v for k, v in ours.items() if k != key}
        assert same_pool(ours, older) and same_pool(older, ours), key
        assert not same_pool(ours, {**ours, key: "other"}), key


class _CountingGenerator(Generator):
    """Makes one caption per source caption; can be told to die on a given call (a killed run)."""

    method = "count"

    def __init__(self, die_on_call=None):
        self.calls = 0
        self.die_on_call = die_on_call

    def generate(self, items, n, seed):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt
        return [self.row(item, c, 0, seed, caption=f"{caption} [{row_seed(seed, item['image_id'], c, 0) % 97}]")
                for item in items for c, caption in enumerate(item["captions"])]


def test_killed_run_resumes_to_the_same_pool(karpathy_dir, tmp_path, capsys):
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    straight = run_generation(_CountingGenerator(), source, str(tmp_path / "a"), **kwargs)
    with pytest.raises(KeyboardInterrupt):
        run_generation(_CountingGenerator(die_on_call=2), source, str(tmp_path / "b"), **kwargs)
    assert len(list((tmp_path / "b" / "data").glob("shard-*.parquet"))) == 1  # the finished shard stays
    # what a process killed mid-write leaves beside the pool's files and shards (pid 2**22 + 1 is never live)
    leftovers = [tmp_path / "b" / ".pool.json.tmp-4194305", tmp_path / "b" / "data" / ".shard-00001.parquet.tmp-4194305"]
    for path in leftovers:
        path.write_text("half")
    resumed_gen = _CountingGenerator()
    capsys.readouterr()
    resumed = run_generation(resumed_gen, source, str(tmp_path / "b"), **kwargs)
    assert resumed_gen.calls == 2  # only the missing shards
    assert f"resuming {tmp_path / 'b'}: 1 of 3 shards kept (--overwrite starts over)" in capsys.readouterr().err
    assert resumed["num_rows"] == straight["num_rows"] == 30
    a, b = load_pool(tmp_path / "a").dataset, load_pool(tmp_path / "b").dataset
    assert a["row_id"] == b["row_id"] and a["caption"] == b["caption"]
    assert len(set(b["row_id"])) == len(b)
    assert not any(path.exists() for path in leftovers)  # the next run deleted them


def test_a_resumed_run_s_progress_bar_starts_at_its_kept_shards(karpathy_dir, tmp_path, capsys):
    """The kept shards were added to the bar just after it opened, which tqdm does not draw at once: the
    bar read 0/6 until the first new shard was done, then jumped (at real size, minutes at 0%), and its
    rate counted the kept items as made in that shard's time. They are its start now."""
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_generation(_CountingGenerator(die_on_call=2), source, str(tmp_path / "p"), progress=False, **kwargs)
    seen = []

    class Watching(_CountingGenerator):
        def generate(self, items, n, seed):  # what the bar shows while the first new shard is made
            seen.append(capsys.readouterr().err)
            return super().generate(items, n, seed)

    capsys.readouterr()
    run_generation(Watching(), source, str(tmp_path / "p"), progress=True, **kwargs)
    frames = [frame for frame in re.split(r"[\r\n]", seen[0]) if "count -> p" in frame]
    assert frames and all("2/6" in frame for frame in frames), seen[0]


def test_rank_0_s_progress_bar_counts_its_own_shards(karpathy_dir, tmp_path, capsys):
    """was: under torchrun rank 0's bar had the whole source as its total but counted only its own shards (every
    WORLD_SIZE-th), so a finished run's bar stopped at 55% (24/44 on two processes). Its total is its shards now."""
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, world_size=2)
    calls = []

    def barrier():  # the other process: its shards made between rank 0's two barriers
        calls.append(1)
        if len(calls) == 2:
            run_generation(_CountingGenerator(), source, str(tmp_path / "p"), rank=1, progress=False, **kwargs)

    capsys.readouterr()
    meta = run_generation(_CountingGenerator(), source, str(tmp_path / "p"), rank=0, barrier=barrier, progress=True,
                          **kwargs)
    assert meta["source_items"] == 6  # shards 0 and 2 of 3 are rank 0's: 4 of the 6 images
    frames = [frame for frame in re.split(r"[\r\n]", capsys.readouterr().err) if "count -> p" in frame]
    assert frames and "4/4" in frames[-1] and "100%" in frames[-1], frames


@pytest.mark.parametrize("old_pool, overwrite", [(False, False), (False, True), (True, True)])
def test_two_processes_take_alternate_shards_by_their_global_rank_and_make_the_one_process_pool(
        karpathy_dir, tmp_path, monkeypatch, old_pool, overwrite):
    """Rank r of w makes shards r, r + w, ...; the pool is the one a single process makes (rows and seeds), with or
    without --overwrite, over an old pool or none. The second process reads its rank from the environment, as under
    torchrun on a second node (RANK 1, LOCAL_RANK 0); found by a mutation audit: a share by LOCAL_RANK, and the other
    ranks writing into the replacement folder whenever --overwrite is given, passed every test; a seed moved with the
    rank, or a rank returning before the last barrier, only the slow torchrun test of test_image_generators (audit CJ)."""
    source, _ = load_source(str(karpathy_dir))
    ids = source["image_id"]
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False, overwrite=overwrite)
    if old_pool:
        run_generation(_CountingGenerator(), source, str(tmp_path / "two"), n=2, seed=4, split="all", progress=False)
    made = {}

    class Recording(_CountingGenerator):
        def __init__(self, process):
            super().__init__()
            self.process = process

        def generate(self, items, n, seed):
            made.setdefault(self.process, []).append([item["image_id"] for item in items])
            return super().generate(items, n, seed)

    calls, other_calls = [], []

    def barrier():  # the other process: its shards made once rank 0 has created the pool, before rank 0 makes its own
        calls.append(1)
        if len(calls) == 1:
            with monkeypatch.context() as launch:
                for name, value in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
                    launch.setenv(name, value)
                assert run_generation(Recording("rank 1"), source, str(tmp_path / "two"),
                                      barrier=lambda: other_calls.append(1), **kwargs) is None

    meta = run_generation(Recording("rank 0"), source, str(tmp_path / "two"), rank=0, world_size=2, barrier=barrier,
                          **kwargs)
    assert made == {"rank 0": [ids[0:2], ids[4:6]], "rank 1": [ids[2:4]]}
    assert len(other_calls) == len(calls) == 2  # each process meets every barrier: one missed leaves the others waiting
    assert meta["num_shards"] == 3 and meta["seed"] == 3
    assert not (tmp_path / "two" / ".replacement").exists()
    rows = load_pool(tmp_path / "two").dataset  # in the source's order, each row seeded by its identity alone
    assert rows["row_id"] == [f"count:{image}:{c}:0" for image in ids for c in range(5)]
    assert rows["seed"] == [row_seed(3, image, c, 0) for image in ids for c in range(5)]


def test_a_pools_rows_and_seeds_do_not_depend_on_its_shard_size_or_limit(karpathy_dir, tmp_path):
    """Shard boundaries move no row: shards of 4 (the last one partial) give shards of 2's rows, and --limit 3 their
    first 3 images' rows (audit CJ: a seed moved by the shard's index, or the last partial shard left out, was caught
    only by a diffusion regeneration test and a --skip-bad resume test)."""
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", progress=False)
    pools = {size: run_generation(_CountingGenerator(), source, str(tmp_path / f"by{size}"), shard_size=size, **kwargs)
             for size in (2, 4)}
    limited = run_generation(_CountingGenerator(), source, str(tmp_path / "limited"), shard_size=2, limit=3, **kwargs)
    assert [pools[size]["num_shards"] for size in (2, 4)] == [3, 2] and limited["num_shards"] == 2
    rows = {name: load_pool(tmp_path / name).dataset for name in ("by2", "by4", "limited")}
    ids = source["image_id"]
    for name, images in (("by2", ids), ("by4", ids), ("limited", ids[:3])):
        assert rows[name]["row_id"] == [f"count:{image}:{c}:0" for image in images for c in range(5)], name
        assert rows[name]["seed"] == [row_seed(3, image, c, 0) for image in images for c in range(5)], name


class _Settable(_CountingGenerator):
    """A counting generator with a parameter and a model revision to change between a kill and its resume."""

    def __init__(self, die_on_call=None, alpha=0.1, model_revision="r1"):
        super().__init__(die_on_call)
        self.alpha, self.model_revision = alpha, model_revision

    def params(self):
        return {"alpha": self.alpha}


def test_a_resume_with_another_seed_n_setting_parameter_or_revision_is_refused_naming_it(karpathy_dir, tmp_path):
    """Each setting a shard's rows depend on is checked before a kept shard is resumed into; found by a mutation
    audit: pool.json's identity without n, split, limit or model revision resumed such a run into a pool of two
    kinds of rows, and passed every test (audit CJ)."""
    source, _ = load_source(str(karpathy_dir))
    out = str(tmp_path / "p")
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False, device_type="cpu")
    with pytest.raises(KeyboardInterrupt):
        run_generation(_Settable(die_on_call=2), source, out, **kwargs)
    for changed, generator, settings in [
        ("seed", _Settable(), {"seed": 4}), ("n", _Settable(), {"n": 2}), ("split", _Settable(), {"split": None}),
        ("limit", _Settable(), {"limit": 5}), ("shard_size", _Settable(), {"shard_size": 3}),
        ("params ['alpha']", _Settable(alpha=0.2), {}), ("model_revision", _Settable(model_revision="r2"), {}),
        ("device_type", _Settable(), {"device_type": "cuda"}),
    ]:
        with pytest.raises(PoolError, match=re.escape(f"made with different {changed}")):
            run_generation(generator, source, out, **{**kwargs, **settings})
        assert generator.calls == 0, changed
    assert run_generation(_Settable(), source, out, **kwargs)["num_rows"] == 30  # unchanged: resumed


def test_a_new_shard_does_not_show_the_last_shard_s_report(karpathy_dir, tmp_path, capsys, monkeypatch):
    """was: the postfix kept the finished shard's 'shard 1/3: 2/2 images' while the next shard's first model
    batch ran (minutes at real size); it names the new shard as soon as that begins."""
    from augment import progress

    # the bar on a terminal, redrawn at each postfix (off one, a line every LOG_INTERVAL_S: test_log_output.py)
    monkeypatch.setattr(progress, "writes_to_terminal", lambda stream: True)
    source, _ = load_source(str(karpathy_dir))
    seen = []

    class Reporting(_CountingGenerator):
        def generate(self, items, n, seed):
            seen.append([f for f in re.split(r"[\r\n]", capsys.readouterr().err) if "count -> p" in f][-1:])
            rows = super().generate(items, n, seed)
            self.shard_progress(len(items), len(items), "images")
            return rows

    capsys.readouterr()
    run_generation(Reporting(), source, str(tmp_path / "p"), n=1, seed=3, split="all", shard_size=2, progress=True)
    assert [frames[-1].rstrip()[-10:] for frames in seen] == [", ?item/s]", "shard 2/3]", "shard 3/3]"], seen
    assert "shard 3/3: 2/2 images" in capsys.readouterr().err


def test_overwrite_keeps_the_old_pool_until_the_new_one_is_complete(karpathy_dir, tmp_path, monkeypatch):
    """`generate --overwrite` deleted the pool's shards when its writer opened: a bad image or Ctrl-C
    in the new run left neither pool (and the interruption line said finished shards were kept). The
    new pool is built inside the folder and swapped in by renames there: a mount point, `--out .` or a
    link to a pool folder is replaced in place; a killed replacement is begun anew (--overwrite starts over)."""
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    target = tmp_path / "work" / "real"
    old = run_generation(_CountingGenerator(), source, str(target), seed=3, n=1, split="all", shard_size=5, progress=False)
    (target / "scores.json").write_text("{}")  # the old pool's scores: kept, recognised as stale by their stamps
    (tmp_path / "work" / "link").symlink_to(target)
    monkeypatch.chdir(tmp_path / "work" / "link")
    with pytest.raises(KeyboardInterrupt):
        run_generation(_CountingGenerator(die_on_call=2), source, ".", overwrite=True, **kwargs)
    assert load_pool(target).meta == old and len(load_pool(target)) == old["num_rows"]  # whole, unchanged
    again = _CountingGenerator()
    new = run_generation(again, source, ".", overwrite=True, **kwargs)
    assert again.calls == 3  # started over
    assert new["shard_size"] == 2 and load_pool(target).meta["finished"] == new["finished"]
    assert (target / "scores.json").read_text() == "{}"
    assert sorted(p.name for p in target.iterdir()) == [".generate.lock", "README.md", "data", "pool.json", "scores.json"]
    assert (tmp_path / "work" / "link").is_symlink()


class _SecondRecipe(_CountingGenerator):
    recipe, recipe_since = 2, "2026-12-03T15:26:17+00:00"


@pytest.mark.parametrize("created, resumed", [("2026-12-04T09:00:00+00:00", True), ("2026-12-01T09:00:00+00:00", False)])
def test_a_pool_without_its_recipe_is_read_by_its_creation_time(karpathy_dir, tmp_path, created, resumed):
    """A captioner pool made between the decoding change and the recipe key was read as recipe 1 and
    refused, although this code made its rows; one created before the change still is."""
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_generation(_SecondRecipe(die_on_call=2), source, str(tmp_path / "p"), **kwargs)
    meta_path = tmp_path / "p" / "pool.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("recipe")
    meta_path.write_text(json.dumps({**meta, "created": created}))
    if resumed:
        assert run_generation(_SecondRecipe(), source, str(tmp_path / "p"), **kwargs)["recipe"] == 2
    else:
        with pytest.raises(PoolError, match="recipe 1, now 2"):
            run_generation(_SecondRecipe(), source, str(tmp_path / "p"), **kwargs)


class _PixelGenerator(_CountingGenerator):
    """Reads each item's pixels (as img-aug, a captioner or t-i2i-sd do)."""

    method = "pixels"
    reads_pixels = True

    def generate(self, items, n, seed):
        return [self.row(item, 0, 0, seed, caption=f"{item['image'].size}") for item in items]


def test_a_resume_reading_other_image_files_is_refused_and_text_methods_decode_none(karpathy_dir, tmp_path, monkeypatch):
    """was: another --image-root (or images replaced in place) resumed a pixel method's pool, its
    first shards made of the old pixels; and text-only methods decoded every image."""
    import shutil

    import augment.sources

    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    run_generation(_PixelGenerator(), source, str(tmp_path / "pixels"), **kwargs)
    assert load_pool(tmp_path / "pixels").meta["source_images"]
    shutil.copytree(karpathy_dir / "images", tmp_path / "moved")  # the same images, other files
    moved, _ = load_source(str(karpathy_dir / "dataset_toy.json"), image_root=str(tmp_path / "moved"))
    with pytest.raises(PoolError, match="kept shards data/shard-00000.parquet .* made from other source records or image files"):
        run_generation(_PixelGenerator(), moved, str(tmp_path / "pixels"), **kwargs)
    # a pool written before both keys resumes as it did then, and records them from then on
    meta_path = tmp_path / "pixels" / "pool.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("source_images", "shard_inputs")}))
    resumed = run_generation(_PixelGenerator(), moved, str(tmp_path / "pixels"), **kwargs)
    assert resumed["source_images"] and resumed["shard_inputs"]
    # a method that reads no pixels decodes none (a corrupt image beyond its use cannot stop it)
    decoded = []
    opened = augment.sources.open_image
    monkeypatch.setattr(augment.sources, "open_image", lambda *a, **k: decoded.append(a) or opened(*a, **k))
    text_pool = run_generation(_CountingGenerator(), moved, str(tmp_path / "text"), **kwargs)
    assert text_pool["num_rows"] == 30 and decoded == [] and "source_images" not in text_pool


def test_a_kept_shard_whose_image_changed_is_named_by_its_own_first_and_last_images(karpathy_dir, tmp_path):
    """The refusal names the changed shard's own source images (shard 1 of shards of 3: the 4th to 6th); found by a
    mutation audit: naming the images from the shard's index rather than its first row, or its second image as its
    last, passed every test, whose changed shard was always the first (audit CJ)."""
    from tests.conftest import write_image

    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=3, progress=False)
    run_generation(_PixelGenerator(), source, str(tmp_path / "pixels"), **kwargs)
    write_image(karpathy_dir / "images" / "004.jpg", colour=7)  # another picture under the same name, in shard 1
    changed, _ = load_source(str(karpathy_dir), cache=False)
    ids = changed["image_id"]
    with pytest.raises(PoolError, match=re.escape(f"kept shard data/shard-00001.parquet (source images {ids[3]!r} to "
                                                  f"{ids[5]!r})")):
        run_generation(_PixelGenerator(), changed, str(tmp_path / "pixels"), **kwargs)


def test_a_run_reads_only_the_first_limit_items_of_its_split_and_their_images(karpathy_dir, tmp_path):
    """`prepare`, the shards, `pool_notes` and each kept shard's recorded inputs all see the split's first --limit
    items: a caption and an image beyond the limit changing keep the pool, the image within it refuses its shard;
    found by a mutation audit: the shards' inputs taken from the whole split, or the image files paired with the
    source's first rows instead of the split's, passed every test (audit CJ)."""
    from tests.conftest import write_image

    seen = {}

    class Watching(_PixelGenerator):
        def prepare(self, items):
            seen["prepare"] = list(items["image_id"])

        def pool_notes(self, items, n, num_rows):
            seen["pool_notes"] = list(items["image_id"])
            return {}

    source, _ = load_source(str(karpathy_dir))
    ids = source["image_id"]  # the test split: its 5th and 6th
    kwargs = dict(n=1, seed=3, split="test", limit=1, shard_size=2, progress=False)
    meta = run_generation(Watching(), source, str(tmp_path / "p"), **kwargs)
    assert seen == {"prepare": [ids[4]], "pool_notes": [ids[4]]} and meta["num_rows"] == 1
    assert load_pool(tmp_path / "p").dataset["source_image_id"] == [ids[4]]
    annotations = json.loads((karpathy_dir / "dataset_toy.json").read_text())
    annotations["images"][5]["sentences"][0]["raw"] = "another caption"  # beyond the limit
    (karpathy_dir / "dataset_toy.json").write_text(json.dumps(annotations))
    write_image(karpathy_dir / "images" / "005.jpg", colour=7)
    changed, _ = load_source(str(karpathy_dir), cache=False)
    assert run_generation(Watching(), changed, str(tmp_path / "p"), **kwargs)["num_rows"] == 1
    write_image(karpathy_dir / "images" / "004.jpg", colour=7)  # the pool's one image
    changed, _ = load_source(str(karpathy_dir), cache=False)
    with pytest.raises(PoolError, match=re.escape(f"kept shard data/shard-00000.parquet (source images {ids[4]!r})")):
        run_generation(Watching(), changed, str(tmp_path / "p"), **kwargs)


def test_a_folder_a_writer_was_killed_in_before_its_first_pool_json_is_reused(tmp_path):
    """was: an empty data/ and a half-written pool.json stopped every later run ("exists and is not a
    pool"), --overwrite included."""
    folder = tmp_path / "p"
    (folder / "data").mkdir(parents=True)
    (folder / ".pool.json.tmp-4194305").write_text("half")
    PoolWriter(folder, {"method": "m"}).write_shard(0, [_row(0)])
    assert (folder / "pool.json").is_file() and not (folder / ".pool.json.tmp-4194305").exists()
    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PoolError, match="exists and is not a pool"):
        PoolWriter(tmp_path / "other", {"method": "m"})


def test_loader_workers_give_the_same_pool_and_resume(karpathy_dir, tmp_path):
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    inline = run_generation(_CountingGenerator(), source, str(tmp_path / "inline"), **kwargs)
    with pytest.raises(KeyboardInterrupt):
        run_generation(_CountingGenerator(die_on_call=2), source, str(tmp_path / "loaded"), workers=2, **kwargs)
    resumed_gen = _CountingGenerator()
    resumed = run_generation(resumed_gen, source, str(tmp_path / "loaded"), workers=2, **kwargs)
    assert resumed_gen.calls == 2 and resumed["num_rows"] == inline["num_rows"]
    a, b = load_pool(tmp_path / "inline").dataset, load_pool(tmp_path / "loaded").dataset
    assert a["row_id"] == b["row_id"] and a["caption"] == b["caption"]


def test_hub_pool_id_fails_fast_offline(network_attempts):
    with pytest.raises(PoolError, match="no pool folder someone/some-pool@v2 here, and cannot fetch pool 'someone/some-pool@v2' from the Hub"):
        load_pool("someone/some-pool@v2")
    assert network_attempts == []  # offline: not a connection tried, so nothing to time out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_loader_workers_end_when_their_parent_is_killed(tmp_path):
    """kill -9 of a command left its DataLoader worker running (busy, it never ran torch's parent
    check); the kernel now kills it with its parent."""
    assert not loader_worker_outlives_killed_parent(tmp_path)


def test_loader_workers_raise_the_records_own_error():
    from augment.errors import SourceError
    from augment.loading import ordered_batches

    def check(value):
        if value == 3:
            raise SourceError("images.json, record 3: image file missing")
        return value * 2

    assert list(ordered_batches(list(range(6)), [[0, 1], [2, 3], [4, 5]], 0, lambda v: v * 2)) == [[0, 2], [4, 6], [8, 10]]
    assert list(ordered_batches(list(range(4)), [[0, 1], [2]], 2, lambda v: v * 2)) == [[0, 2], [4]]
    with pytest.raises(SourceError, match="^images.json, record 3: image file missing$"):
        list(ordered_batches(list(range(6)), [[0, 1], [2, 3], [4, 5]], 2, check))


def _halve_or_fail(value):
    from augment.errors import SourceError

    if value == 3:
        raise SourceError("images.json, record 3: image file missing")
    return value / 2


def _process_id(_item) -> int:
    return os.getpid()


def test_decoding_workers_serve_several_passes_with_their_own_functions():
    """`DecodingWorkers` (one evaluation's workers for every attack's pass): each pass's batches in
    order by the function it names, as inline; a record's error is its own; a pass read after a later
    one started raises rather than hand over the later pass's batches; close, then a new pass, works."""
    from augment.errors import SourceError
    from augment.loading import DecodingWorkers

    functions = {"double": functools.partial(operator.mul, 2), "halve": _halve_or_fail}
    for workers in (0, 2):
        with DecodingWorkers(list(range(6)), functions, workers) as decoding:
            assert list(decoding.passes("double", [[0, 1], [5]])) == [[0, 2], [10]]
            assert list(decoding.passes("halve", [[4], [0, 2]])) == [[2.0], [0.0, 1.0]]
            assert list(decoding.passes("double", [])) == []
            with pytest.raises(SourceError, match="^images.json, record 3: image file missing$"):
                list(decoding.passes("halve", [[2, 3]]))
            first = decoding.passes("double", [[0], [1], [2]])
            assert next(first) == [0]
            assert list(decoding.passes("halve", [[2]])) == [[1.0]]
            if workers:
                with pytest.raises(RuntimeError, match="after a later one started"):
                    next(first)
            with pytest.raises(KeyError, match="no decoding function 'triple'"):
                decoding.passes("triple", [[0]])
            decoding.close()
            assert list(decoding.passes("double", [[3]])) == [[6]]
    with DecodingWorkers(list(range(4)), {"pid": _process_id}, 2) as decoding:
        pids = {pid for batch in decoding.passes("pid", [[0], [1], [2], [3]]) for pid in batch}
        assert len(pids) == 2 and os.getpid() not in pids
    for pid in pids:  # close() ended and reaped the persistent workers
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_writing_a_pool_again_with_fewer_shards_leaves_none_of_the_old_ones(tmp_path):
    """write_pool over a pool of the same identity (a selection re-run) rewrote shards 0..k and kept
    the old ones past them: `finalize` then refused ("N of M shards written") on every re-run."""
    rows = [_row(0, caption=f"a red circle {k}") for k in range(5)]
    for k, row in enumerate(rows):
        row["row_id"] = f"m:000000:0:{k}"
    write_pool(tmp_path / "p", rows, {"method": "m"}, shard_rows=2)
    assert len(list((tmp_path / "p" / "data").glob("shard-*.parquet"))) == 3
    meta = write_pool(tmp_path / "p", rows[:2], {"method": "m"}, shard_rows=2)
    assert meta["num_rows"] == 2 and meta["num_shards"] == 1
    assert len(load_pool(tmp_path / "p")) == 2


def test_reopening_a_finished_pool_keeps_its_finish_stamp_unless_a_shard_is_written(tmp_path, monkeypatch):
    """Re-running the same generate on a finished pool wrote nothing but renewed pool.json's `finished`,
    which the pool's scores compare: select then refused them ("data files changed"), push dropped them."""
    import augment.pool as pool_module

    stamps = iter(["2026-12-05T10:00:00Z", "2026-12-05T11:00:00Z", "2026-12-05T12:00:00Z"])
    monkeypatch.setattr(pool_module, "_utc_now", lambda: next(stamps))
    writer = PoolWriter(tmp_path / "p", {"method": "m"})
    writer.write_shard(0, [_row(0)])
    first = writer.finalize(expected_shards=1)["finished"]
    again = PoolWriter(tmp_path / "p", {"method": "m"})
    assert again.has_shard(0)  # a resume: nothing to write
    assert again.finalize(expected_shards=1)["finished"] == first
    assert load_pool(tmp_path / "p").meta["finished"] == first
    rewritten = PoolWriter(tmp_path / "p", {"method": "m"})
    rewritten.write_shard(0, [_row(0, caption="a blue square")])  # a shard written: the pool changed
    assert rewritten.finalize(expected_shards=1)["finished"] != first


@pytest.mark.parametrize("moved_aside", [["pool.json"], ["pool.json", "data", "README.md"]])
def test_a_swap_a_sigkill_cut_short_is_finished_by_the_next_run(karpathy_dir, tmp_path, moved_aside):
    """A SIGKILL inside --overwrite's swap left OUT without pool.json: the next run deleted the finished
    new pool in OUT/.replacement, then refused OUT as "not a pool", the old one hidden in .replaced-PID."""
    import shutil

    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    out = tmp_path / "pool"
    run_generation(_CountingGenerator(), source, str(out), n=1, seed=4, split="all", shard_size=5, progress=False)
    new = run_generation(_CountingGenerator(), source, str(out / ".replacement"), **kwargs)
    aside = out / ".replaced-4194305"  # the killed process's
    aside.mkdir()
    for name in moved_aside:  # the old files the swap had moved out when it was killed
        shutil.move(str(out / name), str(aside / name))
    again = _CountingGenerator()
    finished = run_generation(again, source, str(out), **kwargs)
    assert again.calls == 0 and finished["finished"] == new["finished"] and load_pool(out).meta["shard_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == [".generate.lock", "README.md", "data", "pool.json"]


def test_a_selection_of_a_pool_keeps_its_parent_whether_or_not_the_recipe_is_recorded():
    """Recording the recipe (2026-12-05) in a pool made its selections "a pool made with different parent"."""
    from augment.pool import identity_value

    made = {"method": "i2t-x", "seed": 0}
    assert identity_value({"parent": {"path": "p", "meta": made}}, "parent") == \
        identity_value({"parent": {"path": "p", "meta": {**made, "recipe": 2}}}, "parent")


def test_ctrl_c_during_the_swap_leaves_the_new_pool_and_no_old_files(karpathy_dir, tmp_path, monkeypatch):
    """Ctrl-C held through the swap's renames was raised on leaving them, which skipped the clean-up:
    the old pool stayed in OUT/.replaced-PID for good."""
    import contextlib

    import augment.atomic

    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    out = tmp_path / "pool"
    run_generation(_CountingGenerator(), source, str(out), n=1, seed=4, split="all", shard_size=5, progress=False)

    @contextlib.contextmanager
    def held_then_raised():  # a Ctrl-C that arrived during the renames, raised when they are done
        yield
        raise KeyboardInterrupt

    monkeypatch.setattr(augment.atomic, "interrupts_held", held_then_raised)
    with pytest.raises(KeyboardInterrupt):
        run_generation(_CountingGenerator(), source, str(out), overwrite=True, **kwargs)
    assert load_pool(out).meta["shard_size"] == 2  # the new pool, whole
    assert sorted(p.name for p in out.iterdir()) == [".generate.lock", "README.md", "data", "pool.json"]


def test_a_selection_of_large_images_is_held_and_written_a_bounded_number_of_bytes_at_a_time(tmp_path, monkeypatch):
    """`augment select` held 1,000 rows at a time as Python objects and wrote shards of 5,000 rows whatever
    their images weighed: 300 rows of 800 KB images (one shard) took 2.1 GB of memory, and a pool of
    512 px images would have needed tens of GB per shard. Rows are read a block of ROW_BLOCK_BYTES and
    written in shards of SHARD_IMAGE_BYTES of images at most, the rows unchanged (audit AM)."""
    import io

    import pyarrow.parquet as pq
    from datasets import Image as ImageFeature

    import augment.pool as pool_module
    import augment.select as select_module
    import augment.sources as sources
    from augment.select import SelectFilters, select_pool

    def png(i):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (i, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    images = [png(i) for i in range(12)]
    rows = [_row(i, "image", None, {"bytes": images[i], "path": None}) for i in range(12)]
    write_pool(tmp_path / "p", rows, {"method": "m"})
    parent = load_pool(tmp_path / "p")
    cap = 3 * len(images[0])
    monkeypatch.setattr(pool_module, "SHARD_IMAGE_BYTES", cap)
    monkeypatch.setattr(select_module, "ROW_BLOCK_BYTES", 4 * parent.dataset.data.table.nbytes // 12)
    blocks = []
    real_take = sources.take_table_rows
    monkeypatch.setattr(sources, "take_table_rows", lambda table, positions: blocks.append(len(positions)) or
                        real_take(table, positions))
    meta = select_pool(parent, str(tmp_path / "sel"), SelectFilters(modality="image"))
    assert meta["num_rows"] == 12 and max(blocks) <= 4 and sum(blocks) == 12
    shards = sorted((tmp_path / "sel" / "data").glob("*.parquet"))
    assert len(shards) >= 4
    for shard in shards:
        stored = pq.read_table(shard, columns=["image"])["image"].to_pylist()
        assert sum(len(image["bytes"]) for image in stored) <= cap + max(map(len, images))
    selected = load_pool(tmp_path / "sel").dataset.cast_column("image", ImageFeature(decode=False))
    assert [row["image"]["bytes"] for row in selected] == images


@pytest.mark.parametrize("swapped_after", ["read_pool_meta", "open_shard"])
def test_a_pool_swapped_in_while_it_is_read_is_read_whole_from_one_pool(karpathy_dir, tmp_path, monkeypatch,
                                                                       swapped_after):
    """`augment generate --overwrite` (or `select`) swapping its pool in while `augment score`, `select --from`,
    `push` or `train --pools` read the folder: swapped after pool.json was read, the old pool.json was read with
    the new pool's rows as one pool; after the first shard, a shard of each was refused as a damaged pool (a row
    id twice). The read is done again when the folder's files changed under it."""
    import augment.pool as pool_module
    from augment.pool import swap_in_replacement

    source, _ = load_source(str(karpathy_dir))
    out = tmp_path / "pool"
    run_generation(_CountingGenerator(), source, str(out), n=1, seed=4, split="all", shard_size=5, progress=False)
    run_generation(_CountingGenerator(), source, str(out / ".replacement"), n=1, seed=3, split="all", shard_size=2,
                   progress=False)
    new_rows = load_pool(out / ".replacement").dataset["seed"]
    real, swapped = getattr(pool_module, swapped_after), []

    def then_swapped(*args, **kwargs):  # the other command's swap, deterministically at this point of the read
        result = real(*args, **kwargs)
        if not swapped:
            swapped.append(True)
            swap_in_replacement(out)
        return result

    monkeypatch.setattr(pool_module, swapped_after, then_swapped)
    pool = load_pool(out)
    assert swapped and pool.meta["seed"] == 3 and pool.meta["shard_size"] == 2 and pool.dataset["seed"] == new_rows


def test_a_selection_swapped_in_while_the_pool_is_read_is_read_whole(tmp_path, monkeypatch):
    """`augment select --overwrite --out X` swapping the whole folder X (`write_pool`) while `train --pools X`
    or `augment score X` read it: after pool.json was read, the read was refused as "a shard is missing or
    was replaced" (the old pool.json's row count beside the new rows), or, at the same count, the old
    pool.json went with the new rows."""
    import augment.pool as pool_module

    out = tmp_path / "selected"
    write_pool(out, [_row(i) for i in range(4)], {"method": "m", "seed": 1})
    real, swapped = pool_module.read_pool_meta, []

    def then_selected(*args, **kwargs):
        result = real(*args, **kwargs)
        if not swapped:
            swapped.append(True)
            write_pool(out, [_row(i, caption="a blue square") for i in range(3)], {"method": "m", "seed": 2},
                       overwrite=True)
        return result

    monkeypatch.setattr(pool_module, "read_pool_meta", then_selected)
    pool = load_pool(out)
    assert swapped and pool.meta["seed"] == 2 and pool.dataset["caption"] == ["a blue square"] * 3


@pytest.mark.parametrize("name", ["selected", "pool*"])
def test_a_pool_read_between_the_two_renames_of_a_swap_waits_for_the_second(tmp_path, monkeypatch, name):
    """`select --overwrite --out X` swaps the whole folder: the old X renamed aside (`.X.old-PID`), then the new
    one in. A reader at that instant found no X: `no pool folder X here, and cannot fetch pool 'X' from the Hub`
    (an `org/name`-shaped path was asked of the Hub). It waits for the second rename. `pool*`: the old folder
    aside was looked for with a glob of the name, a ValueError traceback ('**' can only be an entire path
    component); the names are compared as they are now."""
    import time

    out = tmp_path / name
    write_pool(tmp_path / "staged", [_row(i) for i in range(2)], {"method": "m", "seed": 2})
    (tmp_path / f".{name}.old-{os.getpid()}").mkdir()  # the old folder aside, by a live process
    slept = []

    def second_rename(seconds):
        slept.append(seconds)
        os.replace(tmp_path / "staged", out)

    monkeypatch.setattr(time, "sleep", second_rename)
    pool = load_pool(out)
    assert slept and pool.meta["seed"] == 2 and len(pool) == 2


def test_wait_out_a_swap_matches_the_folder_name_as_it_is(tmp_path, monkeypatch):
    """A folder `ckpt[1]` missing with `.ckpt[1].old-PID` of a live process aside: the glob of the name read `[1]`
    as a set of characters and found nothing, so no wait; a name with `**` raised ValueError; a missing folder with
    nothing aside returns at once."""
    import time

    from augment.atomic import wait_out_a_swap

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    wait_out_a_swap(tmp_path / "nothing**")  # no swap: at once, and no ValueError
    assert slept == []
    (tmp_path / f".ckpt[1].old-{os.getpid()}").mkdir()
    wait_out_a_swap(tmp_path / "ckpt[1]")  # the second rename never comes: a few tries, then it returns
    assert len(slept) == 5 and sum(slept) < 1


def test_a_pool_swapped_in_within_the_same_second_is_read_whole_on_a_filesystem_of_whole_seconds(tmp_path,
                                                                                                  monkeypatch):
    """load_pool told a swap under its read by the files' sizes, modification and change times alone: on a file
    system keeping coarse times (FAT: two seconds, and Linux reports its change time as the modification time;
    ext3, HFS+ and some NFS servers whole seconds) a `select --overwrite` of as many rows (pool.json and shards
    of the same sizes) swapped in within those seconds went unseen, and the old pool.json was read with the new
    rows as one pool; the pool's Arrow copy, cached under the shards' times and sizes, gave a pool read before
    its old rows again. A file renamed in is another file (its inode) whatever its times."""
    import augment.pool as pool_module
    import augment.source_cache as source_cache

    real_identity, start = source_cache.file_identity, 1_700_000_000 * 10**9  # an even second

    def fat_times(path):  # what such a file system reports
        identity = real_identity(path)
        return None if identity is None else [identity[0], identity[1] // (2 * 10**9), identity[1] // (2 * 10**9)]

    def files(folder):
        return [folder / "pool.json", *sorted((folder / "data").glob("*.parquet"))]

    def written_at(folder, ns):
        for path in files(folder):
            os.utime(path, ns=(ns, ns))

    out = tmp_path / "selected"
    write_pool(out, [_row(i, caption="a red circle") for i in range(4)], {"method": "m", "seed": 1})
    written_at(out, start)
    sizes = {p.name: p.stat().st_size for p in files(out)}
    real, swapped = pool_module.read_pool_meta, []

    def then_selected(*args, **kwargs):
        result = real(*args, **kwargs)
        if not swapped:
            swapped.append(True)
            write_pool(out, [_row(i, caption="a tan circle") for i in range(4)], {"method": "m", "seed": 2},
                       overwrite=True)
            written_at(out, start)  # within the same second: what such a file system records
        return result

    monkeypatch.setattr(source_cache, "file_identity", fat_times)
    assert load_pool(out).dataset["caption"] == ["a red circle"] * 4  # read before: its Arrow copy cached
    monkeypatch.setattr(pool_module, "read_pool_meta", then_selected)
    pool = load_pool(out)
    assert swapped and sizes == {p.name: p.stat().st_size for p in files(out)}  # as many bytes each
    assert pool.meta["seed"] == 2 and pool.dataset["caption"] == ["a tan circle"] * 4


@pytest.mark.parametrize("created, resumed", [("2026-12-05T20:00:00+00:00", False), ("2026-12-06T12:00:00+00:00", True)])
def test_an_eda_pool_an_earlier_mat_plus_began_is_not_resumed_into_a_mix(karpathy_dir, tmp_path, created, resumed):
    """EDA changed its rows on 2026-12-06 (Turkish `İstanbul` first came back `I` + a combining dot; a combining
    accent was left behind by a swap) without raising its recipe, so an EDA pool begun by an earlier
    mat-plus resumed into a mix of both. One made since the change records recipe 1 (the key came before
    it) and was made by this code: it resumes."""
    from augment.generators.eda import EdaGenerator

    assert EdaGenerator(ops=("rs",)).augment("İstanbul is a big old city", 1, [1])[0][2].startswith("İstanbul")
    source, _ = load_source(str(karpathy_dir))
    kwargs = dict(n=1, seed=3, split="all", shard_size=2, progress=False)
    run_generation(EdaGenerator(ops=("rs", "rd")), source, str(tmp_path / "p"), **kwargs)
    meta_path = tmp_path / "p" / "pool.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "recipe": 1, "created": created}))  # as the earlier writer left it
    if resumed:
        assert run_generation(EdaGenerator(ops=("rs", "rd")), source, str(tmp_path / "p"), **kwargs)["recipe"] == 2
    else:
        with pytest.raises(PoolError, match=r"different recipe \(recipe 1, now 2"):
            run_generation(EdaGenerator(ops=("rs", "rd")), source, str(tmp_path / "p"), **kwargs)


# i2t-/t2t- recipes: 3 began when bdaf9f2 reached the history; 4 came with its change (the quote pairs)
RECIPE_3_SINCE = "2026-12-06T09:01:28+00:00"
RECIPE_OF_THE_QUOTE_PAIRS = 4


@pytest.mark.parametrize("method", ["i2t-x", "t2t-x"])
@pytest.mark.parametrize("created, resumed", [("2026-12-05T20:00:00+00:00", False), ("2026-12-06T09:30:00+00:00", True)])
def test_an_i2t_or_t2t_pool_begun_before_the_unicode_dedup_is_not_resumed_into_a_mix(tmp_path, method, created, resumed):
    """The i2t-/t2t- duplicate check changed on 2026-12-06 (bdaf9f2: outputs compared after NFKC and case
    folding, a final '。' ignored) without a raised recipe: a half-made pool of recipe 2 resumed across it kept
    its first shards' near-duplicates (a paraphrase that is its decomposed source caption composed again)
    and dropped them in the rest, exit 0. One created since records recipe 2 and was made by the code of recipe
    3: it resumes under that code (recipe 4, the quote pairs, refuses both)."""
    from augment.generators.captioner import CaptionerGenerator
    from augment.generators.paraphrase import DistinctCollector, ParaphraseGenerator

    collector = DistinctCollector(2, refuse=["e\u0301te\u0301 a\u0300 Paris"])
    collector.offer("été à Paris", 0)  # the source echoed composed: not a paraphrase
    collector.offer("ÉTÉ À PARIS。", 0)
    assert collector.kept == []
    assert {CaptionerGenerator.recipe, ParaphraseGenerator.recipe} == {RECIPE_OF_THE_QUOTE_PAIRS}
    PoolWriter(tmp_path / "p", {"method": method, "seed": 0, "recipe": 2}).write_shard(0, [_row(0)])
    meta_path = tmp_path / "p" / "pool.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "created": created}))  # as it was begun
    now = {"method": method, "seed": 0, "recipe": 3}  # the code of recipe 3 (2026-12-06 09:01 to 2026-12-08)
    if resumed:
        PoolWriter(tmp_path / "p", now, recipe_since=RECIPE_3_SINCE).write_shard(1, [_row(1)])
        assert json.loads(meta_path.read_text())["recipe"] == 3
    else:
        with pytest.raises(PoolError, match=r"different recipe \(recipe 2, now 3: an earlier mat-plus wrote its rows "):
            PoolWriter(tmp_path / "p", now, recipe_since=RECIPE_3_SINCE)
        assert len(list((tmp_path / "p" / "data").glob("*.parquet"))) == 1  # nothing lost


@pytest.mark.parametrize("method, recipe, since, recorded, created", [
    ("eda", 2, "2026-12-06T10:51:16+00:00", None, "2026-12-06T12:00:00+00:00"),
    ("i2t-x", 3, "2026-12-06T09:01:28+00:00", None, "2026-12-06T09:30:00+00:00"),
    ("i2t-x", 3, "2026-12-06T09:01:28+00:00", 1, "2026-12-06T09:30:00+00:00"),
    ("i2t-x", 2, "2026-12-03T15:36:52+00:00", 1, "2026-12-06T09:00:00+00:00"),  # recipe 2 came with the key
])
def test_a_pool_only_an_earlier_mat_plus_could_have_written_is_not_taken_by_its_creation_time(
        tmp_path, method, recipe, since, recorded, created):
    """was: a pool without the recipe key (or recording recipe 1 of i2t-) created after the current recipe
    began was taken as this code's, though every mat-plus since 2026-12-05 15:43 UTC writes the key and the
    code of the current recipe's rows recorded the recipe just before it (or this one, where it came with the
    key): only an older mat-plus (its old rows), run after the change, wrote such a pool, and it was resumed
    into a mix, exit 0."""
    old = {"method": method, "seed": 0, **({} if recorded is None else {"recipe": recorded})}
    PoolWriter(tmp_path / "p", old).write_shard(0, [_row(0)])
    meta_path = tmp_path / "p" / "pool.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("recipe", None)
    meta_path.write_text(json.dumps({**meta, **old, "created": created}))
    with pytest.raises(PoolError, match=rf"different recipe \(recipe 1, now {recipe}: "):
        PoolWriter(tmp_path / "p", {"method": method, "seed": 0, "recipe": recipe}, recipe_since=since)


@pytest.mark.parametrize("method", ["i2t-x", "t2t-x"])
def test_an_i2t_or_t2t_pool_begun_before_the_dedup_reached_the_code_is_not_taken_as_this_codes(tmp_path, method):
    """was: recipe 3 was dated by bdaf9f2's author time (2026-12-06 08:25:04 UTC), but the change reached the
    project's history only when it was committed there, at 09:01:28 (rebased with the day's other work): a pool
    begun at 08:40 by the code of then (the history's head, 868b5d0: the old duplicate check) was taken as recipe 3 and
    resumed into a mix, exit 0."""
    PoolWriter(tmp_path / "p", {"method": method, "seed": 0, "recipe": 2}).write_shard(0, [_row(0)])
    meta_path = tmp_path / "p" / "pool.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "created": "2026-12-06T08:40:00+00:00"}))
    with pytest.raises(PoolError, match=r"different recipe \(recipe 2, now 3: "):
        PoolWriter(tmp_path / "p", {"method": method, "seed": 0, "recipe": 3}, recipe_since=RECIPE_3_SINCE)


@pytest.mark.parametrize("method", ["i2t-x", "t2t-x"])
@pytest.mark.parametrize("recorded", [2, 3])
def test_an_i2t_or_t2t_pool_begun_before_the_quote_pairs_is_not_resumed_into_a_mix(tmp_path, method, recorded):
    """Recipe 4 (2026-12-08) unwraps an output in paired quotes (‘…’, «…», „…“, 「…」), so a caption echoed
    in them is no new output: a pool of the recipes before, however recently begun, holds such rows in its
    first shards and is refused (the recipe came with the change: no time after which recipe 3 was this code's)."""
    from augment.generators.captioner import CaptionerGenerator
    from augment.generators.paraphrase import ParaphraseGenerator

    generator = CaptionerGenerator if method.startswith("i2t-") else ParaphraseGenerator
    assert generator.recipe == RECIPE_OF_THE_QUOTE_PAIRS
    PoolWriter(tmp_path / "p", {"method": method, "seed": 0, "recipe": recorded}).write_shard(0, [_row(0)])
    with pytest.raises(PoolError, match=rf"different recipe \(recipe {recorded}, now {RECIPE_OF_THE_QUOTE_PAIRS}: "):
        PoolWriter(tmp_path / "p", {"method": method, "seed": 0, "recipe": generator.recipe},
                   recipe_since=generator.recipe_since)
    assert len(list((tmp_path / "p" / "data").glob("*.parquet"))) == 1  # nothing lost
