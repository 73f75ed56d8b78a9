"""`make bench` / `python -m bench [NAME ...]`: run the benchmarks (all by default).

Each benchmark measures mat-plus against a named baseline in the same run and reports ratios;
results go to outputs/bench/<name>.json. Benchmarks are never part of the test suite.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["text_generators", "image_generators", "scoring", "attacks", "trainer", "train_loop", "scale"]


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                     epilog="each benchmark takes its own options: python -m bench.bench_NAME --help",
                                     allow_abbrev=False)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    names = parser.parse_args(argv).names or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:  # argparse's usage line and `error:`, exit status 2, as every other bad argument
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    import torch

    threads = torch.get_num_threads()  # each benchmark starts from torch's default, not the last one's setting
    failed = []
    for name in names:
        torch.set_num_threads(threads)
        print(f"\n=== bench_{name} ===", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            from bench.report import run_benchmark

            code = run_benchmark(module.main, [])
        except SystemExit as exc:  # argparse or a missing optional dependency
            code = exc.code
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
