"""Every source format loads into the one normalised schema; every bad input names its record."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from augment.errors import SourceError
from augment.schema import SOURCE_FEATURES
from augment.source_formats import detect_format
from augment.sources import lazy_source_features, load_source, select_split, source_fingerprint, undecoded
from tests.conftest import write_image


def _check_normalised(dataset, n_images):
    # SOURCE_FEATURES' columns; the image is decoded by augment.sources.open_image when a row is read
    assert dataset.features == lazy_source_features()
    assert list(dataset.features) == list(SOURCE_FEATURES)
    assert set(undecoded(dataset)[0]["image"]) == {"path", "bytes"}
    assert len(dataset) == n_images
    for row in dataset:
        assert row["image"].mode == "RGB"
        assert row["captions"] and all(c.strip() for c in row["captions"])


def test_karpathy_json_and_folder(karpathy_dir):
    by_file, report = load_source(str(karpathy_dir / "dataset_toy.json"))
    by_folder, _ = load_source(str(karpathy_dir))
    assert report.format == "karpathy"
    _check_normalised(by_file, 6)
    assert by_file["image_id"] == by_folder["image_id"] == ["000", "001", "002", "003", "004", "005"]
    assert by_file["split"] == ["train", "train", "train", "val", "test", "test"]
    assert json.loads(by_file[0]["meta"]) == {"scene": {"objects": 0}}
    assert source_fingerprint(by_file) == source_fingerprint(by_folder)


def test_the_source_fingerprint_changes_with_an_images_split(karpathy_dir):
    """Guards the split in `source_fingerprint`: without it, an image moved from train to test kept the source's
    fingerprint, and a pool of the old train images resumed (or was scored as unchanged) against the new split."""
    dataset, _ = load_source(str(karpathy_dir))
    moved = dataset.map(lambda row, index: {"split": "test" if index == 0 else row["split"]}, with_indices=True)
    assert moved["image_id"] == dataset["image_id"] and moved["captions"] == dataset["captions"]
    assert source_fingerprint(moved) != source_fingerprint(dataset)


def test_each_shard_fingerprint_holds_every_record_of_its_shard(karpathy_dir):
    """Guards `shard_input_fingerprints`' slice [start, start + shard_size): one short, a changed caption of a
    shard's last record left its fingerprint as it was, and a resume kept that shard's rows of the old caption."""
    from augment.sources import shard_input_fingerprints

    dataset, _ = load_source(str(karpathy_dir))
    before = shard_input_fingerprints(dataset, 2)
    for changed in range(len(dataset)):
        edited = dataset.map(lambda row, index: {"captions": row["captions"] + ["one more"] if index == changed
                                                 else row["captions"]}, with_indices=True)
        after = shard_input_fingerprints(edited, 2)
        assert [a != b for a, b in zip(before, after)] == [k == changed // 2 for k in range(len(before))]


def test_image_files_fingerprint_sees_pixels_the_source_fingerprint_does_not(karpathy_dir, tmp_path_factory):
    """Resume tags and the score cache's key hold it: an image replaced in place (even keeping its
    old mtime, as `cp -p` does) or another --image-root changes it; the rows' fingerprint stays."""
    import os
    import shutil

    from augment.sources import image_files_fingerprint

    dataset, _ = load_source(str(karpathy_dir))
    first = image_files_fingerprint(dataset)
    assert image_files_fingerprint(load_source(str(karpathy_dir))[0]) == first
    assert image_files_fingerprint(select_split(dataset, "test")) != image_files_fingerprint(select_split(dataset, "train"))
    other_root = tmp_path_factory.mktemp("copy") / "images"
    shutil.copytree(karpathy_dir / "images", other_root)
    moved, _ = load_source(str(karpathy_dir / "dataset_toy.json"), image_root=str(other_root))
    assert source_fingerprint(moved) == source_fingerprint(dataset) and image_files_fingerprint(moved) != first
    image = karpathy_dir / "images" / "000.jpg"
    stat = image.stat()
    write_image(image, colour=200)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image_files_fingerprint(load_source(str(karpathy_dir))[0]) != first


