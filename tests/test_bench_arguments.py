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
