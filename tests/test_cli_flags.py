"""Every augment, analysis and train parser refuses abbreviated flags (`--no-plo` is not `--no-plot`)."""
from __future__ import annotations

import argparse

import pytest

from analysis.cli import build_parser as analysis_parser
from augment.cli import build_parser as augment_parser
from train.cli import build_parser as train_parser


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from all_parsers(child)


@pytest.mark.parametrize("build", [augment_parser, analysis_parser, train_parser])
def test_no_parser_accepts_abbreviations(build):
    parsers = list(all_parsers(build()))
    assert len(parsers) > 2
    allowing = [p.prog for p in parsers if p.allow_abbrev]
    assert allowing == []


def test_abbreviated_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        augment_parser().parse_args(["score", "pool", "--no-plo"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-plo" in capsys.readouterr().err
    assert augment_parser().parse_args(["score", "pool", "--no-plot"]).no_plot


def test_abbreviated_trainer_flag_is_refused(capsys):
    # open_clip's --warmup exists; "--warm" must not silently mean it
    with pytest.raises(SystemExit) as exc:
        train_parser().parse_args(["clean", "--train-data", "d", "--warm", "10"])
    assert exc.value.code == 2 and "unrecognized arguments: --warm" in capsys.readouterr().err
    assert train_parser().parse_args(["clean", "--train-data", "d", "--warmup", "10"]).warmup == 10


def _eval_parser() -> argparse.ArgumentParser:
    return next(p for p in all_parsers(train_parser()) if p.prog.endswith(" eval"))


def test_every_eval_option_is_shared_or_belongs_to_named_tasks():
    """A new `train eval` option must say which tasks read it (or it could be silently ignored by the others)."""
    from train.commands_eval import SHARED_OPTIONS, TASK_OPTIONS

    dests = {a.dest for a in _eval_parser()._actions if a.dest != "help"}
    classified = set(SHARED_OPTIONS).union(*TASK_OPTIONS.values())
    assert dests == classified
    assert not SHARED_OPTIONS & set().union(*TASK_OPTIONS.values())


@pytest.mark.parametrize("task, extra, named", [
    ("captioning", ["--protocol", "sga"], "--protocol (retrieval)"),
    ("captioning", ["--albef-config", "a.yaml", "--rerank-k", "0"], "--albef-config (retrieval and grounding), --rerank-k (retrieval)"),
    ("grounding", ["--save-adv", "adv"], "--save-adv (retrieval and captioning)"),
    ("retrieval", ["--prompt", "a picture of"], "--prompt (captioning)"),
    ("retrieval", ["--no-meteor"], "--meteor (captioning)"),
])
def test_eval_refuses_an_option_its_task_does_not_read(task, extra, named, tmp_path, capsys):
    from train.cli import main

    code = main(["eval", "tiny-clip", "--task", task, "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 *extra])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: --task {task} does not read {named}: leave them out"


def test_eval_accepts_a_task_option_left_at_its_default(tmp_path, capsys):
    from train.cli import main

    # --rerank-k at its default value is not "set": the run goes on to load the model
    code = main(["eval", "tiny-clip", "--task", "captioning", "--rerank-k", "128", "--source",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    # ... and a retrieval model is refused by its kind before its loader sees captioning's options
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: 'tiny-clip' is a retrieval model (open_clip), not a captioning model"
