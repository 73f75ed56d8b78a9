"""`make demo`: the regime where 1:N pools matter most in the study, end to end, offline.

Builds the world, a pool, its scores, the pretrained CLIP, TeCoA / MAT / MAT+ runs with
learning curves on a validation split, evaluates them under attacks and writes the report under
outputs/demo/ (re-running reuses every finished step). The console shows one line per step of
the study and ends with the comparison that matters (the report's first table).
"""
from __future__ import annotations

import sys
import time

from analysis.config import load_study_config
from analysis.study import Study


def comparison(report_text: str) -> str:
    """The report's first section (the table of pretrained, TeCoA, MAT, MAT+ and the verdicts)."""
    section = report_text.split("## The comparison that matters", 1)[-1]
    return section.split("\n## ", 1)[0].split("Learning curves on", 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    argv = sys.argv[1:] if argv is None else argv
    began = time.time()
    # another study config may be named (e.g. `python -m analysis.demo mini` for a quick check)
    config = load_study_config(argv[0] if argv else "demo")
    report = Study(config, log=lambda line: print(line, flush=True)).run()
    print(f"\ndemo finished in {time.time() - began:.0f} s\n")
    print(comparison(report.read_text()))
    print(f"\nreport: {report} (learning curves: {report.parent / 'learning_curves.png'})")
    print(f"pools:  {config['out']}/pools/   runs: {config['out']}/runs/   evaluations: {config['out']}/evals/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
