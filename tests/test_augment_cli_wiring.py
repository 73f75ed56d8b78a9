"""Each `augment` flag reaches the code that reads it (audit CG): a flag that parses but never arrives
leaves the default in force without a word, which no end-to-end test run at the defaults can see.
The commands run in-process with the work they start replaced by a recorder; no model is loaded."""
from __future__ import annotations

import argparse
import types

import pytest

from augment.cli import build_parser


# ----------------------------------------------------------------------------- argument types


@pytest.mark.parametrize("text, accepted", [("0", False), ("1", False), ("0.5", True), ("1e-9", True),
                                            ("0.999999", True)])
def test_a_confidence_level_lies_strictly_between_0_and_1(text, accepted):
    """Guards a mutation (audit CG): `0 <= value <= 1` passed every test (only 2 was tried); a 0 or 1 level
    gives an interval of one point or of the whole range."""
    from augment.arguments import confidence_level

    if accepted:
        assert confidence_level(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="strictly between 0 and 1"):
            confidence_level(text)


# ----------------------------------------------------------------------------- score


@pytest.mark.parametrize("given, report", [([], "pool/source.skipped.json"), (["--skip-report", "mine.json"], "mine.json")])
def test_a_pool_made_with_skip_bad_writes_its_report_where_skip_report_says(given, report):
    """A pool made with --skip-bad is read so again by `augment score POOL`; a --skip-report given then was
    replaced by POOL/source.skipped.json without a word (audit CG). It is the user's now; the pool's folder
    stays the default."""
    from pathlib import Path

    from augment.commands.score import source_reading

    pool = types.SimpleNamespace(path=Path("pool"), meta={"source": "src", "skip_bad": True})
    reading = source_reading(pool, build_parser().parse_args(["score", "pool", *given]))
    assert (reading["skip_bad"], reading["skip_report"]) == (True, str(Path(report)))
