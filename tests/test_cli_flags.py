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