def test_every_pillow_mode_becomes_rgb(karpathy_dir):
    dataset, _ = load_source(str(karpathy_dir))
    assert {row["image"].mode for row in dataset} == {"RGB"}


def test_model_transforms_convert_16_bit_greyscale_as_the_sources_do():
    """Pixels that reach a model without the source reader (a pool's images) are scaled the same
    way: PIL's own convert("RGB") clips 16-bit greyscale to white."""
    import numpy as np
    from PIL import Image

    from augment.scoring.scorers import _rgb
    from augment.sources import to_rgb
    from models.albef.model import _to_rgb
    from models.transformers_io import to_rgb as model_to_rgb

    grey = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # 128 of 255 in 16 bits
    assert grey.mode.startswith("I;16") and np.asarray(grey.convert("RGB"))[0, 0].tolist() != [128, 128, 128]
    for convert in (to_rgb, model_to_rgb, _to_rgb, _rgb):
        assert np.asarray(convert(grey))[0, 0].tolist() == [128, 128, 128], convert


def test_coco_style_filepath_and_image_root(tmp_path):
    write_image(tmp_path / "coco" / "val2014" / "a.jpg")
    meta = {"images": [{"filepath": "val2014", "filename": "a.jpg", "cocoid": 42, "split": "restval",
                        "sentences": [{"raw": "a cat"}]}]}
    (tmp_path / "ann" / "dataset_coco.json").parent.mkdir()
    (tmp_path / "ann" / "dataset_coco.json").write_text(json.dumps(meta))
    dataset, _ = load_source(str(tmp_path / "ann" / "dataset_coco.json"), image_root=str(tmp_path / "coco"))
    assert dataset["image_id"] == ["42"] and dataset["split"] == ["restval"]


def test_albef_train_and_test_files(tmp_path):
    for name in ("x.jpg", "y.jpg"):
        write_image(tmp_path / "images" / "flickr" / name)
    train = [{"image": "flickr/x.jpg", "caption": "one", "image_id": "7"},
             {"image": "flickr/x.jpg", "caption": "two", "image_id": "7"},
             {"image": "flickr/y.jpg", "caption": "three", "image_id": "8"}]
    test = [{"image": "flickr/x.jpg", "caption": ["a", "b", "c"]}]
    (tmp_path / "flickr30k_train.json").write_text(json.dumps(train))
    (tmp_path / "flickr30k_test.json").write_text(json.dumps(test))
    dataset, report = load_source(str(tmp_path / "flickr30k_train.json"))
    assert report.format == "albef"
    assert dataset["image_id"] == ["7", "8"] and dataset["captions"] == [["one", "two"], ["three"]]
    assert set(dataset["split"]) == {"train"}
    test_ds, _ = load_source(str(tmp_path / "flickr30k_test.json"))
    assert test_ds["split"] == ["test"] and test_ds["captions"] == [["a", "b", "c"]] and test_ds["image_id"] == ["x"]


def test_an_albef_file_named_by_its_split_alone_is_of_that_split(tmp_path):
    """Guards `_split_from_name`'s prefix rule: with only `_split` looked for, `test.json` and `val.json` (no
    dataset name before the split) were read as train data."""
    write_image(tmp_path / "x.jpg")
    for split in ("test", "val", "train"):
        (tmp_path / f"{split}.json").write_text(json.dumps([{"image": "x.jpg", "caption": "a dog"}]))
        dataset, report = load_source(str(tmp_path / f"{split}.json"))
        assert report.format == "albef" and dataset["split"] == [split]
    # --source-split, when given, is the split whatever the file's name (README, Sources)
    dataset, _ = load_source(str(tmp_path / "test.json"), split="val")
    assert dataset["split"] == ["val"]


