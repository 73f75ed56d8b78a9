"""The miniature study runs end to end, its report has every section, and a re-run resumes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis.cli import compare_table, find_evaluations
from analysis.config import load_study_config
from analysis.report import mean_std, spearman
from analysis.study import Study, run_specs
from augment.errors import MatPlusError


@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "mini"
    config = load_study_config("mini", {"out": str(out)})
    logged: list[str] = []
    report = Study(config, log=logged.append).run()
    return config, out, report, logged


def test_report_has_every_section(mini_study):
    config, out, report, _ = mini_study
    text = report.read_text()
    for heading in ("## Clean and robust R@1 per method and pool", "## Text attacks and meaning",
                    "## Pool properties and robustness", "## Robust R@1 against the number of augmentations per item",
                    "## Four ways of using more samples, at equal steps"):
        assert heading in text
    for png in ("properties_vs_robustness.png", "robust_vs_n_augmentations.png", "more_samples.png"):
        assert (out / png).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    runs = {r["run"] for r in results["runs"]}
    assert {"pretrained", "mat", "mat+:scene", "mat+:shuffle", "mat+:human", "mat+:scene:n1",
            "mat+expand:scene", "mat:oracle"} <= runs
    assert len(results["runs"]) == len(runs) * len(config["seeds"])
    for pool in ("scene", "shuffle", "human"):
        props = results["pool_properties"][pool]
        assert all(props[k] is not None for k in ("alignment", "diversity", "gap"))
        assert f"| {pool} |" in text
    assert set(results["correlations"]) == {"alignment", "diversity", "gap"}
    # every text attack reports how many attacked captions the truth checker still calls true
    entry = results["runs"][0]["eval"]["attacks"]["bert-attack"]
    assert "meaning_preserved" in entry and "tr@1_meaning_preserved" in entry


def test_rerun_skips_finished_steps(mini_study):
    config, out, _, first_log = mini_study
    assert any(line.startswith("[train]") for line in first_log)
    logged: list[str] = []
    Study(config, log=logged.append).run()
    assert logged == []  # pools, scores, runs and evaluations all reused


def test_interrupted_evaluation_is_redone(mini_study):
    config, out, _, _ = mini_study
    marker = out / "evals" / "mat-s0" / ".done.json"
    marker.unlink()
    logged: list[str] = []
    Study(config, log=logged.append).run()
    assert logged == ["[eval] mat-s0"]


def test_compare_prints_finished_evaluations(mini_study):
    _, out, _, _ = mini_study
    evaluations = find_evaluations([str(out / "evals")])
    assert len(evaluations) >= 8
    table = compare_table(evaluations)
    assert table.splitlines()[0].startswith("| evaluation | clean TR@1/IR@1 | pgd TR@1/IR@1")
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "compare", str(out / "evals" / "mat-s0")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "| mat-s0 |" in result.stdout
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "compare", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no eval.json" in result.stderr


def test_run_specs_cover_every_section():
    config = load_study_config("default")
    names = {spec.name for spec in run_specs(config)}
    assert {"clean", "tecoa", "fare", "mat", "mat+:scene", "mat+:shuffle", "mat+expand:scene", "mat:oracle",
            "mat+:scene:n1", "mat+:scene:n2"} <= names


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(MatPlusError, match="no such file"):
        load_study_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(MatPlusError, match="unknown keys"):
        load_study_config(None, {"colour": "red"})
    with pytest.raises(MatPlusError, match="is not one of the pools"):
        load_study_config(None, {"n_aug_sweep": {"pool": "nope", "values": [1]}})


def test_statistics_helpers():
    assert mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2])["rho"] is None
