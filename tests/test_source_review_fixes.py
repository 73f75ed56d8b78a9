"""Source and pool review fixes: a pool resumes after a bad image is fixed or skipped (its kept shards
checked shard by shard), a dead DataLoader worker is one line blaming no image, image-folder ids are
paths, ALBEF names the entry of an empty caption, a damaged source-cache hit is rebuilt, the
two-commands hint, and TSV captions with quotes."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from augment.cli import main as augment_main
from augment.errors import SourceError
from augment.sources import load_source, select_split
from tests.conftest import write_image
from tests.test_text_generators import FailOnSecondShard  # a run killed on its second shard

OLD = 1_600_000_000  # seconds: an mtime old enough that the source cache trusts the file


def _one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


# ----------------------------------------------------------------------------- 1: resume after a bad image


@pytest.fixture
def world(tmp_path) -> Path:
    from augment.world.writer import write_sample

    return write_sample(tmp_path / "world", n=12, seed=0)


def _generate(out: Path, world: Path, *extra: str) -> int:
    return augment_main(["generate", "--method", "img-aug", "--source", str(world), "--out", str(out),
                         "--shard-size", "2", "--n", "1", "--workers", "0", "--no-progress", *extra])


def _train_image(world: Path, position: int) -> Path:
    """The image file of the train split's `position`-th item (shard position // 2 with --shard-size 2)."""
    source, _ = load_source(str(world), cache=False)
    image_id = select_split(source, "train")[position]["image_id"]
    return world / "images" / f"{image_id}.png"


def test_a_run_stopped_by_a_bad_image_resumes_once_it_is_fixed_or_skipped(world, tmp_path, capsys):
    """was: fixing the image (or --skip-bad) after the failure was refused ("holds a pool made with
    different source_images"): only --overwrite went on, discarding the finished shards."""
    bad = _train_image(world, 3)  # in shard 1: shard 0 is written before it fails
    good = bad.read_bytes()
    bad.write_bytes(good[:200])
    pool, skipped = tmp_path / "pool", tmp_path / "pool-skip"
    _one_line_error(capsys, _generate(pool, world), "unreadable or corrupt image")
    assert sorted(p.name for p in (pool / "data").glob("*.parquet")) == ["shard-00000.parquet"]
    shutil.copytree(pool, skipped)

    assert _generate(skipped, world, "--skip-bad", "--skip-report", str(tmp_path / "skipped.json")) == 0
    assert "1 of 4 shards kept" in capsys.readouterr().err

    bad.write_bytes(good)
    assert _generate(pool, world) == 0
    assert "resuming" in capsys.readouterr().err
    assert _generate(tmp_path / "straight", world) == 0
    from augment.pool import load_pool

    resumed, straight = load_pool(pool).dataset, load_pool(tmp_path / "straight").dataset
    assert resumed["row_id"] == straight["row_id"]


def test_a_kept_shard_whose_image_changed_is_refused_by_name_and_kept(world, tmp_path, capsys):
    """The guarantee the whole-source check gave stays: no pool mixes rows of two versions of one image."""
    pool = tmp_path / "pool"
    assert _generate(pool, world) == 0
    capsys.readouterr()
    first = _train_image(world, 0)
    write_image(first, size=(64, 64), colour=7)  # another picture under the same name
    err = _one_line_error(capsys, _generate(pool, world), f"{pool}: kept shard data/shard-00000.parquet (source images",
                          "delete that shard to redo it, or --overwrite")
    assert repr(first.stem) in err
    assert len(list((pool / "data").glob("*.parquet"))) == 4  # nothing written is lost
    (pool / "data" / "shard-00000.parquet").unlink()  # the way on the line gives: that shard is redone
    assert _generate(pool, world) == 0
    assert "resuming" in capsys.readouterr().err


