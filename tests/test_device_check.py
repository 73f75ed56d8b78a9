"""The prepared GPU run (bench/device_check.py) must still start when a session is lent a GPU:
device time is too scarce to find a renamed flag there."""
import importlib
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
