"""A training run's metrics record: RUN/metrics.jsonl, plus TensorBoard / W&B when `--report-to`
asks for them (their packages imported only then, and checked before training starts)."""
from __future__ import annotations

import contextlib
import json
import math
import threading
from pathlib import Path

from augment.atomic import atomic_write_text, naming_write_errors
from augment.errors import MatPlusError, MissingDependencyError
from train.config import TrainConfig, report_targets

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B's own files of the run (`wandb.init(dir=RUN)`): offline runs to sync, logs
WANDB_ID_FILE = "wandb_run_id.txt"  # the run's W&B id, so a resumed run logs to the same W&B run (no key or token)


def require_logging_packages(config: TrainConfig) -> None:
    """Fail before training when --report-to names a logger whose package is missing (imported lazily);
    every missing one is named at once (`--report-to all` named tensorboard, then, once installed, wandb)."""
    missing = []
    for target in sorted(report_targets(config)):
        try:
            if target == "tensorboard":
                import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
            else:
                import wandb  # noqa: F401
        except ImportError:
            missing.append(target)
    if missing:
        needs = " and ".join(f"--report-to {name} needs the {name} package" for name in missing)
        raise MissingDependencyError(f"{needs}: pip install {' '.join(missing)} "
                                     "(or mat-plus's logging extra: pip install 'mat-plus[logging]')")


def _check_writable(folder: Path) -> None:
    """Create `folder` and write a file in it, so that a folder that cannot be written is one line naming
    it: TensorBoard's writer writes from a thread of its own, whose failure printed that thread's traceback
    beside the run's error line (which named the event file as bytes, `b'RUN/tensorboard/events...'`)."""
    probe = folder / ".write-check"
    with naming_write_errors(folder, probe):
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()


class _QuietWriterThreads:
    """threading.excepthook while TensorBoard logs: its writer thread's OSError is not printed as a traceback
    there (it comes back in the run's thread at the writer's next write or close, which `naming_write_errors`
    turns into one line naming the event file); anything else is. One hook
    for every open TensorBoard logger of the process: put in by the first opened, taken out by the last closed,
    in whatever order they close (each took out its own before: two closed in their opening order left the
    first's in place for good), and left alone when something else has replaced it since."""

    _lock = threading.Lock()
    _holders = 0
    _previous = None

    @staticmethod
    def _hook(args) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        (_QuietWriterThreads._previous or threading.__excepthook__)(args)

    @classmethod
    def hold(cls) -> None:
        with cls._lock:
            if threading.excepthook is not cls._hook:
                cls._previous, threading.excepthook = threading.excepthook, cls._hook
            cls._holders += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._holders = max(0, cls._holders - 1)
            if not cls._holders and threading.excepthook is cls._hook:
                threading.excepthook, cls._previous = cls._previous, None


