"""`--report-to tensorboard|wandb`: the loggers' failures at start-up, what --overwrite clears of
theirs, and the W&B config of a resumed run. The loggers' packages are stood in for (neither is a
dependency of the test suite): `MetricsLog` is built directly, with no training."""
from __future__ import annotations

import re
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


def test_a_tensorboard_folder_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch):
    """was: a resumed run whose RUN/tensorboard could not be written (a read-only mount, no permission)
    printed TensorBoard's writer thread's traceback ("Exception in thread Thread-1: ... OSError") beside
    `error: b'RUN/tensorboard/events.out.tfevents...': Read-only file system` (the path as bytes)."""
    import errno
    import io
    import os
    import threading

    from train.run_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLog

    run = tmp_path / "run"
    folder = run / TENSORBOARD_DIR
    folder.mkdir(parents=True)
    (run / METRICS_FILE).write_text('{"step": 1}\n{"step": 2}\n')
    real_open = io.open

    def read_only(file, mode="r", *args, **kwargs):  # RUN/tensorboard on a read-only file system
        if any(c in mode for c in "wax+") and Path(os.fsdecode(file)).parent == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), file)
        return real_open(file, mode, *args, **kwargs)

    class SummaryWriter:
        """As TensorBoard's: the event file is written by a thread, whose error is raised there (threading's
        hook prints it) and raised again in the caller (the file named as bytes)."""

        def __init__(self, log_dir, purge_step=None):
            failed = []

            def write():
                try:
                    read_only(os.fsencode(Path(log_dir) / "events.out.tfevents.1.host"), "wb")
                except OSError as exc:
                    failed.append(exc)
                    raise

            thread = threading.Thread(target=write)
            thread.start()
            thread.join()
            if failed:
                raise failed[0]

    monkeypatch.setattr(io, "open", read_only)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    with pytest.raises(OSError) as caught:
        MetricsLog(run, _config(tmp_path, report_to="tensorboard"), is_main=True, resume_step=1)
    assert caught.value.filename == str(folder) and caught.value.errno == errno.EROFS
    assert thread_errors == []  # no traceback of another thread beside the run's one line
    monkeypatch.setattr(io, "open", real_open)
    assert (run / METRICS_FILE).read_text() == '{"step": 1}\n{"step": 2}\n'  # nothing changed in RUN


