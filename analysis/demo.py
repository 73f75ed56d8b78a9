"""`make demo`: the quick study on the bundled sample world, end to end, offline.

Builds the world, a pool, its scores, MAT and MAT+ runs, evaluates them under attacks and
writes the report under outputs/demo/ (re-running reuses every finished step).
"""
from __future__ import annotations

import sys
import time

from analysis.config import load_study_config
from analysis.study import Study


def main() -> int:
    began = time.time()
    config = load_study_config("demo")
    report = Study(config).run()
    print(f"\ndemo finished in {time.time() - began:.0f} s")
    print(f"report: {report}")
    print(f"pools:  {config['out']}/pools/   runs: {config['out']}/runs/   evaluations: {config['out']}/evals/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
