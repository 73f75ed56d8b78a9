"""`bench.bench_attacks`' command line: what it refuses before loading anything."""
from __future__ import annotations

from bench.bench_attacks import main


def test_multimodal_comparisons_on_a_model_without_their_baseline_stop_in_one_line(capsys):
    # the loop "encoding as before" is open_clip's text path before the shortcuts: no ALBEF counterpart
    assert main(["--model", "tiny-albef", "--attacks", "pgd,bert-attack"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "open_clip models only, not albef" in err and "--attacks pgd" in err