def strict_json_record(record: dict) -> dict:
    """`record` with each NaN or infinite number as null, named with its value in "nonfinite"
    ({"loss": "nan"}): Python's json writes a bare NaN, which strict JSON readers (jq, JavaScript,
    most JSON Lines tools) refuse, and a diverged run's last line has one."""
    nonfinite = {k: str(v) for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if not nonfinite:
        return record
    return {**{k: None if k in nonfinite else v for k, v in record.items()}, "nonfinite": nonfinite}


class MetricsLog:
    """RUN/metrics.jsonl on the main process, plus TensorBoard / W&B when asked for.

    Not accelerate's trackers: metrics.jsonl is the run's own record, kept without any logger
    installed and cut back to the resumed step when a run resumes."""

    def __init__(self, run_dir: Path, config: TrainConfig, is_main: bool, resume_step: int):
        self.path = run_dir / METRICS_FILE
        self.is_main = is_main
        self.tensorboard = self.wandb = None
        self._quiet_threads = False  # TensorBoard open: `_QuietWriterThreads`' hook held (till `close` / `abandon`)
        # the last line kept from before a resume: a run killed after its final checkpoint but before
        # summary.json resumes with no step left to run, and its summary's losses are this line's
        self.last_kept: dict = {}
        if not is_main:
            return
        require_logging_packages(config)
        targets = report_targets(config)
        folder = run_dir / TENSORBOARD_DIR
        resumed_folder = folder.exists()
        if "tensorboard" in targets:  # before anything in RUN is changed
            _check_writable(folder)
        kept = self._truncate_after(resume_step)
        self.last_kept = kept[-1] if kept else {}
        try:
            self._start_loggers(targets, config, run_dir, folder, resumed_folder, resume_step, kept)
        except BaseException:  # TensorBoard's writer closed, its thread hook taken out (W&B could not start, ...)
            self.abandon()
            raise

    def _start_loggers(self, targets, config: TrainConfig, run_dir: Path, folder: Path, resumed_folder: bool,
                       resume_step: int, kept: list[dict]) -> None:
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run redoes the steps after its checkpoint: TensorBoard drops the killed run's events
            # from `resume_step` on (purge_step), and the kept line of that step is logged again
            _QuietWriterThreads.hold()
            self._quiet_threads = True
            self.tensorboard_folder = folder
            with naming_write_errors(folder):
                self.tensorboard = SummaryWriter(str(folder), purge_step=resume_step if resumed_folder else None)
            for record in kept:
                if record.get("step") == resume_step:  # (to TensorBoard alone: W&B, started below, keeps its steps)
                    self._to_loggers(resume_step, self._scalars(record))
        if "wandb" in targets:
            import wandb

            try:
                # the run's settings as config.yaml keeps them: how this start was asked for (--resume,
                # --overwrite) is no setting of the run, and a resumed run's config said resume: latest
                settings = {**config.to_dict(), "resume": None, "overwrite": False}
                self.wandb = wandb.init(project=config.wandb_project_name, name=run_dir.name, dir=str(run_dir),
                                        config=settings, id=self._wandb_id(run_dir, resume_step), resume="allow")
            except wandb.errors.Error as exc:  # not logged in, no network: wandb's own words, without its traceback
                raise MatPlusError(f"--report-to wandb: W&B could not start the run: {exc} (or log offline "
                                   "into RUN/wandb with WANDB_MODE=offline)") from None

    @staticmethod
    def _wandb_id(run_dir: Path, resume_step: int) -> str:
        """One W&B run per run folder: its id is kept in RUN (a run started over gets a new one)."""
        import secrets

        path = run_dir / WANDB_ID_FILE
        if resume_step > 0 and path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        run_id = secrets.token_hex(8)
        atomic_write_text(path, run_id + "\n")
        return run_id

    def _truncate_after(self, step: int) -> list[dict]:
        """Drop lines a killed run logged after its last checkpoint (they are replayed), and an
        incomplete last line (a kill during its append); the lines kept."""
        from train.jsonl import read_jsonl

        if not self.path.exists():
            return []
        kept = [record for record in read_jsonl(self.path) if record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))
        return kept

    @staticmethod
    def _scalars(record: dict) -> dict:
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step" and v is not None}
        scalars.update({f"pool_draws/{k}": v for k, v in record.get("pool_draws", {}).items()})
        return scalars

    def write(self, record: dict) -> None:
        if not self.is_main:
            return
        record = strict_json_record(record)
        with naming_write_errors(self.path), open(self.path, "a", encoding="utf-8") as handle:  # a full disk names it
            handle.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._to_loggers(record["step"], self._scalars(record))

    def report(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars for the loggers only (TensorBoard / W&B): validation, whose lines are in
        validation.jsonl, reaches them under open_clip_train's `val/` prefix."""
        self._to_loggers(step, scalars)

    def _to_loggers(self, step: int, scalars: dict[str, float]) -> None:
        if self.tensorboard is not None:
            with naming_write_errors(self.tensorboard_folder):  # a full disk: the event file named, as text
                for name, value in scalars.items():
                    self.tensorboard.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            try:
                with naming_write_errors(self.tensorboard_folder):
                    self.tensorboard.close()
            finally:
                self._release_quiet_threads()
        if self.wandb is not None:
            self.wandb.finish()

    def abandon(self) -> None:
        """After a run failed (or this log could not start): TensorBoard's writer closed (the events so far kept)
        and the thread hook taken out, as `close` does, without raising (the run's error is the one to tell).
        W&B is left to its own exit handling. Nothing once closed."""
        if self.tensorboard is not None and self._quiet_threads:  # (not closed yet)
            with contextlib.suppress(Exception):
                self.tensorboard.close()
        self._release_quiet_threads()

    def _release_quiet_threads(self) -> None:
        if self._quiet_threads:
            self._quiet_threads = False
            _QuietWriterThreads.release()
