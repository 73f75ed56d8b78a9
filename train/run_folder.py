"""The run folder RUN (`train METHOD --out RUN`): what a training writes there (and so what
--overwrite may delete), the lock that keeps one trainer in it, and the check of RUN against
--resume / --overwrite that every process makes before anything is written."""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from train import checkpoint as ckpt
from train.config import CONFIG_FILE, ConfigError, TrainConfig, load_saved_config, resume_conflicts
from train.run_log import METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR, WANDB_ID_FILE
from train.validation import BEST_DIR, BEST_OLD, BEST_PARTIAL, VALIDATION_FILE

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
# what --overwrite may delete in RUN (never anything else the user keeps there)
RUN_OUTPUTS = (ckpt.CKPT_DIR, ckpt.PARTIAL_DIR, ckpt.OLD_DIR, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR, CONFIG_FILE,
               WANDB_ID_FILE, WANDB_DIR,
               # train.validation's (--val-frequency): the curve, the best weights and a kill's leftovers of them
               VALIDATION_FILE, BEST_DIR, BEST_PARTIAL, BEST_OLD)
# held (flock) by the one training writing into RUN (`lock_run_folder`); left out of RUN_OUTPUTS so that
# --overwrite never deletes it while it is held, and named apart from `train eval`'s OUT/.lock so that
# an evaluation writing its report into a run folder is not taken for a second trainer
LOCK_FILE = ".train.lock"


def lock_run_folder(run_dir: Path, is_main: bool, world_size: int) -> contextlib.ExitStack:
    """The main process locks RUN (RUN/.train.lock, `augment.atomic.sole_writer_of_processes`) until the
    returned stack is closed: two trainers in one RUN (a second `--resume latest` while the first still
    runs) would share RUN/.ckpt-partial and interleave metrics.jsonl. Taken before `check_run_folder`
    reads anything, so the second is refused before it touches RUN. The processes of one run are one
    trainer: the main one's answer is shared, so every process is refused alike (ConfigError)."""
    from augment.atomic import sole_writer_of_processes

    return sole_writer_of_processes(run_dir, LOCK_FILE, "another train is writing here (or an analysis study is "
                                    "evaluating this run); wait for it to finish, "
                                    "or choose another --out", is_main, world_size, ConfigError)


def check_run_folder(run_dir: Path, config: TrainConfig) -> Path | None:
    """Check RUN against --resume / --overwrite; return the checkpoint to resume from, if any.

    Only reads: every process runs it before any process writes, so all fail alike.
    """
    has_outputs = any((run_dir / name).exists() for name in RUN_OUTPUTS)
    if config.resume:
        if config.resume == "latest":  # open_clip's spelling: the newest checkpoint of this run
            found = ckpt.find_checkpoint(run_dir)
            unresumable = ckpt.unresumable_reason(ckpt.checkpoint_dir(run_dir)) if found is None else None
            if unresumable:  # was: "no checkpoint yet", then trained from step 0 over those weights
                raise ConfigError(f"--resume latest: {unresumable} (start again with --overwrite instead of --resume, "
                                  f"train on from its weights with --model {ckpt.checkpoint_dir(run_dir)} and another "
                                  "--out, or use another --out)")
            if found is None:
                if has_outputs:  # a run killed before its first checkpoint, or another run: replaced only if the same
                    saved = load_saved_config(run_dir)
                    conflicts = resume_conflicts(saved, config) if saved is not None else ["config.yaml missing"]
                    if conflicts:
                        raise ConfigError(f"--resume latest: settings differ from the run in {run_dir}, which has no "
                                          f"checkpoint to resume: {conflicts}; pass --overwrite (without --resume) to "
                                          "replace it, or another --out")
                log.warning("--resume latest: %s has no checkpoint yet; starting from step 0", run_dir)
                return None
            made_by = run_dir
        else:  # a checkpoint folder (RUN/ckpt of this or another run)
            found = Path(config.resume)
            if not (found / ckpt.STATE_DIR / ckpt.STATE_FILE).is_file():
                unresumable = ckpt.unresumable_reason(found)
                if unresumable and "weights" in unresumable:
                    raise ConfigError(f"--resume: {unresumable} (to train on from its weights: --model {found})")
                raise ConfigError(f"--resume {found}: not a checkpoint folder (no {ckpt.STATE_DIR}/{ckpt.STATE_FILE})")
            made_by = found.parent
            if has_outputs and made_by.resolve() != run_dir.resolve() and not config.overwrite:
                # the resumed run writes its checkpoint, metrics and summary here: they would replace this run's
                raise ConfigError(f"--resume {found}: {run_dir} already holds another run; pass --overwrite to "
                                  "replace it, or another --out")
        saved = load_saved_config(made_by)
        if saved is not None:
            conflicts = resume_conflicts(saved, config)
            if conflicts:
                raise ConfigError(f"--resume: settings differ from the run in {made_by}: {conflicts}")
        return found
    if has_outputs and not config.overwrite:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume latest to continue it or --overwrite to start over")
    return None


def clear_run_outputs(run_dir: Path) -> None:
    """--overwrite: delete what an earlier run wrote in RUN (`RUN_OUTPUTS`), nothing else."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
