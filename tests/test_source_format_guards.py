"""Guards found by a hand mutation audit (CO) of the source readers (`augment.source_formats`): each test
kills a plausible bug that no other test caught.

Sources are a few tiny images and a short JSON / CSV written into tmp_path; every expected value is
written out here, not computed by the code under test.
"""
from __future__ import annotations

import pytest

from augment.errors import SourceError
from tests.conftest import write_image


# ----------------------------------------------------------------------------- source formats


def _write_json(path, value):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_a_json_rewritten_within_its_modification_time_is_parsed_again(tmp_path):
    """Guards the parsed-JSON cache's key (path, mtime and size): a file rewritten with its old mtime (a copy
    keeping times, a coarse file system) but another size is parsed again, not answered from the cache."""
    import os

    from augment.source_formats import detect_format

    path = _write_json(tmp_path / "captions.json", [{"image": "x.png", "caption": "a dog"}])
    assert detect_format(str(path)) == "albef"
    before = path.stat()
    _write_json(path, {"images": []})
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert detect_format(str(path)) == "karpathy"


def test_a_boolean_id_is_refused_naming_its_record(tmp_path):
    """Guards `_id`'s bool check (bool is an int to Python): `"cocoid": true` is refused, not read as id "True"."""
    from augment.sources import load_source

    write_image(tmp_path / "a.png")
    path = _write_json(tmp_path / "dataset_x.json", {"images": [
        {"filename": "a.png", "cocoid": True, "split": "train", "sentences": [{"raw": "a dog"}]}]})
    with pytest.raises(SourceError, match=r"images\[0\] \(a\.png\): 'cocoid' must be a string or an integer, got bool"):
        load_source(str(path))


def test_ids_keep_their_leading_zeros_so_two_images_stay_two(tmp_path):
    """Guards ids read as given: "007" and "7" are two images, not one id twice."""
    from augment.sources import load_source

    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    path = _write_json(tmp_path / "pairs_train.json", [{"image": "a.png", "caption": "a dog", "image_id": "007"},
                                                       {"image": "b.png", "caption": "a cat", "image_id": 7}])
    dataset, _ = load_source(str(path))
    assert dataset["image_id"] == ["007", "7"] and dataset["captions"] == [["a dog"], ["a cat"]]


def test_csv_images_sharing_a_file_name_in_two_folders_are_two_ids(tmp_path):
    """Guards the CSV id (the path without its suffix, README): `a/1.png` and `b/1.png` are two images."""
    from augment.sources import load_source

    write_image(tmp_path / "a" / "1.png")
    write_image(tmp_path / "b" / "1.png")
    (tmp_path / "caps.csv").write_text("image,caption\na/1.png,a dog\nb/1.png,a cat\na/1.png,a brown dog\n")
    dataset, _ = load_source(str(tmp_path / "caps.csv"))
    assert dataset["image_id"] == ["a/1", "b/1"] and dataset["captions"] == [["a dog", "a brown dog"], ["a cat"]]


def _image_folder(tmp_path, entries):
    import json

    for entry in entries:
        write_image(tmp_path / entry["file_name"])
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return tmp_path


def test_the_json_folder_is_searched_before_its_images_subfolder(tmp_path):
    """Guards the default roots' order: the JSON's own folder, then images/ beside it."""
    from augment.sources import load_source, undecoded

    write_image(tmp_path / "a.png", size=(8, 8))
    write_image(tmp_path / "images" / "a.png", size=(4, 4))
    path = _write_json(tmp_path / "pairs_train.json", [{"image": "a.png", "caption": "a dog"}])
    dataset, _ = load_source(str(path))
    assert undecoded(dataset)["image"][0]["path"] == str(tmp_path / "a.png")


def test_a_folder_linked_to_a_sibling_sharing_the_roots_name_is_outside_the_root(tmp_path):
    """Guards the inside-the-root test on real paths: `images2` is not inside `images` (a prefix of its name)."""
    from augment.sources import load_source

    write_image(tmp_path / "images2" / "b.png")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "linked").symlink_to(tmp_path / "images2", target_is_directory=True)
    path = _write_json(tmp_path / "ann" / "pairs_train.json", [{"image": "linked/b.png", "caption": "a dog"}])
    with pytest.raises(SourceError, match=r"\[0\] \(linked/b\.png\): image path 'linked/b\.png' leads outside the image root"):
        load_source(str(path), image_root=str(tmp_path / "images"))


