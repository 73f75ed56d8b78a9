"""User errors around sources and the small commands: one line, exit status 2, nothing lost.

`--skip-bad`'s report never replaces an input, `inspect --json` stays JSON, output paths that
cannot be written (a file as a folder, a dangling link, `.`) are one line, a killed make-sample
leaves nothing behind for long, and a few messages say what is true.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

import pytest

import augment.atomic as atomic
import augment.world.writer as world_writer
from augment.cli import main as augment_main
from augment.cli_common import run_main
from augment.errors import MissingDependencyError
from augment.sources import load_source
from tests.conftest import write_image
from tests.test_bad_inputs import fails

OLD = 1_600_000_000  # an mtime long ago: the source is not "racy", so the source cache stores it




def source_with(folder: Path, present: int, missing: int) -> Path:
    """A Karpathy source of `present` images and `missing` records whose image file is gone."""
    entries = []
    for i in range(present + missing):
        if i < present:
            write_image(folder / "images" / f"{i}.png", colour=30 * i)
        entries.append({"filename": f"{i}.png", "split": "train", "sentences": [{"raw": f"a picture {i}"}]})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset_x.json"
    path.write_text(json.dumps({"images": entries}))
    return path


# ----------------------------------------------------------------------------- --skip-bad's report


def test_skip_report_never_replaces_the_source_or_an_image(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = source_with(tmp_path / "src", present=2, missing=1)
    before = source.read_bytes()
    fails(capsys, ["inspect", "--source", source.parent, "--skip-bad", "--skip-report", source], "--skip-report", "name a new file")
    fails(capsys, ["inspect", "--source", source, "--skip-bad", "--skip-report", source], "the source itself")
    image = tmp_path / "src" / "images" / "0.png"
    pixels = image.read_bytes()
    fails(capsys, ["inspect", "--source", source, "--skip-bad", "--skip-report", image], "not an earlier --skip-bad report")
    assert source.read_bytes() == before and image.read_bytes() == pixels
    # the default ./skipped.json: an earlier report is replaced, a file of the user's is not
    assert augment_main(["inspect", "--source", str(source), "--skip-bad"]) == 0
    assert augment_main(["inspect", "--source", str(source), "--skip-bad"]) == 0
    assert json.loads(Path("skipped.json").read_text())["skipped"][0]["image_id"] == "2"
    Path("skipped.json").write_text("my notes\n")
    fails(capsys, ["inspect", "--source", source, "--skip-bad"], "skipped.json")
    assert Path("skipped.json").read_text() == "my notes\n"
    # ... unless nothing is skipped: the default report is not written, so the user's file is no obstacle
    clean = source_with(tmp_path / "clean", present=2, missing=0)
    assert augment_main(["inspect", "--source", str(clean), "--skip-bad"]) == 0
    assert Path("skipped.json").read_text() == "my notes\n"
    # under a file: one line, before anything is read
    fails(capsys, ["inspect", "--source", source, "--skip-bad", "--skip-report", source / "x.json"], "is a file, not a folder")


def test_inspect_json_with_skip_bad_prints_only_json(tmp_path, capsys):
    source = source_with(tmp_path / "src", present=2, missing=1)
    report = tmp_path / "report.json"
    capsys.readouterr()
    assert augment_main(["inspect", "--source", str(source), "--skip-bad", "--skip-report", str(report), "--json"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)  # the skip notice used to come first, on stdout
    assert summary["skipped"] == 1 and summary["skip_report"] == str(report) and summary["images"] == 2
    assert json.loads(report.read_text())["skipped"][0]["image_id"] == "2"
    # text mode: said once, with the report's path
    assert augment_main(["inspect", "--source", str(source), "--skip-bad", "--skip-report", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped 1 bad records") == 1 and str(report) in out


def test_every_record_bad_still_writes_the_report(tmp_path, capsys):
    source = source_with(tmp_path / "src", present=0, missing=2)
    report = tmp_path / "report.json"
    line = fails(capsys, ["inspect", "--source", source, "--skip-bad", "--skip-report", report], "no usable records (2 skipped)")
    assert str(report) in line
    assert [entry["image_id"] for entry in json.loads(report.read_text())["skipped"]] == ["0", "1"]


# ----------------------------------------------------------------------------- output paths


def test_output_paths_that_cannot_be_written_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "target")
    fails(capsys, ["make-sample", a_file / "x", "--n", "2"], "is a file, not a folder")
    fails(capsys, ["make-sample", dangling, "--n", "2"], "link to a missing")
    fails(capsys, ["save-tiny", a_file, "--names", "tiny-clip"], "is a file, not a folder")
    fails(capsys, ["save-tiny", a_file / "x", "--names", "tiny-clip"], "is a file, not a folder")
    fails(capsys, ["setup-wordnet", "--dir", a_file, "--no-download", "--debian-dir", tmp_path], "is a file, not a folder")
    fails(capsys, ["setup-wordnet", "--dir", a_file / "x", "--no-download", "--debian-dir", tmp_path], "is a file, not a folder")
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "notes.txt"]


def test_an_os_error_of_any_kind_is_one_line_naming_the_path(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")

    def parser():
        built = argparse.ArgumentParser()
        built.set_defaults(func=lambda args: open(a_file / "x", "w"))  # NotADirectoryError
        return built

    capsys.readouterr()
    assert run_main(parser, []) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {a_file / 'x'}: Not a directory"], err

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/out")

    def parser2():
        built = argparse.ArgumentParser()
        built.set_defaults(func=denied)
        return built

    assert run_main(parser2, []) == 2  # a PermissionError used to be a traceback
    assert capsys.readouterr().err.strip() == "error: /data/out: Permission denied"


def test_make_sample_into_the_current_folder(tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert augment_main(["make-sample", ".", "--n", "3"]) == 0  # was: ValueError, '.' has an empty name
    assert sorted(p.name for p in here.iterdir()) == ["dataset_sample.json", "images"]
    assert augment_main(["make-sample", ".", "--n", "2", "--overwrite"]) == 0
    assert len(json.loads((here / "dataset_sample.json").read_text())["images"]) == 2
    assert sorted(p.name for p in here.iterdir()) == ["dataset_sample.json", "images"]
    fails(capsys, ["make-sample", "..", "--n", "2", "--overwrite"], "holds the current folder")
    assert here.is_dir()
    # a link to a folder is written through: the link stays a link
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert augment_main(["make-sample", str(tmp_path / "link"), "--n", "2"]) == 0
    assert (tmp_path / "link").is_symlink() and (target / "dataset_sample.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- killed make-sample


def test_make_sample_removes_what_killed_runs_left(tmp_path):
    dead = 999_999_999  # no such process
    stale = tmp_path / f".world.partial-{dead}-0123abcd"
    (stale / "images").mkdir(parents=True)
    alive = tmp_path / f".world.partial-{os.getppid()}-89abcdef"  # a live process's work: kept
    alive.mkdir()
    other = tmp_path / f".other.partial-{dead}-0123abcd"  # another DIR's: not ours to judge
    other.mkdir()
    world_writer.write_sample(tmp_path / "world", n=2)
    assert not stale.exists() and alive.exists() and other.exists()
    inside = tmp_path / "world" / f".make-sample.partial-{dead}-0123abcd"  # a killed run into an existing DIR
    inside.mkdir()
    world_writer.write_sample(tmp_path / "world", n=3, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "world").iterdir()) == ["dataset_sample.json", "images"]


def test_sigterm_cleans_up_as_ctrl_c_and_says_what_is_true(tmp_path, capsys, monkeypatch):
    real = world_writer.build_item

    def terminated(seed, index, n_captions=5):
        if index == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill`, `timeout` or `docker stop` send it
        return real(seed, index, n_captions)

    def unhandled(signum, frame):  # what SIGTERM meets if the command does not handle it (not pytest's death)
        raise RuntimeError("SIGTERM reached the default handler")

    monkeypatch.setattr(world_writer, "build_item", terminated)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        capsys.readouterr()
        assert augment_main(["make-sample", str(tmp_path / "world"), "--n", "5"]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # restored after the command
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "interrupted: nothing was written" in err and "resume" not in err, err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- sources


def test_source_cache_through_a_file_is_a_warning(tmp_path, caplog):
    source = source_with(tmp_path / "src", present=2, missing=0)
    for path in (source, source.parent / "images", source.parent):
        os.utime(path, ns=(OLD * 10**9, OLD * 10**9))
    a_file = tmp_path / "cachefile"
    a_file.write_text("")
    with caplog.at_level(logging.WARNING):
        dataset, _ = load_source(str(source), cache=a_file)  # was: NotADirectoryError from the cleanup
    assert len(dataset) == 2 and "cannot write the source cache" in caplog.text


def test_csv_split_aliases_are_one_split(tmp_path, capsys):
    write_image(tmp_path / "0.png")
    path = tmp_path / "p.csv"
    path.write_text("image,caption,split\n0.png,a red circle,val\n0.png,a round red shape,validation\n")
    dataset, _ = load_source(str(path), cache=False)
    assert dataset["split"] == ["val"] and dataset["captions"] == [["a red circle", "a round red shape"]]
    path.write_text("image,caption,split\n0.png,a red circle,val\n0.png,a round red shape,test\n")
    fails(capsys, ["inspect", "--source", path], "line 3 puts this image in split 'test'")


def test_folder_messages_say_what_is_there(tmp_path, capsys):
    two = tmp_path / "two"
    source_with(two, present=1, missing=0)
    (two / "dataset_y.json").write_text((two / "dataset_x.json").read_text())
    fails(capsys, ["inspect", "--source", two], "2 dataset_*.json files (dataset_x.json, dataset_y.json)", "pass one")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from augment.source_formats import detect_format

    pool = tmp_path / "pool"
    (pool / "data").mkdir(parents=True)
    pq.write_table(pa.table({"row_id": ["r0"], "source_image_id": ["0"], "caption": ["a cat"]}),
                   pool / "data" / "shard-00000.parquet")
    fails(capsys, ["inspect", "--source", pool], "unfinished pool", "pool.json")
    # a user's parquet dataset whose files happen to be called so is read as parquet
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    pq.write_table(pa.table({"image_id": ["0"], "caption": ["a cat"]}), mine / "data" / "shard-00000.parquet")
    assert detect_format(str(mine)) == "parquet"


# ----------------------------------------------------------------------------- small commands


def test_make_sample_expressions_count_is_the_true_one(tmp_path, capsys):
    capsys.readouterr()
    assert augment_main(["make-sample", str(tmp_path / "ref"), "--n", "3", "--expressions", "150"]) == 0
    printed = capsys.readouterr().out
    records = json.loads((tmp_path / "ref" / "dataset_sample.json").read_text())["images"]
    total = sum(len(obj["expressions"]) for record in records for obj in record["objects"])
    assert total < 150 * sum(len(record["objects"]) for record in records)  # the scenes offer fewer wordings
    assert "up to 150 referring expressions per object" in printed and f"({total} for " in printed, printed
    fails(capsys, ["make-sample", tmp_path / "ref2", "--n", "2", "--expressions", "2", "--captions", "3"],
          "--captions-per-image is not read with --expressions")


@pytest.mark.parametrize("names", ["", ",", " , "])
def test_save_tiny_with_no_names_is_refused(tmp_path, capsys, names):
    fails(capsys, ["save-tiny", tmp_path / "out", "--names", names], "--names lists no model")



def test_save_tiny_names_a_dir_swallowed_by_names(tmp_path, capsys):
    """`augment save-tiny --names tiny-clip DIR` (the usage line's order) was argparse's "the following arguments
    are required: DIR": --names had taken DIR as a model name."""
    fails(capsys, ["save-tiny", "--names", "tiny-clip", tmp_path / "out"],
          f"--names takes every word after it, so '{tmp_path / 'out'}' was read as a model name; write DIR first")
    fails(capsys, ["save-tiny"], "save-tiny: the folder to write into (DIR) is missing")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out").exists()


def test_damaged_wordnet_file_names_its_line(tmp_path):
    from augment.wordnet import index_sense_lines

    (tmp_path / "data.noun").write_text("  license header\n00001740 03 n 01 entity 0 000 | a thing\nthis is not a synset\n")
    with pytest.raises(MissingDependencyError, match=r"data.noun: line 3: not a WordNet database line"):
        index_sense_lines(tmp_path)


def test_a_line_break_in_a_file_name_does_not_cut_the_error_short(tmp_path, capsys):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "dataset_x.json").write_text(json.dumps(
        {"images": [{"filename": "line\nbreak.png", "split": "train", "sentences": [{"raw": "a red circle"}]}]}))
    line = fails(capsys, ["inspect", "--source", folder], "(line\\nbreak.png)", "image file not found")
    assert line.endswith("line\\nbreak.png"), line


