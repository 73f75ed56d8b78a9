"""Feature combinations through the `train` CLI that were accepted and silently not used (audit AP):
each is refused in one line, exit status 2, before anything is written."""
from __future__ import annotations

import pytest

from train.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_captioner_refuses_a_pretrained_tag(command, sample_world_dir, tmp_path, capsys):
    # a captioner loads a Hub id or a folder; --pretrained openai was accepted, never read, and recorded
    # as the run's (summary.json `pretrained: openai`) or the evaluation's model
    out = tmp_path / "out"
    if command == "train":
        argv = ["clean", "--model", "tiny-captioner", "--task", "captioning", "--pretrained", "openai",
                "--train-data", str(sample_world_dir), "--out", str(out), "--max-steps", "1", "--batch-size", "2",
                "--workers", "0", "--no-progress"]
    else:
        argv = ["eval", "tiny-captioner", "--task", "captioning", "--pretrained", "openai", "--source",
                str(sample_world_dir), "--attacks", "clean", "--limit", "2", "--out", str(out), "--workers", "0",
                "--no-progress"]
    assert main(argv) == 2
    assert _error_line(capsys) == ("error: captioner 'tiny-captioner' takes no pretrained tag (got 'openai'); "
                                   "name a Hub id or a folder")
    assert not (out / "summary.json").exists() and not (out / "eval.json").exists()
