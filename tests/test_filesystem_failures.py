"""Filesystem and resource failures (audit U): a full disk names the file it failed on, and what was
written before it stays whole; two writers of one pool; interrupts of commands that write a pool."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from augment.cli import main as augment_main

FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    from augment.world.writer import write_sample

    return write_sample(tmp_path_factory.mktemp("fsfail") / "sample", n=12, seed=0)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]


# ----------------------------------------------------------------------------- a full disk names the file


@needs_dev_full
def test_a_full_disk_during_an_atomic_write_names_the_file(tmp_path):
    from augment.atomic import temporary_path, write_json_atomic

    target = tmp_path / "pool.json"
    temporary_path(target).symlink_to(FULL)  # this process's temporary lands on a full disk
    with pytest.raises(OSError) as caught:
        write_json_atomic(target, {"a": 1})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not target.exists() and not temporary_path(target).exists()


@needs_dev_full
def test_a_full_disk_while_saving_a_figure_names_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from augment.atomic import save_figure_atomic, temporary_path

    target = tmp_path / "scores.png"
    temporary_path(target, ".png").symlink_to(FULL)
    figure = plt.figure()
    try:
        with pytest.raises(OSError) as caught:
            save_figure_atomic(figure, target)
    finally:
        plt.close(figure)
    assert caught.value.filename == str(target)


def test_a_full_disk_while_writing_a_shard_names_it_and_keeps_the_earlier_shards(tmp_path, sample_dir, capsys,
                                                                                   monkeypatch):
    """was `error: [Errno 28] No space left on device`: the shard's write fails in a buffer's flush,
    which names no file."""
    import datasets

    out = tmp_path / "pool"
    real, calls = datasets.Dataset.to_parquet, []

    def to_parquet(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:
            Path(path).write_bytes(b"PAR1 part")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "to_parquet", to_parquet)
    command = ["generate", "--method", "i2t-human", "--source", str(sample_dir), "--out", str(out), "--n", "1",
               "--shard-size", "3", "--no-progress", "--workers", "0"]
    assert augment_main(command) == 2
    line = _error_line(capsys)
    assert line == f"error: {out / 'data' / 'shard-00001.parquet'}: {os.strerror(errno.ENOSPC)}", line
    assert sorted(p.name for p in (out / "data").iterdir()) == ["shard-00000.parquet"]  # no half-written shard
    monkeypatch.setattr(datasets.Dataset, "to_parquet", real)
    assert augment_main(command) == 0  # room again: the same command resumes
    assert "1 of 3 shards kept" in capsys.readouterr().err


@needs_dev_full
def test_a_full_disk_while_logging_metrics_names_the_file(tmp_path):
    from train.run_log import METRICS_FILE, MetricsLog

    (tmp_path / METRICS_FILE).symlink_to(FULL)
    log = MetricsLog.__new__(MetricsLog)  # the appending writer alone: no logger set up
    log.path, log.is_main, log.tensorboard, log.wandb = tmp_path / METRICS_FILE, True, None, None
    with pytest.raises(OSError) as caught:
        log.write({"step": 1, "loss": 1.0})
    assert caught.value.filename == str(tmp_path / METRICS_FILE)


def test_a_full_disk_while_caching_embeddings_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """was safetensors' SafetensorError: `augment score` on a full disk ended in a traceback, exit status 1."""
    import numpy as np
    import safetensors.numpy
    from safetensors import SafetensorError

    from augment.scoring.embeddings import EmbeddingCache

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"part")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    cache = EmbeddingCache(tmp_path / "embeddings", "scorer-id")
    with pytest.raises(OSError) as caught:
        cache.put("text", np.zeros((2, 16), dtype=np.uint8), np.zeros((2, 4), dtype=np.float32))
    assert caught.value.errno == errno.ENOSPC and caught.value.strerror == os.strerror(errno.ENOSPC)
    assert Path(caught.value.filename).parent == tmp_path / "embeddings" and caught.value.filename.endswith(".safetensors")
    assert list((tmp_path / "embeddings").iterdir()) == []  # no part-written temporary left


# ----------------------------------------------------------------------------- one generate per pool folder


