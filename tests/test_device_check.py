"""The prepared GPU run (bench/device_check.py) must still start when a session is lent a GPU:
device time is too scarce to find a renamed flag there."""
import importlib
import json
from pathlib import Path

import pytest

from bench.device_check import MEASUREMENTS, TOTAL_LIMIT_S, planned_argv

DEVICE_COMMAND_LIMIT_S = 600  # the device tool's longest command
FILES_BACK = 8  # the most files that come back from the device's $OUT


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_planned_command_parses_with_its_benchmark(smoke, tmp_path):
    for measurement in MEASUREMENTS:
        argv = planned_argv(measurement, smoke, tmp_path)
        args = importlib.import_module(measurement.module).parse_args(argv)
        assert Path(args.out) == tmp_path / f"{measurement.name}.json"
        assert args.device == ("cpu" if smoke else "cuda"), measurement.name


def test_the_run_fits_the_device_budget_and_its_files_come_back():
    assert sum(m.limit_s for m in MEASUREMENTS) <= TOTAL_LIMIT_S < DEVICE_COMMAND_LIMIT_S - 60
    assert len({m.name for m in MEASUREMENTS}) == len(MEASUREMENTS)
    assert len(MEASUREMENTS) + 1 <= FILES_BACK  # NAME.json each, and device_check.log


def test_a_report_left_by_an_earlier_run_is_not_summarised_as_this_ones(tmp_path, monkeypatch, capsys):
    """The summary reads NAME.json: a stale one from an earlier run in the same --out must be gone
    before the measurement runs, so a measurement that fails or is killed shows its log instead."""
    import bench.device_check as device_check

    failing = device_check.Measurement("attacks_pgd", "bench.no_such_benchmark", (), limit_s=60, smoke_argv=())
    monkeypatch.setattr(device_check, "MEASUREMENTS", (failing,))
    monkeypatch.setattr(device_check, "preflight", lambda: ["torch (stubbed preflight)"])
    stale = {"pgd": {"ratio_torchattacks_over_matplus": 9.99, "ratio_torchattacks_same_model_over_matplus": 9.99}}
    (tmp_path / "attacks_pgd.json").write_text(json.dumps(stale), encoding="utf-8")
    assert device_check.headline(stale)  # the stale report would have given a headline

    assert device_check.main(["--smoke", "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "9.99x" not in printed and "no headline from attacks_pgd.json" in printed
    assert "No module named bench.no_such_benchmark" in printed  # the log's tail, instead


def test_the_smoke_run_may_take_longer_than_the_device_run():
    sd15 = next(m for m in MEASUREMENTS if m.name == "image_generators_sd15")
    assert sd15.limit(smoke=False) == sd15.limit_s and sd15.limit(smoke=True) > sd15.limit_s
    pgd = next(m for m in MEASUREMENTS if m.name == "attacks_pgd")
    assert pgd.limit(smoke=True) == pgd.limit_s
