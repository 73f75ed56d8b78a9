"""What the commands write when their output is a file or a pipe (a scheduler's log, `nohup`, `| tee`),
not a terminal: pytest's captured stderr is not a terminal either."""
from __future__ import annotations

import io
import re

from augment import progress


def test_a_bar_off_a_terminal_is_a_few_plain_lines(monkeypatch):
    """tqdm redraws in place with carriage returns (and at every set_postfix, which the training bar calls
    each logged step): in a file that was one "line" growing by a redraw per step, megabytes a run."""
    out = io.StringIO()
    bar = progress.progress_bar(total=500, desc="train clean", unit="step", file=out)
    for step in range(500):
        bar.set_postfix({"loss_ema": f"{step:.4f}"})
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text, text[:300]
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("train clean:   0%") and " 500/500 " in lines[1], lines

    now = [0.0]  # a step every 20 s: a line at most every LOG_INTERVAL_S (30 s), not one per step or postfix
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])
    out = io.StringIO()
    bar = progress.progress_bar(total=30, desc="slow", file=out)
    for _ in range(30):
        now[0] += 20
        bar.set_postfix_str("shard 1/1")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 12 <= len(lines) <= 22 and all(line.startswith("slow: ") for line in lines), lines  # 600 s, a line per 30-40 s
    assert "\r" not in out.getvalue()


def test_a_nested_bar_off_a_terminal_moves_no_cursor():
    """A validation's bar under the training bar: tqdm moved the cursor up and down (ESC[A, blank lines)."""
    out = io.StringIO()
    outer = progress.progress_bar(total=4, desc="train", file=out)
    inner = progress.progress_bar(total=3, desc="evaluating pgd", file=out, leave=None)
    inner.update(3)
    inner.close()
    outer.update(4)
    outer.close()
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\n\n" not in text, repr(text)
    # the inner bar's last state too: tqdm clears a leave=None bar below another, which in a log left it at 0/3
    assert [line.split(":")[0] for line in text.splitlines()] == ["train", "evaluating pgd", "evaluating pgd", "train"], text
    assert " 3/3 " in text.splitlines()[2], text