def test_a_linked_image_inside_a_relative_image_root_is_read(tmp_path, monkeypatch):
    """Guards the root's resolution on the per-file route (symlinks): `--image-root imgs` (relative) holding a
    link to another of its files is inside the root, not refused as outside it."""
    from augment.sources import load_source

    write_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "link.png").symlink_to(tmp_path / "imgs" / "a.png")
    path = _write_json(tmp_path / "pairs_train.json", [{"image": "link.png", "caption": "a dog"}])
    monkeypatch.chdir(tmp_path)
    dataset, _ = load_source(str(path), image_root="imgs")
    assert dataset["image_id"] == ["link"] and dataset[0]["image"].size == (16, 12)


def test_a_karpathy_entry_without_a_split_is_refused_not_trained_on(tmp_path):
    """Guards the Karpathy reader's missing split: no split is refused by name, not read as train."""
    from augment.sources import load_source

    write_image(tmp_path / "a.png")
    path = _write_json(tmp_path / "dataset_x.json", {"images": [{"filename": "a.png", "sentences": [{"raw": "a dog"}]}]})
    with pytest.raises(SourceError, match=r"images\[0\] \(a\.png\): unknown split ''"):
        load_source(str(path))


def test_csv_rows_of_one_image_in_val_and_validation_are_one_split(tmp_path):
    """Guards the CSV's split aliases before its one-split-per-image check: `val` and `validation` are one split."""
    from augment.sources import load_source

    write_image(tmp_path / "p.png")
    (tmp_path / "caps.csv").write_text("image,caption,split\np.png,a dog,val\np.png,a brown dog,validation\n")
    dataset, _ = load_source(str(tmp_path / "caps.csv"))
    assert dataset["split"] == ["val"] and dataset["captions"] == [["a dog", "a brown dog"]]


def test_an_image_folder_entrys_split_wins_over_the_split_argument(tmp_path):
    """Guards the image folder's split order: the entry's `split`, then the argument, then train; and the
    split is not copied into the record's meta."""
    from augment.sources import load_source

    folder = _image_folder(tmp_path, [{"file_name": "a.png", "caption": "a dog", "split": "test", "source": "web"},
                                      {"file_name": "b.png", "caption": "a cat"}])
    dataset, _ = load_source(str(folder), split="val")
    assert dataset["split"] == ["test", "val"]
    assert dataset["meta"] == ['{"source": "web"}', "{}"]