def test_overwrite_removes_the_replaced_runs_wandb_files(tmp_path):
    """was: --overwrite left RUN/wandb (W&B's files of the replaced run: offline runs, logs), so
    `wandb sync RUN/wandb/offline-run-*` also uploaded the run that had been replaced."""
    from train.run_folder import clear_run_outputs

    run = tmp_path / "run"
    offline = run / "wandb" / "offline-run-20261205_230654-f0d0f8b2c0e84014"
    offline.mkdir(parents=True)
    (offline / "run-f0d0f8b2c0e84014.wandb").write_bytes(b":W&B")
    (run / "wandb" / "latest-run").symlink_to(offline.name)
    (run / "tensorboard").mkdir()
    (run / "wandb_run_id.txt").write_text("f0d0f8b2c0e84014\n")
    (run / "notes.txt").write_text("mine")
    clear_run_outputs(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # the user's own file stays


def test_wandb_config_of_a_resumed_run_is_the_runs_settings(tmp_path, monkeypatch):
    """was: the resumed run sent `resume: latest` (and a run started with --overwrite `overwrite: true`)
    to W&B's config, replacing the first start's values: W&B's config of one run changed with each
    restart, while config.yaml keeps the run's settings with `resume: null`, `overwrite: false`."""
    import yaml

    from train.config import save_config
    from train.run_log import MetricsLog

    inits = []
    _fake_wandb(monkeypatch, lambda **kw: inits.append(kw) or types.SimpleNamespace(finish=lambda: None))
    run = tmp_path / "run"
    run.mkdir()
    first = _config(tmp_path, report_to="wandb", overwrite=True)
    MetricsLog(run, first, is_main=True, resume_step=0).close()
    MetricsLog(run, _config(tmp_path, report_to="wandb", resume="latest"), is_main=True, resume_step=1).close()
    assert inits[0]["id"] == inits[1]["id"] and inits[0]["config"] == inits[1]["config"]
    save_config(first, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert {k: inits[1]["config"][k] for k in ("resume", "overwrite")} == {k: saved[k] for k in ("resume", "overwrite")}


def test_a_resume_relogs_its_steps_line_alone_and_a_fresh_start_gets_a_new_wandb_run(tmp_path, monkeypatch):
    """Guards mutations (audit CH) of the run's log that passed every test: TensorBoard given every kept line again
    on a resume (not the resumed step's alone), the pool draws' scalars left out of what the loggers get, and a run
    starting from step 0 (a `--resume latest` that found no checkpoint) logging into the W&B run of the folder's id."""
    import json

    from train.run_log import METRICS_FILE, WANDB_ID_FILE, MetricsLog

    logged = []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            Path(log_dir).mkdir(parents=True, exist_ok=True)

        def add_scalar(self, name, value, step):
            logged.append((name, value, step))

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": step, "loss": 1.0 / step, "pool_draws": {"original": step}} for step in (1, 2, 3)]
    (run / METRICS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    MetricsLog(run, _config(tmp_path, report_to="tensorboard"), is_main=True, resume_step=2).close()
    assert sorted(logged) == [("loss", 0.5, 2), ("pool_draws/original", 2, 2)]
    (run / WANDB_ID_FILE).write_text("0123456789abcdef\n")
    assert MetricsLog._wandb_id(run, resume_step=2) == "0123456789abcdef"
    assert MetricsLog._wandb_id(run, resume_step=0) not in ("0123456789abcdef", "")


def test_an_infinite_value_is_written_as_null_and_named(tmp_path):
    """Guards a mutation (audit CH): `strict_json_record` taking NaN alone passed every test; a loss gone to
    infinity then stopped the run in metrics.jsonl's writer (strict JSON has no Infinity)."""
    import json

    from train.run_log import METRICS_FILE, MetricsLog

    log = MetricsLog(tmp_path, _config(tmp_path), is_main=True, resume_step=0)
    log.write({"step": 1, "loss": float("inf"), "lr": 0.1})
    log.close()
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == {"step": 1, "loss": None, "lr": 0.1,
                                                                  "nonfinite": {"loss": "inf"}}


def test_report_to_all_names_every_missing_logger_package_at_once(tmp_path, monkeypatch):
    """was: `--report-to all` without either package named tensorboard alone; installed, the next
    try stopped on wandb."""
    from augment.errors import MissingDependencyError
    from train.run_log import require_logging_packages

    for module in ("torch.utils.tensorboard", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)  # an import of it raises ImportError
    with pytest.raises(MissingDependencyError) as caught:
        require_logging_packages(_config(tmp_path, report_to="all"))
    assert str(caught.value) == ("--report-to tensorboard needs the tensorboard package and --report-to wandb needs "
                                 "the wandb package: pip install tensorboard wandb (or mat-plus's logging extra: "
                                 "pip install 'mat-plus[logging]')")
    with pytest.raises(MissingDependencyError, match=r"^--report-to wandb needs the wandb package: pip install wandb "):
        require_logging_packages(_config(tmp_path, report_to="wandb"))


def test_a_missing_logger_names_the_extra_as_pip_spells_it(tmp_path, monkeypatch):
    """was: "pip install tensorboard (the logging extra)": a user who installed mat-plus from a wheel or a
    git URL was not told how to ask pip for that extra; `pip install 'mat-plus[logging]'` installs its
    packages beside an installed mat-plus (the name and extra are pyproject.toml's)."""
    from augment.errors import MissingDependencyError
    from train.run_log import require_logging_packages

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()  # tomllib: Python 3.11+
    assert '\nname = "mat-plus"\n' in pyproject
    assert re.search(r'^logging = \[.*"tensorboard[>=<"].*"wandb[>=<"]', pyproject, re.MULTILINE)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingDependencyError) as caught:
        require_logging_packages(_config(tmp_path, report_to="tensorboard"))
    assert str(caught.value) == ("--report-to tensorboard needs the tensorboard package: pip install tensorboard "
                                 "(or mat-plus's logging extra: pip install 'mat-plus[logging]')")


@pytest.mark.parametrize("report_to", ["none,tensorboard", "all,none", "tensorboard,all"])
def test_none_or_all_in_a_list_is_refused_not_half_taken(tmp_path, report_to):
    """`--report-to none,tensorboard` logged to TensorBoard, `all,none` everywhere: a contradiction,
    taken silently (audit AA's left finding L6). A list of targets, and repeats, still pass."""
    from train.config import ConfigError

    alone = "none" if report_to.startswith("none") or report_to.endswith("none") else "all"
    with pytest.raises(ConfigError, match=rf"--report-to '{report_to}': {alone} stands alone"):
        _config(tmp_path, report_to=report_to)
    assert _config(tmp_path, report_to="tensorboard,wandb").report_to == "tensorboard,wandb"
    assert _config(tmp_path, report_to="none,none").report_to == "none,none"


def test_a_study_runs_validation_scores_reach_its_loggers(tmp_path, monkeypatch, sample_world_dir):
    """was: `analysis study` with `validation:` and `train: {report_to: tensorboard}` logged the training
    losses to TensorBoard but never its validation scores (the study's validator had no logger; only
    --val-frequency's reached them), and its last validation ran after the trainer had closed them."""
    from analysis.study import train_resumable
    from augment.sources import load_source
    from train.validation import ValidationSettings, Validator

    logged, closed = [], []

    class SummaryWriter:  # records what TensorBoard would be given, and refuses anything after close
        def __init__(self, log_dir, purge_step=None):
            pass

        def add_scalar(self, name, value, step):
            assert not closed, f"{name} at step {step} after close"
            logged.append((name, step))

        def close(self):
            closed.append(True)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    source, _ = load_source(str(sample_world_dir))
    folder = tmp_path / "run"
    validator = Validator(folder, source, ValidationSettings(every=1, attack="clean", limit=4, batch_size=4,
                                                             captions_per_image=1, captions="all"))
    summary = train_resumable(folder, dict(method="clean", model="tiny-clip", train_data=str(sample_world_dir),
                                           max_steps=2, batch_size=8, workers=0, seed=1, report_to="tensorboard"),
                              validator, log=lambda _: None)
    assert sorted({step for name, step in logged if name == "val/robust_r1"}) == [0, 1, 2]
    assert [line["step"] for line in validator.records()] == [0, 1, 2]
    assert summary["validation"]["last"]["step"] == 2  # the run's summary has its validation too


def test_a_tensorboard_write_failing_mid_run_is_one_line_naming_the_event_file(tmp_path, monkeypatch):
    """was: a disk filling during a run made TensorBoard's writer thread print its traceback ("Exception in
    thread ...") beside the run, then the next write raised the error naming the event file as bytes."""
    import errno
    import os
    import threading

    from train.run_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLog

    run = tmp_path / "run"
    event_file = run / TENSORBOARD_DIR / "events.out.tfevents.1.host"

    class _AsyncWriterThread(threading.Thread):  # TensorBoard's writer thread, by name
        pass

    class SummaryWriter:
        """As TensorBoard's: events are written by a thread, whose OSError is raised there (threading's hook
        prints it) and again in the caller at the next write (the file named as bytes)."""

        def __init__(self, log_dir, purge_step=None):
            self.failed, self.calls = [], 0

        def add_scalar(self, name, value, step):
            if self.failed:
                raise self.failed[0]
            self.calls += 1
            if self.calls == 1:  # the disk fills: the thread's write fails (the caller goes on)
                def write():
                    self.failed.append(OSError(errno.ENOSPC, "No space left on device", os.fsencode(event_file)))
                    raise self.failed[0]

                thread = _AsyncWriterThread(target=write)
                thread.start()
                thread.join()

        def close(self):
            if self.failed:
                raise self.failed[0]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    printed = []
    monkeypatch.setattr(threading, "excepthook", printed.append)
    log = MetricsLog(run, _config(tmp_path, report_to="tensorboard"), is_main=True, resume_step=0)
    log.write({"step": 1, "loss": 1.0})
    with pytest.raises(OSError) as caught:
        log.write({"step": 2, "loss": 0.5})
    assert caught.value.filename == str(event_file) and caught.value.errno == errno.ENOSPC
    assert printed == []  # no traceback of TensorBoard's thread beside the run's one line
    assert (run / METRICS_FILE).read_text().count("\n") == 2  # metrics.jsonl keeps both steps
    with pytest.raises(OSError, match="No space left") as caught:
        log.close()
    assert caught.value.filename == str(event_file)
    assert threading.excepthook == printed.append  # the run's hook removed with its logger

    def other():
        raise OSError("not TensorBoard's")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(printed) == 1  # another thread's error is still shown


class _ClosingWriter:
    """A stand-in TensorBoard writer that counts its closes."""

    closed = 0

    def __init__(self, log_dir, purge_step=None):
        pass

    def add_scalar(self, name, value, step):
        pass

    def close(self):
        _ClosingWriter.closed += 1


def test_the_writer_thread_hook_is_taken_out_however_tensorboard_loggers_end(tmp_path, monkeypatch):
    """was: the hook hiding TensorBoard's writer thread errors stayed in the process for good after a run that
    failed (only a finished run closed its logger), after a logger whose W&B could not start, and after two
    loggers closed in the order they were opened (each put back the hook it found: the first's)."""
    import threading

    from train.run_log import MetricsLog
    from train.trainer import Trainer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_ClosingWriter))
    monkeypatch.setattr(_ClosingWriter, "closed", 0)
    monkeypatch.setattr(threading, "excepthook", own := lambda args: None)
    first = MetricsLog(tmp_path / "a", _config(tmp_path, report_to="tensorboard"), is_main=True, resume_step=0)
    second = MetricsLog(tmp_path / "b", _config(tmp_path, report_to="tensorboard"), is_main=True, resume_step=0)
    assert threading.excepthook is not own
    first.close()
    second.close()
    assert threading.excepthook is own

    def init(**kw):
        raise module.errors.UsageError("No API key configured.")

    module = _fake_wandb(monkeypatch, init)
    with pytest.raises(MatPlusError):
        MetricsLog(tmp_path / "c", _config(tmp_path, report_to="tensorboard,wandb"), is_main=True, resume_step=0)
    assert threading.excepthook is own and _ClosingWriter.closed == 3

    def interrupted(self):  # a run stopped by Ctrl-C (or failing) after its loggers started
        self.metrics = MetricsLog(tmp_path / "d", _config(tmp_path, report_to="tensorboard"), is_main=True,
                                  resume_step=0)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tmp_path)).run()
    assert threading.excepthook is own and _ClosingWriter.closed == 4  # the failed run's events flushed too
