"""Every benchmark refuses a count out of range in one argparse line, exit status 2 (a `--repeats 0`
or `--pairs 0` used to end in a traceback from the median of nothing or an empty world)."""
from __future__ import annotations

import importlib

import pytest

REFUSED = [
    ("bench.bench_attacks", ["--repeats", "0"], "--repeats: 0: must be at least 1"),
    ("bench.bench_attacks", ["--images", "-2"], "--images: -2: must be at least 1"),
    ("bench.bench_image_generators", ["--batch-size", "0"], "--batch-size: 0: must be at least 1"),
    ("bench.bench_image_generators", ["--strength", "1.5"], "--strength: 1.5: must lie in (0, 1]"),
    ("bench.bench_scale", ["--repeats", "0"], "--repeats: 0: must be at least 1"),
    ("bench.bench_scoring", ["--pairs", "0"], "--pairs: 0: must be at least 1"),
    ("bench.bench_scoring", ["--workers", "-1"], "--workers: -1: must not be negative"),
    ("bench.bench_text_generators", ["--alpha", "0"], "--alpha: 0: must lie in (0, 1]"),
    ("bench.bench_text_generators", ["--captions", "ten"], "--captions: 'ten' is not a whole number"),
    ("bench.bench_train_loop", ["--steps", "0"], "--steps: 0: must be at least 1"),
    ("bench.bench_train_loop", ["--warmup", "0"], "--warmup: 0: must be at least 1"),  # the first starts the workers
    ("bench.bench_trainer", ["--pgd-steps", "0"], "--pgd-steps: 0: must be at least 1"),
    # a free string: a typo ran the whole benchmark to fail in the trainer's own check
    ("bench.bench_train_loop", ["--precision", "amp16"], "--precision: invalid choice: 'amp16'"),
    # a ValueError traceback, or (-5) a report of nulls with exit 0
    ("bench.bench_scale", ["--sizes", "abc"], "--sizes: 'abc': expected comma-separated whole numbers"),
    ("bench.bench_scale", ["--sizes=-5"], "--sizes: '-5': every count must be at least 1"),
    ("bench.bench_scoring", ["--widths=-1"], "--widths: '-1': every count must be at least 1"),
]


@pytest.mark.parametrize("module, argv, expected", REFUSED, ids=[f"{m.split('.')[-1]} {' '.join(a)}" for m, a, _ in REFUSED])
def test_a_count_out_of_range_is_one_line_and_status_2(module, argv, expected, capsys):
    parse_args = importlib.import_module(module).parse_args
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize("module, argv", [
    ("bench.bench_scoring", ["--workers", "0", "--pairs", "8"]),  # 0 workers: decoding in the process
    ("bench.bench_train_loop", ["--workers", "0", "--profile", "0"]),
    ("bench.bench_text_generators", ["--threads", "0", "--seed", "0"]),  # 0 threads: torch's own
])
def test_the_zeros_that_mean_something_are_still_taken(module, argv):
    parsed = importlib.import_module(module).parse_args(argv)
    assert all(getattr(parsed, flag.lstrip("-").replace("-", "_")) == int(value)
               for flag, value in zip(argv[::2], argv[1::2]))


def test_a_folder_as_the_report_is_refused_before_the_run(tmp_path, capsys):
    """`--out DIR` ran the first benchmark, then lost its result to an IsADirectoryError traceback."""
    parse_args = importlib.import_module("bench.bench_attacks").parse_args
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path)])
    assert f"{tmp_path} is a folder: give the report's file name" in capsys.readouterr().err


def test_a_benchmarks_own_errors_are_one_line_and_status_2(capsys):
    """A source or model that cannot load, a method no trainer has: tracebacks, exit 1."""
    from augment.errors import SourceError
    from bench.report import run_benchmark

    def main(argv):
        raise SourceError("/nonexistent.json: no such file or folder")

    assert run_benchmark(main, []) == 2
    assert capsys.readouterr().err.strip() == "error: /nonexistent.json: no such file or folder"


def test_the_trainer_benchmarks_give_clean_runs_no_masked_lm(tmp_path, sample_world_dir):
    """clean reads a masked LM only for an MLM --val-attack (2026-12-05): the benchmarks gave every
    method theirs, and clean's run was refused."""
    from argparse import Namespace

    from bench.bench_trainer import _trainer

    args = Namespace(model="tiny-clip", mlm="tiny-mlm", batch_size=4, pgd_steps=1)
    assert _trainer("clean", str(sample_world_dir), tmp_path / "clean", args).cfg.mlm is None
    assert _trainer("mat", str(sample_world_dir), tmp_path / "mat", args).cfg.mlm == "tiny-mlm"


def test_an_unknown_benchmark_name_is_an_argparse_error(capsys):
    """`python -m bench nosuch` printed a bare line, not the `error:` line every other bad argument gets."""
    from bench.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["scoring", "nosuch"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "python -m bench: error: unknown benchmark(s) nosuch; choose from" in err
    # every benchmark spells its repeat count --repeats (text_generators' old --repeat still works)
    assert importlib.import_module("bench.bench_text_generators").parse_args(["--repeats", "2"]).repeat == 2