def test_a_saved_dataset_dicts_rows_keep_their_part_and_their_id(tmp_path):
    """Guards the table reader's split order on a DatasetDict: each part's own split over the split argument
    (which is for sources naming none); its rows, without an id column, are `train-0` and `test-0`."""
    import datasets

    from augment.sources import load_source

    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    parts = {split: datasets.Dataset.from_dict({"image": [name], "caption": [caption]})
             for split, name, caption in (("train", "a.png", "a dog"), ("test", "b.png", "a cat"))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    dataset, _ = load_source(str(tmp_path / "saved"), image_root=str(tmp_path), split="val")
    assert dataset["image_id"] == ["train-0", "test-0"] and dataset["split"] == ["train", "test"]
    assert dataset["captions"] == [["a dog"], ["a cat"]]


def test_albef_names_the_entry_of_an_empty_caption_after_a_list_of_captions(tmp_path):
    """Guards ALBEF's caption-to-entry map for merged entries: an entry holding a list of captions counts each
    of them, so an empty caption after it is named by its own entry."""
    from augment.sources import load_source

    write_image(tmp_path / "x.png")
    path = _write_json(tmp_path / "pairs_test.json", [{"image": "x.png", "caption": ["a dog", "a brown dog"]},
                                                      {"image": "x.png", "caption": "a dog running"},
                                                      {"image": "x.png", "caption": " "}])
    with pytest.raises(SourceError, match=r"^pairs_test\.json: \[2\] \(x\.png\): caption 3 is empty$"):
        load_source(str(path))


def test_a_null_caption_column_gives_way_to_the_next_one(tmp_path):
    """Guards `_captions_of`'s null check: a row whose `captions` is null and whose `caption` holds text is
    read with that text (the null column is the missing one), not refused as a null caption."""
    from augment.sources import load_source

    folder = _image_folder(tmp_path, [{"file_name": "a.png", "captions": None, "caption": "a dog"}])
    dataset, _ = load_source(str(folder))
    assert dataset["captions"] == [["a dog"]]


def test_a_table_row_without_bytes_is_read_from_its_path(tmp_path):
    """Guards the table reader's per-row test of stored bytes: in an image column of bytes and paths, a row
    whose bytes are null is resolved from its path under the image root, not taken as stored bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from augment.sources import load_source, undecoded

    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (200, 10, 10)).save(buffer, format="PNG")
    write_image(tmp_path / "images" / "b.png")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": buffer.getvalue(), "path": None}, {"bytes": None, "path": "b.png"}], image_type)
    pq.write_table(pa.table({"image": images, "caption": ["a red square", "a grey square"]}), tmp_path / "rows.parquet")
    dataset, _ = load_source(str(tmp_path / "rows.parquet"))
    stored = undecoded(dataset)["image"]
    assert stored[0]["bytes"] == buffer.getvalue()
    assert stored[1] == {"bytes": None, "path": str(tmp_path / "images" / "b.png")}
    assert [dataset[0]["image"].size, dataset[1]["image"].size] == [(6, 5), (16, 12)]


def test_a_csv_row_with_an_empty_caption_cell_is_refused_not_dropped(tmp_path):
    """Guards the CSV's one caption per row: an empty caption cell is a caption to refuse (naming its line),
    not a row dropped while the image keeps its other captions."""
    from augment.sources import load_source

    write_image(tmp_path / "p.png")
    (tmp_path / "caps.csv").write_text("image,caption\np.png,a dog\np.png,\n")
    with pytest.raises(SourceError, match=r"^caps\.csv: line 3 \(p\.png\): caption 1 is empty$"):
        load_source(str(tmp_path / "caps.csv"))


def test_a_table_row_with_a_null_id_is_refused_naming_its_row(tmp_path):
    """A table's null id cell was read as the image id "None" (and a second one as its duplicate): it is
    refused naming its row, and skipped with --skip-bad."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from augment.sources import load_source

    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    table = pa.table({"image": ["a.png", "b.png"], "caption": ["a dog", "a cat"], "image_id": ["7", None]})
    pq.write_table(table, tmp_path / "rows.parquet")
    with pytest.raises(SourceError, match=r"rows\.parquet: row 1: 'image_id' is missing \(null\)$"):
        load_source(str(tmp_path / "rows.parquet"))
    dataset, report = load_source(str(tmp_path / "rows.parquet"), skip_bad=True)
    assert dataset["image_id"] == ["7"] and [entry["record"] for entry in report.skipped] == [f"{tmp_path / 'rows.parquet'}: row 1"]


def test_an_empty_csv_separator_is_refused_not_read_as_the_default():
    """Guards the separator's length check: `--csv-separator ''` is refused, not silently read as a comma."""
    from augment.source_formats import table_options_problem

    assert table_options_problem("image", "caption", "") == "--csv-separator must be one character (or \\t for a tab), got ''"
    assert table_options_problem("image", "caption", ";") is None and table_options_problem("image", "caption", "\\t") is None


def test_blank_lines_in_an_image_folders_metadata_are_skipped(tmp_path):
    """Guards the image folder's blank-line skip: an empty or whitespace line in metadata.jsonl (a trailing
    newline doubled by an editor) is no entry, not a malformed-JSON refusal."""
    import json

    from augment.sources import load_source

    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    lines = [json.dumps({"file_name": "a.png", "caption": "a dog"}), "", "  ", json.dumps({"file_name": "b.png", "caption": "a cat"})]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")
    dataset, _ = load_source(str(tmp_path))
    assert dataset["image_id"] == ["a", "b"] and dataset["captions"] == [["a dog"], ["a cat"]]


def test_a_missing_file_named_with_a_suffix_is_no_hub_id(tmp_path, monkeypatch):
    """Guards `_looks_like_hub_id`'s suffix rule: a mistyped `data/captions.json` (a valid repo id's spelling)
    is "no such file or folder", not a Hub dataset to look up."""
    from augment.source_formats import detect_format

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"^data/captions\.json: no such file or folder$"):
        detect_format("data/captions.json")
    assert detect_format("owner/captions") == "hub"


def test_an_image_its_folder_lists_under_another_spelling_is_found_by_opening_it(tmp_path, monkeypatch):
    """On a case- or normalisation-insensitive file system (macOS, Windows) a record's `Photo.PNG` opens the file
    listed as `photo.png`, but the folder listing holds the stored spelling only: the exact-name lookup missed and
    the image was "not found" (audit CO's note). Simulated here by a listing that names nothing: a file that
    opens is found in the first root that has it, still checked against its root; a missing one is still not
    found, every candidate named."""
    from augment.source_formats import FolderListings, _resolve_image

    monkeypatch.setattr(FolderListings, "kind", lambda self, folder, name: None)
    images = tmp_path / "images"
    write_image(images / "a.png")
    roots = [tmp_path, images]
    assert _resolve_image("a.png", roots, False, FolderListings()) == (str(images / "a.png"), None, True)
    (tmp_path / "outside").mkdir()
    (images / "link.png").symlink_to(write_image(tmp_path / "outside" / "b.png"))
    path, problem, found = _resolve_image("link.png", [images], False, FolderListings())
    assert found and path == str(images / "link.png") and "leads outside the image root" in problem
    path, problem, found = _resolve_image("c.png", roots, False, FolderListings())
    assert (path, problem, found) == (f"{tmp_path / 'c.png'} or {images / 'c.png'}", None, False)