def test_csv_groups_rows_per_image(tmp_path):
    write_image(tmp_path / "p.png")
    write_image(tmp_path / "q.png", mode="L")
    with open(tmp_path / "caps.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([["p.png", "first"], ["q.png", "other"], ["p.png", "second"]])
    dataset, _ = load_source(str(tmp_path / "caps.csv"), split="val")
    _check_normalised(dataset, 2)
    assert dataset["captions"] == [["first", "second"], ["other"]]
    assert dataset["split"] == ["val", "val"]


@pytest.mark.parametrize("row, message", [
    # (a stray quote, which used to open a field that swallowed the rest of the file, is text in a TSV:
    # test_source_review_fixes.py; a CSV's is refused there too)
    ("q.png\tother\ttrain\textra", "line 3: 4 fields where the header has 3 (separator '\\t')"),
    ("q.png\tother", "line 3: 2 fields where the header has 3 (separator '\\t')"),
])
def test_tsv_with_a_broken_row_is_refused_naming_its_line(tmp_path, row, message):
    write_image(tmp_path / "p.png")
    write_image(tmp_path / "q.png")
    lines = ["filepath\ttitle\tsplit", "p.png\tfirst\ttrain", row, "p.png\tsecond\ttrain", "q.png\tthird\ttrain"]
    (tmp_path / "caps.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError) as caught:
        load_source(str(tmp_path / "caps.tsv"), csv_img_key="filepath", csv_caption_key="title")
    assert str(caught.value).startswith(str(tmp_path / "caps.tsv")) and message in str(caught.value)


def test_tsv_empty_caption_names_its_own_line(tmp_path):
    """A table holds one caption per row: the empty one is named by its row, not its image's first row."""
    write_image(tmp_path / "p.png")
    lines = ["filepath\ttitle", "p.png\tfirst", "p.png\tsecond", "p.png\t "]
    (tmp_path / "caps.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"^caps.tsv: line 4 \(p.png\): caption 2 is empty$"):
        load_source(str(tmp_path / "caps.tsv"), csv_img_key="filepath", csv_caption_key="title")


def test_tsv_empty_image_cell_names_the_users_column(tmp_path):
    write_image(tmp_path / "p.png")
    (tmp_path / "caps.tsv").write_text("filepath\ttitle\np.png\tfirst\n\tsecond\n")
    with pytest.raises(SourceError, match=r"^caps.tsv: line 3 \(\): empty 'filepath' field$"):  # was: 'image'
        load_source(str(tmp_path / "caps.tsv"), csv_img_key="filepath", csv_caption_key="title")


def test_csv_caption_spanning_lines_is_one_record_and_lines_are_physical(tmp_path):
    write_image(tmp_path / "p.png")
    (tmp_path / "caps.csv").write_text('image,caption\np.png,"two\nlines"\np.png\n')
    with pytest.raises(SourceError, match="line 4: 1 fields where the header has 2"):
        load_source(str(tmp_path / "caps.csv"))


def test_augment_and_train_eval_read_the_trainers_tsv(tmp_path, capsys):
    """open_clip_train's TSV (filepath / title columns), which `train METHOD --csv-img-key ...` trains on, can be
    inspected, pooled and evaluated with the same flags; on a source that is not a table they are refused."""
    from augment.cli import main as augment_main

    for name in ("p.png", "q.png"):
        write_image(tmp_path / name)
    (tmp_path / "train.tsv").write_text("filepath\ttitle\np.png\ta red dog\nq.png\ta blue cat\n")
    keys = ["--csv-img-key", "filepath", "--csv-caption-key", "title"]
    assert augment_main(["inspect", "--source", str(tmp_path / "train.tsv"), *keys]) == 0
    assert "2 images" in capsys.readouterr().out
    assert augment_main(["inspect", "--source", str(tmp_path / "train.tsv")]) == 2
    assert "CSV needs a header with 'image' and 'caption' columns" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("")
    assert augment_main(["inspect", "--source", str(tmp_path / "empty.csv")]) == 2
    assert "(separator ','), the file is empty" in capsys.readouterr().err
    assert augment_main(["generate", "--method", "eda", "--source", str(tmp_path / "train.tsv"), *keys,
                         "--out", str(tmp_path / "pool"), "--n", "1"]) == 0
    # the pool records the column options, so `augment score POOL` reads its TSV again without them
    # (it stopped on "CSV needs a header with 'image' and 'caption' columns"), as does a selection of it
    from augment.cli import build_parser
    from augment.commands.score import read_source_named, source_of, source_reading
    from augment.pool import load_pool
    from augment.select import SelectFilters, selection_meta

    pool = load_pool(tmp_path / "pool")
    assert (pool.meta["csv_img_key"], pool.meta["csv_caption_key"]) == ("filepath", "title")
    assert "csv_separator" not in pool.meta  # not given: the .tsv's own
    args = build_parser().parse_args(["score", str(tmp_path / "pool"), "--scorer", "tiny-clip"])
    reading = source_reading(pool, args)
    assert reading["csv_img_key"] == "filepath" and reading["csv_caption_key"] == "title"
    assert read_source_named(args, source_of(pool, None), reading)["captions"] == [["a red dog"], ["a blue cat"]]
    selected = selection_meta(pool, str(tmp_path / "selected"), SelectFilters(), None, 1)
    assert (selected["csv_img_key"], selected["csv_caption_key"]) == ("filepath", "title")
    (tmp_path / "data.json").write_text("{}")
    assert augment_main(["inspect", "--source", str(tmp_path / "data.json"), "--csv-img-key", "filepath"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--csv-img-key: read only for a .csv/.tsv source, not {tmp_path / 'data.json'}: leave it out")
    # the trainer's rules for the values, from one place
    assert augment_main(["inspect", "--source", str(tmp_path / "train.tsv"), "--csv-img-key", "", "--csv-caption-key", "title"]) == 2
    assert capsys.readouterr().err.strip().endswith("--csv-img-key and --csv-caption-key must not be empty")
    assert augment_main(["inspect", "--source", str(tmp_path / "train.tsv"), *keys, "--csv-separator", ";;"]) == 2
    assert capsys.readouterr().err.strip().endswith("--csv-separator must be one character (or \\t for a tab), got ';;'")


def test_imagefolder_with_metadata(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", mode="RGBA")
    lines = [{"file_name": "a.png", "captions": ["x", "y"], "split": "train"},
             {"file_name": "b.png", "caption": "z"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    dataset, report = load_source(str(tmp_path))
    assert report.format == "imagefolder"
    _check_normalised(dataset, 2)
    assert dataset["captions"] == [["x", "y"], ["z"]]


def test_save_to_disk_and_parquet_round_trip(karpathy_dir, tmp_path):
    original, _ = load_source(str(karpathy_dir))
    original.save_to_disk(str(tmp_path / "disk"))
    from_disk, report = load_source(str(tmp_path / "disk"))
    assert report.format == "disk"
    assert from_disk["image_id"] == original["image_id"] and from_disk["captions"] == original["captions"]
    assert from_disk["meta"] == original["meta"]
    original.to_parquet(str(tmp_path / "src.parquet"))
    from_parquet, report = load_source(str(tmp_path / "src.parquet"))
    assert report.format == "parquet"
    _check_normalised(from_parquet, 6)
    assert from_parquet["split"] == original["split"]
    # a folder whose name looks like a glob pattern: datasets reads data_files as patterns (it matched nothing)
    (tmp_path / "flickr[v2]").mkdir()
    original.to_parquet(str(tmp_path / "flickr[v2]" / "src.parquet"))
    from_brackets, _ = load_source(str(tmp_path / "flickr[v2]"), image_root=str(tmp_path))
    assert from_brackets["image_id"] == original["image_id"]


def test_table_sources_resolve_stored_paths_like_the_other_formats(tmp_path):
    """A parquet or saved dataset whose images are paths: relative to its folder or --image-root,
    inside that root unless allowed; a DatasetDict's "validation" split is the project's "val"."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    for name in ("a", "b"):
        write_image(folder / "images" / f"{name}.png")
    table = pa.table({"image": ["images/a.png", "images/b.png"], "caption": ["first", "second"]})
    pq.write_table(table, folder / "data.parquet")
    dataset, _ = load_source(str(folder / "data.parquet"))  # from any working directory
    _check_normalised(dataset, 2)
    elsewhere = tmp_path / "elsewhere.parquet"
    pq.write_table(table, elsewhere)
    with pytest.raises(SourceError, match=r"row 0: image file not found"):
        load_source(str(elsewhere))
    assert len(load_source(str(elsewhere), image_root=str(folder))[0]) == 2
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"image": [str(folder / "images" / "a.png")], "caption": ["x"]}), outside)
    with pytest.raises(SourceError, match=r"outside\.parquet: row 0: .*--allow-outside-root"):
        load_source(str(outside), image_root=str(tmp_path / "empty"))
    assert len(load_source(str(outside), image_root=str(tmp_path / "empty"), allow_outside_root=True)[0]) == 1

    features = datasets.Features({"image": datasets.Value("string"), "caption": datasets.Value("string")})
    parts = {split: datasets.Dataset.from_dict({"image": [f"images/{name}.png"], "caption": [split]}, features=features)
             for split, name in (("train", "a"), ("validation", "b"))}
    datasets.DatasetDict(parts).save_to_disk(str(folder / "dict"))
    dataset, _ = load_source(str(folder / "dict"), image_root=str(folder))
    assert sorted(dataset["split"]) == ["train", "val"]


def test_embedded_images_stay_in_the_mapped_table_and_rows_keep_their_own(tmp_path):
    """A saved dataset's embedded image bytes are not copied at load (arrow allocates next to
    nothing); with a bad record skipped, every kept row still carries its own image; the table's
    fingerprint follows its content without hashing the images."""
    import io

    import datasets
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(12):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    captions = [[f"caption {i}"] for i in range(12)]
    captions[5] = [" "]  # a bad record in the middle: the rows after it must keep their own images
    features = datasets.Features({"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string")),
                                  "image_id": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in encoded], "captions": captions,
                                "image_id": [str(i) for i in range(12)]}, features=features).save_to_disk(str(tmp_path / "ds"))
    datasets.load_from_disk(str(tmp_path / "ds"))  # datasets' own first-load allocations, not ours
    before = pa.total_allocated_bytes()
    dataset, report = load_source(str(tmp_path / "ds"), skip_bad=True)
    assert pa.total_allocated_bytes() - before < sum(map(len, encoded)) // 10
    assert [entry["image_id"] for entry in report.skipped] == ["5"]
    stored = undecoded(dataset)
    for row in range(len(dataset)):
        assert stored[row]["image"]["bytes"] == encoded[int(stored[row]["image_id"])]
    assert dataset[6]["image"].size == (48, 48)

    again, _ = load_source(str(tmp_path / "ds"), skip_bad=True)
    assert again._fingerprint == dataset._fingerprint
    captions[0] = ["another caption"]
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in encoded], "captions": captions,
                                "image_id": [str(i) for i in range(12)]}, features=features).save_to_disk(str(tmp_path / "ds2"))
    assert load_source(str(tmp_path / "ds2"), skip_bad=True)[0]._fingerprint != dataset._fingerprint


def test_csv_separator_backslash_t_is_a_tab_as_open_clip_train_users_type_it(tmp_path):
    write_image(tmp_path / "p.png")
    (tmp_path / "caps.txt.csv").write_text("filepath\ttitle\np.png\ta red shape\n")
    dataset, _ = load_source(str(tmp_path / "caps.txt.csv"), csv_img_key="filepath", csv_caption_key="title",
                             csv_separator="\\t")
    assert dataset["captions"] == [["a red shape"]]


def test_a_csv_split_column_wins_over_the_split_argument(tmp_path):
    """Guards the CSV's split order, the row's `split` column, then the argument (the split of a source that
    names none), then train: read the other way, `--source-split val` relabelled a CSV's test rows as val."""
    write_image(tmp_path / "p.png")
    write_image(tmp_path / "q.png")
    (tmp_path / "caps.csv").write_text("image,caption,split\np.png,a test caption,test\nq.png,no split here,\n")
    dataset, _ = load_source(str(tmp_path / "caps.csv"), split="val")
    assert dataset["split"] == ["test", "val"]


def test_csv_rows_of_one_image_in_two_splits_are_refused(tmp_path):
    write_image(tmp_path / "p.png")
    (tmp_path / "caps.csv").write_text("image,caption,split\np.png,a test caption,test\np.png,another,train\n")
    with pytest.raises(SourceError, match=r"caps\.csv: line 2 \(p\.png\): line 3 puts this image in split 'train', "
                                          r"an earlier line in 'test'"):
        load_source(str(tmp_path / "caps.csv"))


def test_hub_id_fails_fast_offline(network_attempts):
    with pytest.raises(SourceError, match=r"^nobody-here/not-a-dataset: no folder here, and cannot load the Hub dataset") as info:
        load_source("nobody-here/not-a-dataset")
    assert network_attempts == []  # offline: not a connection tried, so nothing to time out
    assert "\n" not in str(info.value) and "offline" in str(info.value).lower()


# ----------------------------------------------------------------------------- bad input


def _karpathy(tmp_path, entries):
    path = tmp_path / "dataset_bad.json"
    path.write_text(json.dumps({"images": entries}))
    return path


def _entry(name, split="train", captions=("a dog",)):
    return {"filename": name, "split": split, "sentences": [{"raw": c} for c in captions]}


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", "image file not found"),
        ("corrupt", "unreadable or corrupt image"),
        ("truncated", "unreadable or corrupt image"),
        ("empty_caption", "caption 1 is empty"),
        ("invisible_caption", "caption 1 is empty"),  # a zero-width space and a BOM passed as text
        ("no_captions", "has no captions"),
        ("split", "unknown split 'holdout'"),
        ("duplicate", "duplicate image id"),
    ],
)
def test_bad_records_are_named(tmp_path, problem, expected):
    write_image(tmp_path / "images" / "good.png")
    entries = [_entry("good.png")]
    if problem == "missing":
        entries.append(_entry("gone.png"))
    elif problem == "corrupt":
        (tmp_path / "images" / "bad.png").write_bytes(b"not an image at all")
        entries.append(_entry("bad.png"))
    elif problem == "truncated":
        write_image(tmp_path / "images" / "cut.jpg", size=(64, 64))
        data = (tmp_path / "images" / "cut.jpg").read_bytes()
        (tmp_path / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
        entries.append(_entry("cut.jpg"))
    elif problem == "empty_caption":
        write_image(tmp_path / "images" / "e.png")
        entries.append(_entry("e.png", captions=("fine", "   ")))
    elif problem == "invisible_caption":
        write_image(tmp_path / "images" / "e.png")
        entries.append(_entry("e.png", captions=("fine", "\u200b \ufeff")))
    elif problem == "no_captions":
        write_image(tmp_path / "images" / "e.png")
        entries.append(_entry("e.png", captions=()))
    elif problem == "split":
        write_image(tmp_path / "images" / "s.png")
        entries.append(_entry("s.png", split="holdout"))
    elif problem == "duplicate":
        entries.append(_entry("good.png"))
    path = _karpathy(tmp_path, entries)
    with pytest.raises(SourceError) as info:
        load_source(str(path), validate=True)
    message = str(info.value)
    assert expected in message
    assert "images[1]" in message  # the record is named

    dataset, report = load_source(str(path), skip_bad=True)
    assert dataset["image_id"] == ["good"]
    assert len(report.skipped) == 1 and expected in report.skipped[0]["problem"]

    if problem in ("corrupt", "truncated"):  # lazily: the load passes, reading the row names the file
        lazy, report = load_source(str(path))
        assert not report.validated and len(lazy) == 2
        assert lazy[0]["image"].size == (16, 12)
        with pytest.raises(SourceError, match=r"(bad\.png|cut\.jpg): unreadable or corrupt image"):
            lazy[1]["image"]


def test_malformed_json_names_position(tmp_path):
    path = tmp_path / "dataset_x.json"
    path.write_text('{"images": [ {"filename": "a.png",, } ]}')
    with pytest.raises(SourceError, match=r"malformed JSON at line 1"):
        load_source(str(path))


def test_unknown_path_and_format(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        detect_format(str(tmp_path / "nope.json"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SourceError, match="unsupported file type"):
        detect_format(str(tmp_path / "x.txt"))


def test_select_split(karpathy_dir):
    dataset, _ = load_source(str(karpathy_dir))
    assert len(select_split(dataset, "test")) == 2
    assert len(select_split(dataset, "all")) == 6
    with pytest.raises(SourceError, match="no 'restval' rows"):
        select_split(dataset, "restval")


def _augment(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "augment.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_inspect_cli_summary_and_bad_input(karpathy_dir, tmp_path):
    result = _augment("inspect", "--source", str(karpathy_dir), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 6 and summary["captions"] == 30
    assert summary["splits"]["train"] == {"images": 3, "captions": 15}
    assert summary["captions_per_image"] == {"5": 6}
    assert set(summary["image_modes"]) == {"RGB", "L", "RGBA", "P", "CMYK"}
    # the fingerprint a pool made from this source records (and its card shows): a user can match them
    from augment.cli import main as augment_main

    assert augment_main(["generate", "--method", "img-aug", "--source", str(karpathy_dir), "--limit", "1",
                         "--out", str(tmp_path / "pool"), "--no-progress"]) == 0
    recorded = json.loads((tmp_path / "pool" / "pool.json").read_text())["source_fingerprint"]
    assert summary["fingerprint"] == recorded
    assert f"fingerprint {recorded}" in _augment("inspect", "--source", str(karpathy_dir)).stdout

    (karpathy_dir / "images" / "003.png").unlink()
    result = _augment("inspect", "--source", str(karpathy_dir))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "images[3] (003.png): image file not found" in last
    assert "Traceback" not in result.stderr

    result = _augment("inspect", "--source", str(karpathy_dir), "--skip-bad", "--skip-report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped"]
    assert [s["image_id"] for s in skipped] == ["003"]
    # a report path without --skip-bad was silently ignored (the command stopped at the bad record)
    result = _augment("inspect", "--source", str(karpathy_dir), "--skip-report", str(tmp_path / "r2.json"))
    assert result.returncode == 2 and not (tmp_path / "r2.json").exists()
    assert result.stderr.strip() == "error: --skip-report is read only with --skip-bad: leave it out or add --skip-bad"


def test_a_missing_image_decoded_later_is_named_once(tmp_path):
    """A row decoded after its file went away (sources are read lazily) names the path once."""
    from augment.sources import open_image

    gone = tmp_path / "gone.png"
    with pytest.raises(SourceError) as caught:
        open_image({"path": str(gone), "bytes": None})
    assert str(caught.value) == f"image file not found: {gone}"
    with pytest.raises(SourceError, match=rf"^images\[4\] \(gone\.png\): image file not found: {gone}$"):
        open_image(str(gone), where="images[4] (gone.png)")


def test_paths_are_resolved_from_folder_listings_with_the_same_checks(tmp_path):
    """Records are resolved against one listing per folder: missing files still fail at load
    (no --validate), a folder symlinked out of the image root is still refused, and the
    second default root (images/ beside the JSON) is still searched."""
    write_image(tmp_path / "images" / "sub" / "a.png")
    write_image(tmp_path / "outside" / "b.png")
    (tmp_path / "images" / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    dataset, _ = load_source(str(_karpathy(tmp_path, [_entry("sub/a.png")])))
    assert undecoded(dataset)["image"][0]["path"] == str(tmp_path / "images" / "sub" / "a.png")
    with pytest.raises(SourceError, match=r"images\[1\] \(gone\.png\): image file not found"):
        load_source(str(_karpathy(tmp_path, [_entry("sub/a.png"), _entry("gone.png")])))
    with pytest.raises(SourceError, match=r"images\[0\].*leads outside the image root"):
        load_source(str(_karpathy(tmp_path, [_entry("linked/b.png")])))
    allowed, _ = load_source(str(_karpathy(tmp_path, [_entry("linked/b.png")])), allow_outside_root=True)
    assert allowed[0]["image"].size == (16, 12)