def _captions_csv(folder: Path, last_caption: str) -> Path:
    for k in range(4):
        write_image(folder / f"{k}.png")
    rows = [f"{k}.png,caption of image {k}" for k in range(3)] + [f"3.png,{last_caption}"]
    (folder / "caps.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return folder / "caps.csv"


@pytest.mark.parametrize("method", ["eda", "shuffle"])
def test_a_caption_changed_in_a_shard_not_written_resumes_unless_every_shard_reads_it(tmp_path, method):
    """A shard's rows depend on its own items, except for a method that reads others (shuffle's bank):
    there every kept shard was made from the old source and is refused."""
    from augment.cli import build_parser
    from augment.errors import PoolError
    from augment.generators import build_generator
    from augment.generators.base import run_generation

    args = build_parser().parse_args(["generate", "--method", method, "--source", "s", "--out", "o"])
    csv_path = _captions_csv(tmp_path / "src", "a caption of the last image")
    kwargs = dict(n=1, seed=0, split="all", shard_size=2, progress=False)
    source, _ = load_source(str(csv_path), cache=False)
    with pytest.raises(KeyboardInterrupt):
        run_generation(FailOnSecondShard(build_generator(method, args)), source, str(tmp_path / "pool"), **kwargs)
    _captions_csv(tmp_path / "src", "another caption of the last image")  # in shard 1, not written
    source, _ = load_source(str(csv_path), cache=False)
    if method == "shuffle":
        with pytest.raises(PoolError, match="kept shard data/shard-00000.parquet \\(source images '0' to '1'\\)"):
            run_generation(build_generator(method, args), source, str(tmp_path / "pool"), **kwargs)
    else:
        assert run_generation(build_generator(method, args), source, str(tmp_path / "pool"), **kwargs)["num_shards"] == 2


# ----------------------------------------------------------------------------- 2: a dead DataLoader worker


def _die_in_worker(value):
    if value == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
    return value


def test_a_killed_loader_worker_is_one_line_saying_what_to_do():
    from augment.loading import DataWorkerDied, ordered_batches

    with pytest.raises(DataWorkerDied, match=r"^a data-loading worker process died \(DataLoader worker \(pid(\(s\))? \d+\).*"
                                             r"likely out of memory: use fewer --workers.*, then resume it$"):
        list(ordered_batches(list(range(4)), [[0], [1], [2], [3]], 1, _die_in_worker, after_worker_death="resume it"))


def test_img_aug_does_not_blame_an_image_for_a_dead_worker(world, tmp_path, capsys, monkeypatch):
    """was: `img-aug: image '000000' (64x64): policy randaugment failed: RuntimeError: DataLoader worker
    ... killed`: torch's SIGCHLD handler raises the worker's death wherever the main process is."""
    from augment.generators.imgaug import ImageAugmentGenerator

    def worker_killed(self, image, seed):
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")

    monkeypatch.setattr(ImageAugmentGenerator, "augment", worker_killed)
    err = _one_line_error(capsys, _generate(tmp_path / "pool", world),
                          "error: a data-loading worker process died (DataLoader worker (pid 4242) is killed by signal: "
                          "Killed), likely out of memory: use fewer --workers, then re-run the same command to resume "
                          "(finished shards are kept)")
    assert "policy" not in err and "image '" not in err


# ----------------------------------------------------------------------------- 3, 4: ids and caption names


def test_an_image_folder_names_images_by_path_when_two_files_share_a_stem(tmp_path, monkeypatch):
    """was: train/1.png and val/1.png refused as duplicate image id '1' (a CSV uses the path); a folder
    whose stems are distinct keeps its stem ids, so pools made from it before still match it."""
    monkeypatch.setenv("MATPLUS_CACHE", str(tmp_path / "cache"))
    write_image(tmp_path / "folder" / "train" / "1.png")
    write_image(tmp_path / "folder" / "val" / "1.png")
    lines = [{"file_name": "train/1.png", "caption": "a"}, {"file_name": "val/1.png", "caption": "b", "split": "val"}]
    (tmp_path / "folder" / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset, _ = load_source(str(tmp_path / "folder"))
    assert dataset["image_id"] == ["train/1", "val/1"]
    write_image(tmp_path / "plain" / "images" / "000000.png")
    write_image(tmp_path / "plain" / "images" / "000001.png")
    lines = [{"file_name": f"images/00000{i}.png", "caption": "a"} for i in range(2)]
    (tmp_path / "plain" / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset, _ = load_source(str(tmp_path / "plain"))
    assert dataset["image_id"] == ["000000", "000001"]


def test_albef_names_the_entry_holding_an_empty_caption(tmp_path):
    """was: `[0] (grey.png): caption 1 is empty`, entry [0] being the image's first, whole entry."""
    write_image(tmp_path / "grey.png", mode="L")
    entries = [{"image": "grey.png", "caption": "a grey square"}, {"image": "grey.png", "caption": "  "}]
    (tmp_path / "flickr30k_test.json").write_text(json.dumps(entries))
    with pytest.raises(SourceError, match=r"^flickr30k_test.json: \[1\] \(grey.png\): caption 1 is empty$"):
        load_source(str(tmp_path / "flickr30k_test.json"), cache=False)


# ----------------------------------------------------------------------------- 5: a damaged cache entry


def test_a_cache_entry_with_damaged_caption_bytes_is_rebuilt(tmp_path):
    """was: a UnicodeDecodeError traceback when the hit's captions were read (`validate()` checks no values)."""
    write_image(tmp_path / "src" / "a.png")
    (tmp_path / "src" / "caps.csv").write_text("image,caption\na.png,a distinctive caption\n")
    for path in (tmp_path / "src" / "caps.csv", tmp_path / "src" / "a.png", tmp_path / "src"):
        os.utime(path, ns=(OLD * 10**9, OLD * 10**9))
    cache = tmp_path / "cache"
    load_source(str(tmp_path / "src" / "caps.csv"), cache=cache)
    [entry] = cache.glob("*.arrow")
    data = entry.read_bytes()
    assert data.count(b"distinctive") == 1
    entry.write_bytes(data.replace(b"distinctive", b"\xff\xfe\xfdtinctive"))
    dataset, _ = load_source(str(tmp_path / "src" / "caps.csv"), cache=cache)
    assert dataset["captions"] == [["a distinctive caption"]]
    assert b"distinctive" in entry.read_bytes()  # rewritten whole


# ----------------------------------------------------------------------------- 6, 7: hints and TSV quoting


def test_the_several_karpathy_files_hint_names_trains_option_too(tmp_path):
    for name in ("dataset_a.json", "dataset_b.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(SourceError, match=r"pass one of them as --source \(augment\) or --train-data \(train\)$"):
        load_source(str(tmp_path))


def test_a_tsv_caption_starting_with_a_quoted_word_is_read_as_pandas_reads_it(tmp_path):
    """was: `malformed CSV` (strict quoting); open_clip_train reads TSVs with pandas, whose quoting is lenient."""
    write_image(tmp_path / "images" / "0.png")
    write_image(tmp_path / "images" / "1.png")
    (tmp_path / "caps.tsv").write_text('filepath\ttitle\nimages/0.png\t"Stop" sign on a road\n'
                                       'images/1.png\ta stray " quote, and a comma\n')
    dataset, _ = load_source(str(tmp_path / "caps.tsv"), csv_img_key="filepath", csv_caption_key="title", cache=False)
    assert dataset["captions"] == [["Stop sign on a road"], ['a stray " quote, and a comma']]
    # what pandas writes (`to_csv(sep="\t")` quotes a field holding a quote) reads back as it was
    (tmp_path / "pandas.tsv").write_text('filepath\ttitle\nimages/0.png\t"He said ""hi"" to a red square"\n')
    dataset, _ = load_source(str(tmp_path / "pandas.tsv"), csv_img_key="filepath", csv_caption_key="title", cache=False)
    assert dataset["captions"] == [['He said "hi" to a red square']]
    # a quote never closed: one line naming the record, not the rest of the file read as its caption
    (tmp_path / "open.tsv").write_text('filepath\ttitle\nimages/0.png\t"never closed\nimages/1.png\tnext\n')
    with pytest.raises(SourceError, match=r"open.tsv: line 2: a quote opened in this record is never closed"):
        load_source(str(tmp_path / "open.tsv"), csv_img_key="filepath", csv_caption_key="title", cache=False)


def test_a_csv_keeps_its_quoting(tmp_path):
    write_image(tmp_path / "p.png")
    (tmp_path / "caps.csv").write_text('image,caption\np.png,"a caption, quoted"\n')
    dataset, _ = load_source(str(tmp_path / "caps.csv"), cache=False)
    assert dataset["captions"] == [["a caption, quoted"]]
    (tmp_path / "bad.csv").write_text('image,caption\np.png,"a stray quote\np.png,second\n')
    with pytest.raises(SourceError, match=r"malformed CSV in the record starting on line 2"):
        load_source(str(tmp_path / "bad.csv"), cache=False)


def test_a_finished_pool_missing_a_shard_is_refused_until_its_command_is_run_again(world, tmp_path, capsys):
    """was: read, scored and pushed as if whole (its card saying the whole pool's rows), after a damaged
    shard was deleted as the damage report says and the command not re-run."""
    from augment.pool import load_pool

    pool = tmp_path / "pool"
    assert _generate(pool, world) == 0
    whole = len(load_pool(pool).dataset)
    (pool / "data" / "shard-00001.parquet").unlink()
    capsys.readouterr()
    assert augment_main(["push", str(pool), "--to-dir", str(tmp_path / "export")]) == 2
    _one_line_error(capsys, 2, f"{pool}: its data shards hold {whole - 2} rows, its pool.json says {whole}",
                    "re-run the command that wrote the pool")
    assert not (tmp_path / "export").exists()
    assert _generate(pool, world) == 0  # the same command makes the missing shard again
    assert len(load_pool(pool).dataset) == whole


# -- several splits at once: Karpathy's COCO training set is train + restval ---------------------


def _karpathy_coco(folder: Path) -> Path:
    from tests.test_bad_inputs import entry, karpathy

    splits = ["train", "restval", "val", "test", "restval", "train"]
    for i in range(len(splits)):
        write_image(folder / "images" / f"{i}.png", colour=30 * i)
    return karpathy(folder, [entry(f"{i}.png", split=split) for i, split in enumerate(splits)],
                    name="dataset_coco.json")


def test_a_split_argument_may_join_splits_with_plus(tmp_path):
    """dataset_coco.json's 30,504 restval images belong to the 113,287-image training set papers use;
    only one split could be named, and `all` is refused for training."""
    source, _ = load_source(str(_karpathy_coco(tmp_path)))
    assert select_split(source, "train+restval")["image_id"] == ["0", "1", "4", "5"]  # the source's order
    assert select_split(source, "restval")["image_id"] == ["1", "4"]
    assert select_split(source, "validation")["image_id"] == ["2"]  # Hugging Face's name for it
    with pytest.raises(SourceError, match=r"unknown split 'holdout' \(expected one of .* joined by '\+' such as "
                                          r"train\+restval"):
        select_split(source, "train+holdout")
    with pytest.raises(SourceError, match=r"source has no 'restval' rows"):  # every named split must be there
        select_split(select_split(source, "train"), "train+restval")


def test_training_says_what_restval_it_leaves_out_and_trains_on_it_when_asked(tmp_path, caplog):
    from train.data import TrainData

    source, _ = load_source(str(_karpathy_coco(tmp_path)))
    with caplog.at_level("WARNING"):
        data = TrainData(source, seed=0)
    assert data.image_ids == ["0", "5"]
    assert "the source's 2 restval images are left out (--train-split train); --train-split " \
           "train+restval takes them too" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        data = TrainData(source, split="train+restval", seed=0)
    assert data.image_ids == ["0", "1", "4", "5"] and "restval" not in caplog.text


def test_validation_on_a_split_trained_on_is_refused_for_joined_splits(tmp_path):
    from train.config import ConfigError, resolve_config

    settings = {"method": "clean", "train_data": "s", "out": "o", "val_frequency": 1}
    for train_split, val_split in (("train+restval", "restval"), ("train", "val+train")):
        with pytest.raises(ConfigError, match=f"--val-split {re.escape(val_split)} validates on the rows "
                                              f"--train-split {re.escape(train_split)} trains on"):
            resolve_config({**settings, "train_split": train_split, "val_split": val_split})
    resolve_config({**settings, "train_split": "train+restval", "val_split": "val"})


def test_a_pool_of_restval_images_asks_for_the_split_not_of_leaking(tmp_path, capsys, caplog):
    """Its restval rows were refused as 'would leak evaluation data': they are training data."""
    source = _karpathy_coco(tmp_path / "coco")
    with caplog.at_level("WARNING"):
        assert augment_main(["generate", "--method", "eda", "--source", str(source), "--out", str(tmp_path / "t"),
                             "--n", "1", "--no-progress"]) == 0
    assert "the source's 2 restval images are left out (--split train); --split train+restval takes them too" \
        in caplog.text
    pool = tmp_path / "eda"
    assert augment_main(["generate", "--method", "eda", "--source", str(source), "--split", "train+restval",
                         "--out", str(pool), "--n", "1", "--no-progress"]) == 0
    from train.cli import main as train_main

    capsys.readouterr()
    code = train_main(["mat+", "--model", "tiny-clip", "--train-data", str(source), "--pools", str(pool),
                       "--max-steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "images of split(s) ['restval']" in err and "join restval to --train-split" in err, err
    assert "leak" not in err


def _world_of(tmp_path, n=4):
    from augment.world.writer import write_sample

    return write_sample(tmp_path / "world", n=n, seed=0, val_frac=0.25, test_frac=0.25)


def _replace_image(path: Path, colour=(255, 0, 0), keep_times=False):
    from PIL import Image

    before = os.stat(path)
    replaced = path.with_name(f".{path.name}.new.png")
    Image.new("RGB", (64, 64), colour).save(replaced)
    os.replace(replaced, path)  # as make-sample --overwrite moves its new images in
    if keep_times:  # `cp -p`, `rsync -t`: the old modification time
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("keep_times", [False, True])
def test_an_image_replaced_after_the_source_was_read_is_refused_when_read(tmp_path, keep_times):
    """Images are read lazily by path, long after the captions: an image replaced during a run (make-sample
    --overwrite, an edited image) paired new pixels with the old captions, unseen. Now refused when read, naming
    it, also with its old mtime kept; read again, the source takes the new file."""
    from augment.scoring.embeddings import image_bytes_of
    from augment.sources import open_record_image, undecoded

    world = _world_of(tmp_path)
    dataset, _ = load_source(str(world))
    stored = undecoded(dataset)[1]["image"]
    dataset[0]["image"], dataset[1]["image"]  # noqa: B018 (unchanged: decoded)
    _replace_image(Path(stored["path"]), keep_times=keep_times)
    dataset[0]["image"]  # noqa: B018 (another image: still read)
    with pytest.raises(SourceError) as raised:
        dataset[1]["image"]  # noqa: B018
    message = str(raised.value)
    assert message.startswith(f"image file {stored['path']}: the file changed at ") and "\n" not in message
    assert "after this command read the source's captions" in message
    image_id = dataset["image_id"][1]  # a column: nothing decoded
    with pytest.raises(SourceError, match=rf"^image '{image_id}' \(.*\): the file changed at "):
        open_record_image(stored, image_id)  # the trainer's and generators' reads name the record
    with pytest.raises(SourceError, match="the file changed at"):
        image_bytes_of(stored)  # `augment score` reads source images whole, to hash them
    again, _ = load_source(str(world))  # read again: the new file is this read's
    assert again[1]["image"].getpixel((0, 0)) == (255, 0, 0)


def test_an_image_whose_times_are_in_the_future_is_read(tmp_path):
    """An archive unpacked with modification times in the future (another machine's clock; tar warns and keeps
    them) gave images "changed after the source was read" in every command, forever: a time later than now is a
    clock's, not a change. A real change then (a ctime between the read and now) is still refused."""
    import time

    from augment.sources import undecoded

    world = _world_of(tmp_path)
    path = Path(undecoded(load_source(str(world))[0])[1]["image"]["path"])
    future = time.time_ns() + 86_400 * 10 ** 9
    os.utime(path, ns=(future, future))  # before the read: its ctime is earlier than the read, its mtime tomorrow
    dataset, _ = load_source(str(world))
    assert dataset[1]["image"].size == (64, 64)
    os.chmod(path, 0o644)  # now its ctime is later than the read (and earlier than now)
    with pytest.raises(SourceError, match="the file changed at"):
        dataset[1]["image"]  # noqa: B018


def test_an_image_whose_future_time_passes_during_the_run_is_still_read(tmp_path):
    """A modification time in the future when the source was read (an archive from a machine whose clock is
    ahead, unpacked just before) stopped counting only while it was still in the future: a command running past
    it (a training run) then refused that unchanged image as "changed after the source was read". Its ctime (the
    unpack, before the read) says it was not changed: a change after the read sets the ctime (a write, a rename
    into place, `cp -p` and `touch -d` too), so on POSIX the ctime alone decides."""
    import time

    from augment.sources import undecoded

    world = _world_of(tmp_path)
    path = Path(undecoded(load_source(str(world))[0])[1]["image"]["path"])
    future = time.time_ns() + 10 ** 9  # one second ahead
    os.utime(path, ns=(future, future))  # before the read: its ctime earlier than the read
    dataset, _ = load_source(str(world))
    time.sleep(max(0.0, (future - time.time_ns()) / 1e9) + 0.2)  # the run goes on past that time
    assert dataset[1]["image"].size == (64, 64)
    _replace_image(path, keep_times=True)  # a real change (`cp -p`: the old, now past, mtime)
    with pytest.raises(SourceError, match="the file changed at"):
        dataset[1]["image"]  # noqa: B018


def test_a_spawned_data_loader_worker_knows_when_the_source_was_read(tmp_path, monkeypatch):
    """fork copies the parent's record of its sources' reads; spawn and forkserver workers start without it:
    `worker_options`' worker_init_fn hands it over."""
    import augment.loading as loading
    import augment.sources as sources
    from augment.loading import start_worker, worker_options

    world = _world_of(tmp_path)
    dataset, _ = load_source(str(world))
    read_at = sources.sources_read_at()
    init = worker_options(1)["worker_init_fn"]
    assert init.func is start_worker and init.args[0] == os.getpid()  # (start_worker ends with exit_with_parent)
    sources._SOURCES_READ_AT.clear()  # a spawned worker's
    try:
        path = Path(sources.undecoded(dataset)[1]["image"]["path"])
        _replace_image(path)
        dataset[1]["image"]  # noqa: B018 (nothing known: read)
        monkeypatch.setattr(loading, "exit_with_parent", lambda parent, worker_id: None)  # this is no worker
        init(0)
        assert sources.sources_read_at() == read_at
        with pytest.raises(SourceError, match="the file changed at"):
            dataset[1]["image"]  # noqa: B018
    finally:
        sources._SOURCES_READ_AT.update(read_at)