def test_a_damaged_parquet_source_is_one_line_not_three(tmp_path, capsys):
    folder = tmp_path / "pq"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"PAR1" + b"\0" * 200)  # no footer
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # what datasets' own handler would print ("Failed to read schema ...")
    logger = logging.getLogger("datasets")
    logger.addHandler(handler)
    try:
        fails(capsys, ["inspect", "--source", folder], "cannot load the parquet source", "ArrowInvalid")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records if record.levelno >= logging.ERROR] == []


def test_make_sample_swap_holds_interrupts_until_it_is_done(tmp_path):
    """Ctrl-C / SIGTERM between the renames of an --overwrite left DIR missing and the old contents in a
    hidden folder the next run deletes: the swap holds them back and they arrive after it."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("term"))
    try:
        with atomic.interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []  # held back inside
        assert seen == ["term"]  # delivered after
        old, built = tmp_path / "world", tmp_path / ".world.partial-1-00000000"
        old.mkdir(), built.mkdir(), (built / "dataset_sample.json").write_text("{}")
        atomic.swap_folder_into_place(built, old)
        assert (old / "dataset_sample.json").exists() and not built.exists()
        assert [p.name for p in tmp_path.iterdir()] == ["world"]  # the old contents gone, nothing hidden left
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_save_tiny_folders_have_the_umask_permissions(tmp_path):
    """save-tiny's folders were owner-only (mkdtemp's 0700, some files 0600): a model to share."""
    import stat

    from augment.tiny import save_tiny

    umask = os.umask(0o022)
    try:
        folder = save_tiny(tmp_path / "models", ["tiny-mlm"])["tiny-mlm"]
    finally:
        os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in folder.rglob("*") if p.is_file())


def test_a_pool_made_with_skip_bad_is_scored_from_its_own_record(tmp_path, capsys):
    """pool.json did not record --skip-bad: `augment score POOL` read the whole source, found another
    fingerprint and suggested --allow-pool-mismatch. Its report goes into the pool's folder."""
    source = source_with(tmp_path / "src", present=3, missing=1)
    pool = tmp_path / "pool"
    assert augment_main(["generate", "--method", "eda", "--source", str(source), "--out", str(pool), "--n", "1",
                         "--skip-bad", "--skip-report", str(tmp_path / "gen.skipped.json"), "--no-progress"]) == 0
    assert json.loads((pool / "pool.json").read_text())["skip_bad"] is True
    capsys.readouterr()
    assert augment_main(["score", str(pool), "--scorer", "tiny-clip", "--no-progress", "--no-plot", "--bootstrap", "0",
                         "--gap-bootstrap", "0"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"skipped 1 bad records; report: {pool / 'source.skipped.json'}" in err, err
    assert len(json.loads((pool / "source.skipped.json").read_text())["skipped"]) == 1
    assert not (tmp_path / "skipped.json").exists() and not Path("skipped.json").exists()


@pytest.mark.parametrize("method, extra, words", [
    ("t2i-render", [], "has no scene description: procedural methods need the sample world"),
    ("i2t-scene", [], "has no scene description: procedural methods need the sample world"),
    ("shuffle", ["--limit", "1"], "shuffle needs at least two source images"),
])
def test_a_method_that_refuses_the_source_writes_no_pool(tmp_path, capsys, method, extra, words):
    """was: refused only once generation had started, leaving a pool.json that refused the corrected
    command into the same --out ("holds a pool made with different ...") unless --overwrite."""
    source = source_with(tmp_path / "src", present=2, missing=0)
    out = tmp_path / "pool"
    line = fails(capsys, ["generate", "--method", method, "--source", source, "--out", out, "--n", "1", *extra,
                          "--no-progress"], words)
    assert "\n" not in line and not (out / "pool.json").exists(), line


def test_inspect_takes_no_progress_as_every_command_does(tmp_path, capsys):
    """inspect decodes every image behind a bar, and had no --no-progress (an argparse error)."""
    source = source_with(tmp_path / "src", present=3, missing=0)
    assert augment_main(["inspect", "--source", str(source)]) == 0
    assert "reading dataset_x.json: 3img" in capsys.readouterr().err  # the bar
    assert augment_main(["inspect", "--source", str(source), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "reading" not in captured.err and "3 images" in captured.out, captured


def test_a_coco_annotation_file_is_named_not_blamed_entry_by_entry(tmp_path, capsys):
    """COCO's own captions_val2014.json was read as a Karpathy file with a broken first entry
    ("images[0]: entry has no 'filename'"), sending the user to mend a file that is fine."""
    coco = {"info": {}, "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "width": 8, "height": 8}],
            "annotations": [{"id": 7, "image_id": 1, "caption": "a cat on a mat"}]}
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(coco))
    fails(capsys, ["inspect", "--source", path], f"{path}: a COCO annotation file", "Karpathy's dataset_coco.json")


@pytest.mark.parametrize("command, says", [
    ("generate", "interrupted: finished shards are kept; re-run the same command to resume"),
    ("score", "interrupted: the embeddings computed so far are kept in the cache; re-run the same command"),
])
def test_sigterm_stops_generate_and_score_in_one_line(command, says, monkeypatch, capsys):
    """SIGTERM (timeout, a scheduler) ended them silently with exit 143, and Ctrl-C in score said
    generate's "finished shards are kept" (score has none)."""
    import importlib

    module = importlib.import_module(f"augment.commands.{command}")

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    def unhandled(_number, _frame):  # the command installed no handler of its own: fail, do not kill pytest
        raise AssertionError(f"{command} does not handle SIGTERM")

    monkeypatch.setattr(module, "run", terminated)
    previous = signal.signal(signal.SIGTERM, unhandled)
    argv = {"generate": ["generate", "--method", "eda", "--source", "s", "--out", "o"],
            "score": ["score", "p"]}[command]
    capsys.readouterr()
    try:
        assert augment_main(argv) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_an_image_behind_a_folder_that_cannot_be_opened_is_named_so(tmp_path, monkeypatch):
    """A chmod 000 images/ folder was reported as every image missing ("image file not found")."""
    import os

    from augment.sources import image_not_found

    folder = tmp_path / "images"
    folder.mkdir()
    path = str(folder / "000000.png")
    assert image_not_found(path) == f"image file not found: {path}"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(folder) else real_access(p, mode))
    assert image_not_found(path) == f"image file {path}: cannot open its folder {folder} (permission denied)"


def test_a_folder_or_a_dangling_link_where_an_image_should_be_is_named_so(tmp_path):
    """A folder, a link to nothing or a loop of links at an image's path read "image file not found"
    (audit U's left finding): the file is there, as something else; open_image's line says what."""
    import os

    from augment.errors import SourceError
    from augment.sources import open_image

    folder = tmp_path / "000001.png"
    folder.mkdir()
    with pytest.raises(SourceError, match=rf"^image file {folder}: is a folder, not an image file$"):
        open_image(str(folder))
    dangling, loop = tmp_path / "000002.png", tmp_path / "000003.png"
    os.symlink(tmp_path / "gone.png", dangling)
    os.symlink(loop, loop)
    with pytest.raises(SourceError, match=rf"^image file {dangling}: a symbolic link to no file \(.*gone\.png\)$"):
        open_image(str(dangling))
    with pytest.raises(SourceError, match=rf"^image file {loop}: a symbolic link to no file"):
        open_image(str(loop))
    with pytest.raises(SourceError, match=rf"^image file not found: {tmp_path / 'absent.png'}$"):
        open_image(str(tmp_path / "absent.png"))