def _generate(sample_dir: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["generate", "--method", method, "--source", str(sample_dir), "--out", str(out), "--n", "1",
            "--shard-size", "3", "--no-progress", "--workers", "0", *extra]


def test_a_second_generate_into_a_pool_being_written_is_refused_before_touching_it(tmp_path, sample_dir, capsys):
    """was: no lock. An `--overwrite` run into the folder of a running generate swapped its pool in,
    and the running one went on writing its shards into it (a pool.json of one method over rows of
    both); two runs started together each took the folder for new and wrote their shards over the other's."""
    from filelock import FileLock

    from augment.pool import WRITER_LOCK

    out, parent = tmp_path / "pool", tmp_path / "parent"
    assert augment_main(_generate(sample_dir, out, "i2t-human")) == 0
    assert augment_main(_generate(sample_dir, parent, "i2t-human")) == 0
    selection = ["select", str(parent), "--out", str(out), "--overwrite", "--max-per-item", "1"]
    capsys.readouterr()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    held = FileLock(out / WRITER_LOCK, timeout=0)
    held.acquire()  # flock: a second open file description conflicts, in this process as in another
    try:
        for extra in ((), ("--overwrite",)):
            assert augment_main(_generate(sample_dir, out, "shuffle", *extra)) == 2
            line = _error_line(capsys)
            assert line == (f"error: {out}: another augment generate or select is writing this pool; wait for it "
                            "to finish, or choose another --out"), line
        # a selection swapped into OUT under a running generate: that one went on writing into the selection
        assert augment_main(selection) == 2
        assert "another augment generate or select is writing this pool" in _error_line(capsys)
    finally:
        held.release()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert augment_main(selection) == 0  # the lock is free again
    assert augment_main(_generate(sample_dir, out, "shuffle", "--overwrite")) == 0


def test_a_folder_left_with_only_the_lock_is_written_as_a_new_pool(tmp_path, sample_dir, capsys):
    """A run killed before its first pool.json leaves the lock file (the kernel releases its flock):
    the folder is no pool yet, not "exists and is not a pool"; a run that fails first leaves no folder."""
    from augment.pool import WRITER_LOCK

    out = tmp_path / "pool"
    out.mkdir()
    (out / WRITER_LOCK).touch()
    assert augment_main(_generate(sample_dir, out, "i2t-human")) == 0
    assert (out / "pool.json").is_file()
    capsys.readouterr()
    refused = tmp_path / "refused"  # shuffle refuses a source of one image, before any pool is written
    assert augment_main(_generate(sample_dir, refused, "shuffle", "--limit", "1")) == 2
    assert not refused.exists()



def test_a_refused_generate_leaves_no_lock_file_in_a_folder_that_was_there(tmp_path, sample_dir, capsys):
    """was: a generate refused for a user's folder (`exists and is not a pool`) or failing on an
    existing empty folder left OUT/.generate.lock in it, and `augment push POOL --to-dir` that folder
    then said `holds files that are not a pool export (.generate.lock)`."""
    mine, empty = tmp_path / "mine", tmp_path / "empty"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own\n")
    empty.mkdir()
    assert augment_main(_generate(sample_dir, mine, "i2t-human")) == 2
    assert "exists and is not a pool" in _error_line(capsys)
    assert augment_main(_generate(sample_dir, empty, "shuffle", "--limit", "1")) == 2  # refused before any pool
    capsys.readouterr()
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert list(empty.iterdir()) == []
    pool = tmp_path / "pool"
    assert augment_main(_generate(sample_dir, pool, "i2t-human")) == 0
    assert augment_main(["push", str(pool), "--to-dir", str(empty)]) == 0


# ----------------------------------------------------------------------------- interrupts of select


def test_select_stopped_by_sigterm_removes_its_unfinished_copy_and_says_nothing_was_kept(tmp_path, capsys,
                                                                                       monkeypatch):
    """was: SIGTERM killed select outright (its unfinished copy `.OUT.partial-PID-...` left beside --out
    until a later select into OUT), and Ctrl-C said `finished shards are kept; re-run the same command to
    resume`: a selection has no shards to keep nor a resume."""
    import signal

    import augment.select as select_module
    from augment.pool import write_pool

    rows = [{"row_id": f"eda:img{i % 2}:0:{i}", "source_image_id": f"img{i % 2}", "source_caption_index": 0,
             "split": "train", "modality": "text", "image": None, "caption": f"caption {i}", "method": "eda",
             "seed": i, "provenance": "{}"} for i in range(6)]
    parent = tmp_path / "pool"
    write_pool(parent, rows, {"method": "eda", "modality": "text", "model": None, "params": {}, "seed": 0, "n": 3,
                              "split": "train", "limit": None, "source": "world", "source_fingerprint": "fp"})
    real = select_module.iter_rows

    class Killed(Exception):
        pass

    def iter_rows(pool, indices):
        for number, row in enumerate(real(pool, indices)):
            if number == 2:
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # unhandled: it would end pytest
                    raise Killed
                signal.raise_signal(signal.SIGTERM)
            yield row

    monkeypatch.setattr(select_module, "iter_rows", iter_rows)
    out = tmp_path / "sel"
    assert augment_main(["select", str(parent), "--out", str(out), "--methods", "eda"]) == 143
    assert _error_line(capsys) == ("interrupted: nothing was written (a pool already at --out is as it was); "
                                   "re-run the same command")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]  # no unfinished copy, no --out
