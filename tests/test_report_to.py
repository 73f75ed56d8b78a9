"""`--report-to tensorboard|wandb`: the loggers' failures at start-up, what --overwrite clears of
theirs, and the W&B config of a resumed run. The loggers' packages are stood in for (neither is a
dependency of the test suite): `MetricsLog` is built directly, with no training."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from augment.errors import MatPlusError


def _config(tmp_path, **settings):
    from train.config import resolve_config

    return resolve_config({"method": "clean", "train_data": str(tmp_path / "data"), "out": str(tmp_path / "run"),
                           **settings})


def _fake_wandb(monkeypatch, init) -> types.ModuleType:
    """A stand-in `wandb` whose `init` is `init`, with wandb's error classes (`wandb.errors.Error` is
    the base of UsageError, CommError, AuthenticationError)."""
    module = types.ModuleType("wandb")

    class Error(Exception):
        pass

    class UsageError(Error):
        pass

    module.errors = types.SimpleNamespace(Error=Error, UsageError=UsageError)
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_that_cannot_start_is_one_line_naming_it(tmp_path, monkeypatch):
    """was: `train clean --report-to wandb` without `wandb login` (or without network) ended in wandb's
    traceback, exit status 1 (UsageError: No API key configured), after config.yaml was written."""
    from train.run_log import MetricsLog

    def init(**kw):
        raise module.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    module = _fake_wandb(monkeypatch, init)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(MatPlusError, match=r"--report-to wandb: .*No API key configured.*WANDB_MODE=offline"):
        MetricsLog(run, _config(tmp_path, report_to="wandb"), is_main=True, resume_step=0)
