"""`make demo`: the regime where 1:N pools matter most in the study, end to end, offline.

Builds the world, a pool, its scores, the pretrained CLIP, TeCoA / MAT / MAT+ runs with
learning curves on a validation split, evaluates them under attacks and writes the report under
outputs/demo/ (re-running reuses every finished step). The console shows one line per step of
the study and ends with the comparison that matters (the report's first table).
"""
from __future__ import annotations

import argparse
import sys
import time

from analysis.config import load_study_config
from analysis.study import Study
from augment.cli_common import run_main


def comparison(report_text: str) -> str:
    """The report's first section (the table of pretrained, TeCoA, MAT, MAT+ and the verdicts)."""
    section = report_text.split("## The comparison that matters", 1)[-1]
    return section.split("\n## ", 1)[0].split("Learning curves on", 1)[0].strip()


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    began = time.time()
    config = load_study_config(args.config)
    report = Study(config, log=lambda line: print(line, flush=True)).run()
    print(f"\ndemo finished in {time.time() - began:.0f} s\n")
    print(comparison(report.read_text()))
    print(f"\nreport: {report} (learning curves: {report.parent / 'learning_curves.png'})")
    print(f"pools:  {config['out']}/pools/   runs: {config['out']}/runs/   evaluations: {config['out']}/evals/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.demo", allow_abbrev=False,
                                     description="make demo: the study's demo config end to end, offline")
    # another study config may be named (e.g. `python -m analysis.demo mini` for a quick check)
    parser.add_argument("config", nargs="?", default="demo", help="study config file or bundled name (default: demo)")
    parser.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Expected failures (a bad config, a run that cannot resume) print one line and exit 2."""
    return run_main(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