def test_a_bar_off_a_terminal_ends_with_its_last_state_even_one_a_terminal_clears():
    """leave=False (and leave=None below another bar) clears the bar on a terminal; in a log a line cannot be
    cleared, and the bar's last line was its first or an earlier one (a validation's attack bar: 0/N)."""
    out = io.StringIO()
    bar = progress.progress_bar(total=5, desc="attack", file=out, leave=False)
    bar.update(5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and " 0/5 " in lines[0] and " 5/5 " in lines[1], lines


def test_quiet_progress_bars_hides_each_named_librarys_bars_and_restores_each_as_it_was():
    """A study writes and reads pools by the hundred and loads checkpoints as often: datasets' and transformers'
    bars are off inside, and afterwards each library is as it was (a bar the caller had turned off stays off)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    was = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    try:
        datasets.enable_progress_bars()
        transformers_logging.disable_progress_bar()
        with progress.quiet_progress_bars(("datasets", "transformers", "no_such_library")):
            assert not datasets.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
        assert datasets.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
        with progress.quiet_progress_bars(("transformers",)):  # only the named ones
            assert datasets.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars() if was[0] else datasets.disable_progress_bars()
        transformers_logging.enable_progress_bar() if was[1] else transformers_logging.disable_progress_bar()


def test_training_and_inspect_logs_hold_lines_not_redraws(tmp_path, sample_world_dir, capsys):
    from augment.cli import main
    from train.trainer import train_run

    assert main(["inspect", "--source", str(sample_world_dir)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and re.search(r"^reading \S+: .*img", err, re.M), repr(err[:300])

    train_run({"train_data": str(sample_world_dir), "out": str(tmp_path / "run"), "method": "clean", "max_steps": 6,
               "batch_size": 4, "workers": 0, "val_frequency": 1, "val_limit": 4, "val_attack": "pgd", "pgd_steps": 1,
               "schedule_steps": 2, "progress": True})
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err, repr(err[:600])
    bar_lines = [line for line in err.splitlines() if line.startswith("train clean:")]
    assert 2 <= len(bar_lines) <= 4, err  # its first and last state (a line per step before)
    assert re.search(r"^step +6: val robust|^ +step +6: val robust", err, re.M), err


def test_meteor_leaves_no_unclosed_pipe_behind():
    """pycocoevalcap's Meteor ends its Java process in __del__ but leaves its stdout and stderr pipes open:
    two ResourceWarnings per scoring (per attack, per validation), printed as tracebacks ("Exception ignored
    in ...") into the log under PYTHONWARNINGS=error or python -X dev."""
    import gc
    import shutil
    import warnings

    from train.caption_metrics import caption_scores

    assert shutil.which("java"), "METEOR needs Java: apt-get install default-jre-headless"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = caption_scores([["a red circle on the left"]], ["a red circle"], meteor=True)
        gc.collect()
    assert scores["meteor"] is not None
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_a_very_large_image_is_named_once_and_its_training_crops_add_nothing(tmp_path, sample_world_dir, monkeypatch,
                                                                               caplog):
    """An image over Pillow's limit (89-179 Mpx) was named in a warning at every decoding (every epoch, every
    attack), and each random training crop over the limit added Pillow's own DecompressionBombWarning, two lines
    naming no record: a dataset of 100 Mpx photos logged three lines per image per epoch. Here every 64x64 image
    of the world is "very large" (limit 3,000 pixels)."""
    import logging
    import warnings

    from PIL import Image

    from augment import sources
    from train.trainer import train_run

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    monkeypatch.setattr(sources, "_NAMED_LARGE", set(), raising=False)
    path = next((sample_world_dir / "images").iterdir())
    with caplog.at_level(logging.WARNING, logger="augment.sources"):
        for _ in range(3):
            assert sources.open_image(str(path), where=f"image {path.name}").size == (64, 64)
    assert [r.getMessage() for r in caplog.records].count(
        f"image {path.name}: a very large image (64 x 64, 4096 pixels; Pillow's safety limit is 3000): decoded") == 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_run({"train_data": str(sample_world_dir), "out": str(tmp_path / "run"), "method": "clean",
                   "max_steps": 2, "batch_size": 4, "workers": 0, "progress": False})
    bombs = [str(w.message) for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert bombs == [], bombs[:2]


STDOUT_SCRIPT = """
import argparse, sys
from augment.cli_common import run_main

def step(args):
    print("[eval] run-s0")  # as the study logs a step, then works on it (here: until the test answers)
    sys.stdin.readline()
    return 0

def build():
    parser = argparse.ArgumentParser()
    parser.set_defaults(func=step)
    return parser

sys.exit(run_main(build, []))
"""


def test_a_command_s_stdout_reaches_a_pipe_or_file_line_by_line():
    """Python block-buffers stdout off a terminal: a study's '[eval] ...' line reached its log file only at the next
    flush, after stderr's later lines, and a run killed with SIGKILL (the OOM killer) lost every line still held."""
    import os
    import select
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen([sys.executable, "-c", STDOUT_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env=env)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the line printed before the command's work was still in its buffer"
        assert process.stdout.readline() == b"[eval] run-s0\n"
    finally:
        process.stdin.write(b"\n")
        process.stdin.close()
        process.wait(timeout=60)
    assert process.returncode == 0


def test_a_launch_s_processes_say_a_warning_about_the_shared_run_once(tmp_path, sample_world_dir):
    """Every process of a torchrun launch checks the run folder and reads the same data and model: their warnings
    came once per process (here 2 copies of the --resume latest line; 8 on an 8-GPU node)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATPLUS_LOGLEVEL": "WARNING", "PYTHONPATH": str(repo)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train.cli",
               "clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--max-steps", "1",
               "--batch-size", "8", "--workers", "0", "--no-progress", "--resume", "latest", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, cwd=repo, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "has no checkpoint yet" in line]
    assert lines == [f"warning: --resume latest: {tmp_path / 'run'} has no checkpoint yet; starting from step 0"], \
        done.stderr[-2000:]


def test_each_very_large_image_of_embedded_bytes_without_a_path_is_named(monkeypatch, caplog):
    """Images decoded without a record to name (datasets' SourceImage feature: an evaluation's gallery rows) of
    embedded bytes and no file name were all "image (embedded bytes)" with no path: the once-per-image record
    took them for one image, so only the first very large one of a process was ever named."""
    import logging

    from PIL import Image

    from augment import sources

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    monkeypatch.setattr(sources, "_NAMED_LARGE", set(), raising=False)
    blobs = []
    for colour in ("red", "blue"):
        out = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(out, format="PNG")
        blobs.append(out.getvalue())
    with caplog.at_level(logging.WARNING, logger="augment.sources"):
        for data in (*blobs, *blobs):
            assert sources.open_image({"path": None, "bytes": data}).size == (64, 64)
    named = [r.getMessage() for r in caplog.records if "a very large image" in r.getMessage()]
    assert len(named) == 2, named  # each image once


def test_a_large_sample_worlds_progress_reaches_a_log(capsys):
    # make-sample's bar was off whenever stderr was no terminal: a large world's log said nothing until it was done
    from augment.world.writer import _progress

    assert list(_progress(range(600), 600)) == list(range(600))
    err = capsys.readouterr().err
    assert "sample world" in err and "600/600" in err and "\r" not in err
    assert list(_progress(range(20), 20)) == list(range(20))  # a small world: seconds, no bar
    assert capsys.readouterr().err == ""
