"""The training loop shared by every method (clean, TeCoA, FARE, MAT, MAT+), task and model family.

`train_run(config)` is the whole run (the `train` command calls it; a study driver may call it
in-process, once per process under `accelerate launch`/`torchrun`). The model comes from
`models.load_model` (any family), the losses from the task (`tasks/`, `--task`), and each method
(`train.methods`) turns one batch into a loss, running its attacks (from `train.attacks`) first.
Nothing here knows a model family: parameters, towers, the after-step hook (temperature clamp,
momentum encoders) and saving are the model's; losses and attack losses are the task's.

`clean_loss` is logged for every method (computed without gradient when it is not trained on),
`robust_loss` for the adversarial ones.

Determinism: each micro step reseeds the torch / NumPy / Python RNGs and the PGD start from
(seed, micro step, process), and the data plan depends on (seed, micro step) only, so a resumed
run continues exactly as the uninterrupted one would have. Batches are decoded by a
`torch.utils.data.DataLoader` (`--workers`, pinned memory on CUDA, prefetch, persistent
workers); every image's augmentation is seeded from (seed, epoch, slot), never from the worker,
so any number of workers gives the same batches.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from augment.atomic import atomic_write_text
from augment.errors import MatPlusError, first_line
from augment.json_records import DamagedRecord, read_json_object
from augment.loading import raise_worker_death
from train import checkpoint as ckpt
from train.config import (
    ACCELERATE_PRECISION,
    ConfigError,
    TrainConfig,
    resolve_config,
    save_config,
)
from train.data import (
    ORIGINAL,
    Batch,
    BatchPlan,
    MicroBatches,
    TrainData,
    POOL_MADE_AGAIN,
    check_same_data_on_every_process,
    described_pool,
    derive_seed,
    load_train_data,
    AFTER_WORKER_DEATH,
    micro_batches,
)
from train.launch import main_process_logs
from train.methods import METHODS, StepContext, StepOutput
from train.run_folder import SUMMARY_FILE, check_run_folder, clear_run_outputs, lock_run_folder
from train.run_log import METRICS_FILE, MetricsLog, require_logging_packages

log = logging.getLogger(__name__)

def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier of (0-based) step s: linear warm-up, then cosine decay to 0 at `total_steps`.

    open_clip_train's `cosine_lr` (the same values, tested), as a multiplier for torch's `LambdaLR`:
    that one sets the optimizer's lr itself and keeps no state to checkpoint; transformers'
    cosine schedule warms up from 0, one step behind open_clip's."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------- the run


@dataclass
class StepRecord:
    """Handed to `callbacks` after every micro step (tests use it to check the attacks)."""

    step: int  # optimizer step (0-based)
    micro_step: int
    plan: BatchPlan
    batch: Batch
    output: StepOutput


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from train.launch import check_launch_environment, check_process_group

    plan = check_launch_environment(config.cpu)  # torchrun/accelerate on a CPU: gloo, or one line
    if not plan.distributed:
        # accelerate keeps one global state per process; an in-process caller (a study driver,
        # the tests) may run several trainings with different precisions one after the other
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=plan.cpu, mixed_precision=ACCELERATE_PRECISION[config.precision])
        check_process_group(plan, accelerator.num_processes)
    except ValueError as exc:  # e.g. fp16 on a CPU
        raise ConfigError(f"--precision {config.precision}: {first_line(exc)}") from None
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":
        # accelerate runs no fp16 autocast on a CPU: the run would train in fp32 and record amp
        raise ConfigError(f"--precision {config.precision} (fp16 autocast) runs on a GPU; on a CPU use amp_bf16 or fp32")
    return accelerator


def model_options(config: TrainConfig) -> dict:
    """Family-specific loading options the config sets (only the ones given)."""
    options = {"config": config.albef_config, "bert_config": config.albef_bert_config, "tokenizer": config.albef_tokenizer,
               "prompt": config.prompt}
    return {key: value for key, value in options.items() if value is not None}


def _seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators. Not accelerate's set_seed: it refuses the 63-bit
    seeds of the per-step draws (NumPy takes seeds below 2**32, hence the modulo)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """One training run; `run()` returns the summary dict (also written to RUN/summary.json)."""

    def __init__(self, config: TrainConfig, callbacks: Iterable[Callable[[StepRecord], None]] = (),
                 validator=None):
        """`validator`: a `train.validation.Validator` made by the caller (the study's), run as --val-frequency's
        is: every K steps, after the last one, its scores to this run's loggers and summary."""
        if validator is not None and config.val_frequency:
            raise ValueError("a run is validated either by --val-frequency or by a given validator, not both")
        self.cfg = config
        self.callbacks = list(callbacks)
        self.given_validator = validator
        self.run_dir = Path(config.out)
        self.step_data_seconds = 0.0  # of the latest optimizer step: waiting for its batches

    # set-up -------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the first step: checks, data, model, optimizer, RUN/config.yaml (all but the
        checks skipped when the run resumed is finished: `finished_summary`)."""
        cfg = self.cfg
        self.accelerator = make_accelerator(cfg)
        if cfg.precision == "tf32" and self.accelerator.device.type != "cuda":  # no TF32 products there: plain fp32
            cfg.run_derived = {**getattr(cfg, "run_derived", {}), "precision": "fp32"}  # config.yaml's derived: says so
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.run_lock = lock_run_folder(self.run_dir, self.is_main, self.world_size)
        with main_process_logs(self.is_main):  # the same folder and data on every process: their warnings once
            resume_from = check_run_folder(self.run_dir, cfg)
            require_logging_packages(cfg)
            self.data: TrainData = load_train_data(cfg, progress=self.is_main and cfg.progress,
                                                   report_skipped=self.is_main)
        check_same_data_on_every_process(self.data, self.world_size)
        self._plan_steps()
        # --val-frequency: its source, split and masked LM are checked (and loaded) before RUN is
        # written; a wrong --val-split used to stop the run at its first validation (step 0), after RUN was written
        self.validation_record: dict | None = None  # what the validation lines are measured under
        if self.given_validator is not None:
            self.validation_record = self.given_validator.settings_record()
            self.validator = self.given_validator.attach(self) if self.is_main else None
            if self.validator is not None and self.validator not in self.callbacks:
                self.callbacks.append(self.validator)
        else:
            self.validator = self._make_validator() if cfg.val_frequency else None

        _seed_everything(cfg.seed)
        with main_process_logs(self.is_main):
            model, frozen = self._build_task_and_model(resuming=resume_from is not None)
        from train.attacks.captioning import PROMPT_ATTACKS

        if cfg.val_frequency and cfg.task == "captioning" and cfg.val_attack in PROMPT_ATTACKS \
                and not getattr(model, "prompt", None):  # it would stop the run at its first validation
            raise ConfigError(f"--val-attack {cfg.val_attack} attacks the captioner's prompt; {cfg.model} has none: "
                              "pass --prompt TEXT, or choose another --val-attack")
        self.start_step, self.draws_total, self.elapsed_before = 0, Counter(), 0.0
        self.finished_summary: dict | None = None
        self.holds_final_checkpoint = False  # RUN/ckpt is already this run's last step (nothing to save again)
        state = None
        if resume_from is not None:
            state = ckpt.read_state(resume_from)
            self._check_resumable(state)
            this_run = resume_from.parent.resolve() == self.run_dir.resolve()  # not another run's checkpoint
            if this_run:
                self._check_validation_resume(int(state["step"]))
            summary_file = self.run_dir / SUMMARY_FILE
            if int(state["step"]) == self.total_steps and this_run and summary_file.is_file():
                # this run is finished: nothing to train, and nothing of it is written again
                self.finished_summary = _read_finished_summary(summary_file)
                return
            if int(state["step"]) < self.total_steps:  # steps left to train: trained as the run's earlier steps were?
                problem = ckpt.training_format_problem(resume_from, state, cfg, model, self.validation_record)
                if problem is not None:
                    raise ConfigError(problem)
            # killed after its final checkpoint, before summary.json: saving those weights again wrote GBs at real size.
            # Only when the resumed folder IS RUN/ckpt: a copy elsewhere in RUN (RUN/backup) left RUN/ckpt unwritten
            self.holds_final_checkpoint = (int(state["step"]) == self.total_steps
                                           and resume_from.resolve() == ckpt.checkpoint_dir(self.run_dir).resolve())
            ckpt.load_model_weights(model, resume_from)
        self._set_trainable(model)
        model.train()
        self._build_optimizer(model)
        if resume_from is not None:
            self._resume_training_state(resume_from, state)
        if frozen is not None:
            frozen.to(self.accelerator.device)

        self.context = StepContext(
            forward=self.forward_module,
            model=model,
            task=self.task,
            config=cfg,
            pgd_generator=torch.Generator(device="cpu"),
            frozen=frozen,
            data=self.data,
        )
        self.method = METHODS[cfg.method](self.context)
        self._write_run_dir()

    def release_run_dir(self) -> None:
        """Let the next trainer into RUN (the end of `run`, whether it finished or failed)."""
        held = getattr(self, "run_lock", None)
        if held is not None:
            self.run_lock = None
            held.close()

    def _plan_steps(self) -> None:
        """Optimizer steps per epoch, in all and of the LR schedule, from the data and the global batch."""
        cfg = self.cfg
        self.global_batch = cfg.batch_size * self.world_size
        micro_per_epoch = self.data.micro_steps_per_epoch(self.global_batch)
        self.steps_per_epoch = micro_per_epoch // cfg.grad_accum
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the train split has {self.data.num_entries} entries: less than one optimizer step of "
                f"{cfg.grad_accum} x {self.global_batch}; lower --batch-size or --grad-accum")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.schedule_steps = cfg.schedule_steps or self.total_steps

    def _build_task_and_model(self, resuming: bool = False):
        """(model, FARE's frozen copy or None): the task checked against the method and the model,
        the momentum encoders built where the family has them."""
        from models import load_model
        from tasks import build_task, task_class

        cfg = self.cfg
        self.task = task = build_task(cfg.task, rank=self.rank, world_size=self.world_size,
                                      **task_class(cfg.task).options_from_config(cfg))
        try:
            task.check_method(cfg.method)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        task.prepare_training(self.data, cfg.method)
        model = load_model(cfg.model, cfg.pretrained, device="cpu", **model_options(cfg))
        try:
            task.check_model(model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        frozen = None
        if cfg.method == "fare":  # FARE's target: the model as it was before any fine-tuning
            frozen = model.frozen_copy()
        if getattr(model, "supports_momentum_distillation", False):
            # before resuming weights (a checkpoint holds the momentum encoders and queues it builds),
            # the optimizer and DDP: the momentum copies are trained state
            distill = cfg.method == "clean" if cfg.momentum_distillation is None else cfg.momentum_distillation
            model.set_momentum_distillation(bool(distill))
            if cfg.momentum_distillation is None:  # config.yaml's derived: section says which it was (it said null only)
                cfg.run_derived = {**getattr(cfg, "run_derived", {}), "momentum_distillation": bool(distill)}
        elif cfg.momentum_distillation is not None and not (resuming and cfg.momentum_distillation is False):
            # --no-momentum-distillation too: recorded, read by nothing. A run saved before 2026-12-06 with it
            # resumes (its config.yaml says false, which a resume must match)
            flag = "--momentum-distillation" if cfg.momentum_distillation else "--no-momentum-distillation"
            raise ConfigError(f"{flag}: {model.family} models have no momentum encoders (ALBEF and TCL have): leave it out")
        return model, frozen

    def _set_trainable(self, model) -> None:
        """Which parameters train: FARE the image tower only, else all but the locked towers;
        gradient checkpointing where asked."""
        cfg = self.cfg
        if cfg.method == "fare":  # FARE's loss reaches the image tower only
            image_tower = {id(p) for p in model.tower_parameters("image")}
            for param in model.parameters():
                param.requires_grad_(id(param) in image_tower)
        else:
            for tower, locked in (("image", cfg.lock_image), ("text", cfg.lock_text)):
                if locked:
                    for param in model.tower_parameters(tower):
                        param.requires_grad_(False)
        if cfg.grad_checkpointing:
            try:
                model.set_grad_checkpointing(True)
            except NotImplementedError as exc:
                raise ConfigError(f"--grad-checkpointing: {exc}") from None

    def _build_optimizer(self, model) -> None:
        """AdamW (open_clip_train's betas), the warm-up cosine schedule, and accelerate's wrapping."""
        from tasks.base import TaskForward

        cfg = self.cfg
        optimizer = torch.optim.AdamW(model.parameter_groups(cfg.wd), lr=cfg.lr, betas=(0.9, 0.98), eps=cfg.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup, self.schedule_steps))
        self.forward_module, self.optimizer = self.accelerator.prepare(TaskForward(model, self.task), optimizer)
        self.model = model

    def _resume_training_state(self, resume_from, state: dict) -> None:
        """Optimizer, schedule, loss scaler, step and counters of the checkpoint resumed."""
        ckpt.load_training_state(resume_from, optimizer=self.optimizer, scheduler=self.scheduler,
                                 scaler=self.accelerator.scaler, rank=self.rank, saved_world_size=state.get("world_size"),
                                 world_size=self.world_size)
        self._set_scheduled_lr()
        self.start_step = int(state["step"])
        self.draws_total = Counter(state.get("draws_total", {}))
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        if self.is_main:  # one line, so a long run's restart is seen to have taken
            print(f"resuming from {resume_from} at step {self.start_step} of {self.total_steps}", file=sys.stderr)

    def _write_run_dir(self) -> None:
        """Every check passed: only now is RUN touched (cleared under --overwrite, config.yaml written)."""
        if self.is_main:
            from train.validation import tidy_best

            if self.cfg.overwrite:
                clear_run_outputs(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tidy_best(self.run_dir)  # a kill while saving the best weights: the previous ones back, partial copies gone
            save_config(self.cfg, self.run_dir)
        self.accelerator.wait_for_everyone()
        self.metrics = MetricsLog(self.run_dir, self.cfg, self.is_main, self.start_step)

    def _make_validator(self):
        """--val-frequency: the task's robust score under --val-attack every N epochs (train.validation:
        retrieval's R@1, captioning's CIDEr, grounding's accuracy), on the main process; every process
        checks the validation data, so that all stop alike."""
        from train.validation import Validator, load_validation_data, settings_record, validation_settings

        cfg = self.cfg
        source = load_validation_data(cfg, self.data.source, report_skipped=self.is_main)
        settings = validation_settings(cfg, every=cfg.val_frequency * self.steps_per_epoch)
        self.validation_record = settings_record(settings, source)
        if not self.is_main:
            return None
        from tqdm.auto import tqdm

        # one line per validation on stderr, above the progress bar
        validator = Validator(self.run_dir, source, settings, caption_checker=_world_checker(source, cfg),
                              log=lambda text: tqdm.write(text, file=sys.stderr),
                              report=lambda step, scalars: self.metrics.report(step, scalars),
                              progress=cfg.progress).attach(self)
        self.callbacks.append(validator)
        return validator

    def _check_validation_resume(self, step: int) -> None:
        """The validation lines a resume keeps were measured as this run will measure (every process
        checks, so that all stop alike: --val-frequency's settings or a given validator's, e.g. the study's);
        a validator passed among the callbacks checks its own."""
        from train.validation import check_resume, check_resume_keeps_validating

        if self.validation_record is not None:
            check_resume(self.run_dir, self.validation_record, step)
        checking = [c for c in self.callbacks if hasattr(c, "check_resume") and c is not self.validator]
        for callback in checking:
            callback.check_resume(step)
        # (a finished run trains nothing; a process other than the main one validates nothing, but checks the
        # validation settings above: it refused every resume of a validated run under torchrun)
        if self.validation_record is None and not checking and step < self.total_steps:
            check_resume_keeps_validating(self.run_dir, step)

    def _check_resumable(self, state: dict) -> None:
        step = int(state.get("step", 0))
        if step > self.total_steps:  # it would save step `total_steps` holding later weights
            raise ConfigError(f"--resume: the checkpoint is at step {step}, past this run's {self.total_steps} steps "
                              "(--max-steps / --epochs): raise them to continue it, or start over with --overwrite")
        if state.get("source_fingerprint") not in (None, self.data.fingerprint):  # None: saved before it was kept
            raise ConfigError(f"--resume: the source's rows (ids, splits, captions) differ from the ones the run trained "
                              f"on: {self.cfg.train_data} is another dataset now; resume with the run's source, or start "
                              "over with --overwrite")
        saved_pools = state.get("pools")  # None: saved before it was kept
        if isinstance(saved_pools, dict):
            # in order, not by name: the pools are config.yaml's paths in its order (a resume's settings are the
            # run's), and a pool moved in under a path (`select --out X.new`, `mv X.new X`) bears another name
            changed = [(name, was) for (name, now), was in zip(self.data.pool_identities.items(), saved_pools.values())
                       if was != now]
            if changed:
                was, now = changed[0][1], self.data.pool_identities[changed[0][0]]
                changed = [name for name, _ in changed]
                raise ConfigError(
                    f"--resume: pool {changed[0]} {POOL_MADE_AGAIN} ({described_pool(was)}; now {described_pool(now)}): "
                    "it was made again since; resume with the "
                    "run's pool, or start over with --overwrite")
        if state.get("global_batch") != self.global_batch:
            raise ConfigError(
                f"--resume: the run used a global batch of {state.get('global_batch')}, now "
                f"{self.cfg.batch_size} x {self.world_size} processes = {self.global_batch}; "
                "keep batch size x processes the same")
        if state.get("schedule_steps") not in (None, self.schedule_steps):
            log.warning("--resume: the LR schedule now spans %d steps (the run planned %s), from step %d on; "
                        "the result will differ from an uninterrupted run", self.schedule_steps, state["schedule_steps"],
                        step)

    def _set_scheduled_lr(self) -> None:
        """After a resume, the lr of the coming step from this run's schedule: the optimizer state
        holds the lr the checkpoint's schedule set, which a resume with another --max-steps /
        --schedule-steps would otherwise use for one step. With the same schedule this is the same
        value (LambdaLR's own formula), so an exact resume stays exact."""
        scheduler = self.scheduler
        rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate

    # the loop -----------------------------------------------------------------------------------

    def _seed_micro_step(self, micro_step: int) -> None:
        seed = derive_seed(self.cfg.seed, "step", micro_step, self.rank)
        _seed_everything(seed)
        self.context.pgd_generator.manual_seed(derive_seed(self.cfg.seed, "pgd", micro_step, self.rank))

    def batches(self, first_step: int | None = None):
        """(plan, batch) of every micro step from `first_step` (default: where the run starts) to the end,
        decoded by a DataLoader (`--workers`)."""
        cfg = self.cfg
        first = (self.start_step if first_step is None else first_step) * cfg.grad_accum
        dataset = MicroBatches(self.data, self.global_batch, self.rank, cfg.batch_size, self.task.train_transform(self.model))
        pin = self.accelerator.device.type == "cuda"
        return micro_batches(dataset, first, self.total_steps * cfg.grad_accum, cfg.workers, pin)

    def _next_batch(self, micro_step: int) -> tuple[BatchPlan, Batch]:
        if getattr(self, "_loader", None) is None or self._loader_next != micro_step:
            self._loader = self.batches(micro_step // self.cfg.grad_accum)
            self._loader_next = micro_step - micro_step % self.cfg.grad_accum
            while self._loader_next < micro_step:  # only when a caller starts mid-step
                next(self._loader)
                self._loader_next += 1
        plan, batch = next(self._loader)
        self._loader_next += 1
        return plan, batch

    def stop_loader(self) -> None:
        """Stop the DataLoader's workers (the next step starts a new loader where it is needed)."""
        self._loader = None

    def _micro_step(self, step: int, micro: int, sync: bool) -> tuple[StepOutput, BatchPlan]:
        acc, cfg = self.accelerator, self.cfg
        micro_step = step * cfg.grad_accum + micro
        waited = time.perf_counter()
        plan, batch = self._next_batch(micro_step)
        batch.pixels = batch.pixels.to(acc.device, non_blocking=True)
        batch.keys = batch.keys.to(acc.device, non_blocking=True)
        # open_clip_train's "data time": how long the step waited for its batch (a slow data path shows here)
        self.step_data_seconds += time.perf_counter() - waited
        self._seed_micro_step(micro_step)
        self.task.on_step(self.model, step, self.steps_per_epoch)
        no_sync = contextlib.nullcontext() if sync else acc.no_sync(self.forward_module)
        with self.matmul_precision():
            with no_sync:
                with acc.autocast():
                    output = self.method(batch, step)
                acc.backward(output.loss * (output.gradient_scale / cfg.grad_accum))
            for callback in self.callbacks:  # validation: under tf32's products, outside amp's autocast (fp32)
                callback(StepRecord(step, micro_step, plan, batch, output))
        return output, plan

    def matmul_precision(self) -> contextlib.AbstractContextManager:
        """`--precision tf32`: TF32 float32 products on a GPU for the forward, backward and
        validation passes (models.half_precision.tf32_matmuls; accelerate runs no autocast then)."""
        if self.cfg.precision != "tf32":
            return contextlib.nullcontext()
        from models.half_precision import tf32_matmuls

        return tf32_matmuls(self.accelerator.device)

    def train_step(self, step: int) -> list[tuple[StepOutput, BatchPlan]]:
        """One optimizer step (all its micro steps); the set-up must have run."""
        results = []
        self.step_data_seconds = 0.0
        for micro in range(self.cfg.grad_accum):
            output, plan = self._micro_step(step, micro, sync=micro == self.cfg.grad_accum - 1)
            self.draws_total.update(plan.draws)
            results.append((output, plan))
        self._optimizer_step()
        return results

    def _optimizer_step(self) -> None:
        acc = self.accelerator
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.after_optimizer_step()  # the family's: temperature clamp, momentum encoders

    def _nonfinite_parameter(self) -> str | None:
        """The name of the first parameter holding a NaN or an infinity, or None (one host sync)."""
        params = [(name, p) for name, p in self.model.named_parameters() if p.is_floating_point()]
        if not params:
            return None
        finite = torch.stack([torch.isfinite(p).all() for _, p in params])
        if bool(finite.all()):
            return None
        return next(name for (name, _), ok in zip(params, finite.tolist()) if not ok)

    def _reduce(self, values: list[float | None]) -> list[float | None]:
        """Mean over processes (identical for gathered contrastive losses, needed for FARE)."""
        if self.world_size == 1:  # nothing to reduce: no device tensor (each log step paid a host-device round trip)
            return list(values)
        present = [v for v in values if v is not None]
        # several processes: CUDA or the CPU (MPS, which has no float64, runs one process: returned above)
        tensor = torch.tensor(present or [0.0], device=self.accelerator.device, dtype=torch.float64)
        reduced = self.accelerator.reduce(tensor, "mean").tolist()
        it = iter(reduced)
        return [next(it) if v is not None else None for v in values]

    def _save(self, step: int, elapsed: float) -> None:
        state = {
            "step": step,
            "micro_steps": step * self.cfg.grad_accum,
            "draws_total": dict(self.draws_total),
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "schedule_steps": self.schedule_steps,
            "elapsed_seconds": elapsed,
            "source_fingerprint": self.data.fingerprint,  # the rows trained on, whatever path they are read from
            "pools": self.data.pool_identities,  # ... and the pools' (`_check_resumable`)
        }
        ckpt.save_checkpoint(
            self.run_dir, model=self.model,
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.accelerator.scaler, state=state,
            rank=self.rank, is_main=self.is_main, barrier=self.accelerator.wait_for_everyone,
        )

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            metrics = getattr(self, "metrics", None)
            if metrics is not None:  # a run that failed: TensorBoard's writer closed, its thread hook taken out
                metrics.abandon()
            self.release_run_dir()

    def _run(self) -> dict:
        from augment.progress import progress_bar

        self.setup()
        if self.finished_summary is not None:
            if self.is_main:
                print(f"{self.run_dir} finished all {self.total_steps} steps already: nothing to train "
                      "(raise --max-steps / --epochs to continue it)", file=sys.stderr)
            return self.finished_summary
        cfg = self.cfg
        started = time.perf_counter()
        bar = progress_bar(total=self.total_steps, initial=self.start_step, desc=f"train {cfg.method}", unit="step",
                           disable=not (self.is_main and cfg.progress), dynamic_ncols=True)
        window = _LogWindow()
        running: dict[str, float] = {}
        last: dict[str, Any] = {}
        try:
            for step in range(self.start_step, self.total_steps):
                step_started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]  # the step's lr (the scheduler set it, or a resume did)
                for output, plan in self.train_step(step):
                    window.add(output, plan, cfg.grad_accum)
                elapsed = self.elapsed_before + time.perf_counter() - started
                window.seconds += time.perf_counter() - step_started
                window.data_seconds += self.step_data_seconds
                done = step + 1
                saving = done == self.total_steps or (cfg.save_every and done % cfg.save_every == 0)
                # a checkpoint step always closes the log window, so metrics.jsonl stays complete on resume
                if done % cfg.log_every == 0 or saving:
                    last = self._log(done, plan.epoch, lr, elapsed, window)
                    window = _LogWindow()
                    if last.get("loss") is not None and not math.isfinite(last["loss"]):
                        # stop before a checkpoint holds the diverged weights (the last one saved is kept)
                        raise MatPlusError(f"step {done}: the loss is {last['loss']}: training diverged; stopped "
                                           f"(lower --lr, or set --grad-clip-norm); metrics.jsonl has every step up to it")
                    nonfinite = self._nonfinite_parameter()
                    if nonfinite is not None:
                        # a finite loss whose gradient overflowed: its update left NaN/inf weights, which the
                        # next loss would show, after the checkpoint of this step had saved them
                        raise MatPlusError(f"step {done}: its update left {nonfinite} NaN or infinite (the step's "
                                           f"loss was {last.get('loss')}): training diverged; stopped "
                                           f"(lower --lr, or set --grad-clip-norm); metrics.jsonl has every step up to it")
                    for name in ("loss", "robust_loss"):
                        if last.get(name) is not None:  # exponential running mean for the bar
                            running[name] = last[name] if name not in running else 0.9 * running[name] + 0.1 * last[name]
                    # labelled as running means: metrics.jsonl holds each window's own values
                    postfix = {("robust_ema" if k == "robust_loss" else "loss_ema"): f"{v:.4f}"
                               for k, v in running.items()}
                    # the share of the step spent waiting for batches: high means raise --workers
                    postfix["data"] = f"{100 * last['data_seconds'] / max(last['seconds'], 1e-9):.0f}%"
                    bar.set_postfix(postfix)
                bar.update(1)
                if saving and done < self.total_steps:
                    self._save(done, elapsed)
        except KeyboardInterrupt:
            # a scheduler's SIGTERM goes to the loader's workers too: torch's SIGCHLD handler would
            # report their deaths as a traceback while the loader shuts down, under the one
            # "interrupted" line; the run is stopping, so a worker's death says nothing more
            with contextlib.suppress(ValueError, AttributeError):  # not the main thread; no SIGCHLD (Windows)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            raise
        except RuntimeError as exc:  # torch's SIGCHLD handler raises a dead worker's error wherever the loop is
            raise_worker_death(exc, AFTER_WORKER_DEATH, cfg.workers)
        finally:
            bar.close()
            self.stop_loader()
        # the final checkpoint before the last validation: a kill during that evaluation (minutes under an attack
        # at scale) resumes with no step left to train, the validation alone redone (`Validator.validate_last`)
        if not self.holds_final_checkpoint:
            self._save(self.total_steps, self.elapsed_before + time.perf_counter() - started)
        if self.validator is not None:  # the last weights (open_clip also validates after the last epoch)
            try:
                with self.matmul_precision():
                    self.validator.validate_last(self.total_steps)
            except RuntimeError as exc:  # its evaluation's decoding workers: a dead one is the loop's one line too
                raise_worker_death(exc, AFTER_WORKER_DEATH, cfg.workers)
        elapsed = self.elapsed_before + time.perf_counter() - started
        summary = self._summary(last or self.metrics.last_kept, elapsed)
        self.metrics.close()
        if self.is_main:
            atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
            print(_summary_line(summary))
        return summary

    def _log(self, step: int, epoch: int, lr: float, elapsed: float, window: "_LogWindow") -> dict:
        loss, clean, robust = self._reduce([window.mean("loss"), window.mean("clean_loss"), window.mean("robust_loss")])
        record = {
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "clean_loss": clean,
            "robust_loss": robust,
            "lr": lr,
            "seconds": window.seconds / max(1, window.steps),
            "data_seconds": window.data_seconds / max(1, window.steps),
            "elapsed": elapsed,
            "pool_draws": dict(window.draws),
        }
        self.metrics.write(record)
        return record

    def _summary(self, last: dict, elapsed: float) -> dict:
        cfg = self.cfg
        return {
            "method": cfg.method,
            "task": cfg.task,
            "model": cfg.model,
            "family": self.model.family,
            "pretrained": cfg.pretrained,
            "steps": self.total_steps,
            "resumed_from_step": self.start_step or None,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.global_batch,
            "world_size": self.world_size,
            "train_items": self.data.num_items,
            "train_entries": self.data.num_entries,
            "pools": {name: len(pool) for name, pool in zip(self.data.pool_names, self.data.pools)},
            "pool_draws": {name: int(self.draws_total.get(name, 0)) for name in [ORIGINAL, *self.data.pool_names]},
            "final": {k: last.get(k) for k in ("loss", "clean_loss", "robust_loss")},
            "seconds": elapsed,
            "run_dir": str(self.run_dir),
            "checkpoint": str(ckpt.checkpoint_dir(self.run_dir)),
            "config": str(self.run_dir / "config.yaml"),
            "metrics": str(self.run_dir / METRICS_FILE),
            "validation": self.validator.summary() if self.validator is not None else None,
        }


@dataclass
class _LogWindow:
    """Sums over the steps since the last metrics line."""

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    draws: Counter = field(default_factory=Counter)
    steps: int = 0
    micro: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0  # of `seconds`, waiting for batches (loader and host-to-device copy)

    def add(self, output: StepOutput, plan: BatchPlan, grad_accum: int) -> None:
        self.micro += 1
        if self.micro % grad_accum == 0:
            self.steps += 1
        self.draws.update(plan.draws)
        for name in ("loss", "clean_loss", "robust_loss"):
            value = getattr(output, name)
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
                self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, name: str) -> float | None:
        return self.sums[name] / self.counts[name] if self.counts.get(name) else None


def _read_finished_summary(path: Path) -> dict:
    """A finished run's summary.json, which a resume of it returns; one line naming it when it is damaged
    (truncated, edited, not UTF-8, not an object): a traceback before. Deleted, the resume writes it again."""
    try:
        return read_json_object(path)
    except DamagedRecord as problem:
        raise MatPlusError(f"{path}: damaged ({problem}); delete it and run this command again to write it anew "
                           "from the run's final checkpoint") from None


def _summary_line(summary: dict) -> str:
    draws = ", ".join(f"{k} {v}" for k, v in summary["pool_draws"].items())
    final = summary["final"]
    losses = f"loss {final['loss']:.4f}" if final.get("loss") is not None else "no steps run"
    if final.get("robust_loss") is not None:
        losses += f" (clean {final['clean_loss']:.4f}, robust {final['robust_loss']:.4f})"
    line = (f"{summary['method']}: {summary['steps']} steps, {losses}; draws: {draws}; "
            f"checkpoint {summary['checkpoint']}")
    validation = summary.get("validation")
    if validation:
        best = validation["best"]
        kind = "clean" if best["attack"] == "clean" else "robust"  # --val-attack clean ranks the clean score
        metric = best.get("metric", "R@1")  # lines written before other tasks validated: R@1
        from train.validation import attack_as_run

        line += (f"\nvalidation ({attack_as_run(best)}): best {kind} {metric} {best['robust']:.1f} at step {best['step']}"
                 + ("," if kind == "clean" else f" (clean {best['clean']:.1f}),")
                 + (f" weights in {validation['best_weights']}" if validation.get("best_weights") else
                    " its weights not kept") + f"; last {validation['last']['robust']:.1f}")
    return line


def train_run(config: TrainConfig | dict, callbacks: Iterable[Callable[[StepRecord], None]] = ()) -> dict:
    """Train as `config` says (a TrainConfig, or a dict of settings resolved over the defaults).

    Returns the summary (steps, final losses, pool draws per pool, paths); RUN holds config.yaml,
    metrics.jsonl, summary.json and ckpt/. Raises MatPlusError subclasses for expected failures
    (bad settings, pools that do not fit the source, missing optional packages).
    """
    if not isinstance(config, TrainConfig):
        config = resolve_config(dict(config))
    return Trainer(config, callbacks).run()


def _world_checker(source, cfg):
    """The sample world's truth checker where every validated image has a scene (as `train eval
    --truth-checker auto` and the study's validation): validation lines' `true_pct`, the share of
    attacked captions still true of their image; None elsewhere (and for grounding, whose lines have none)."""
    from augment.referring import GroundingData

    if isinstance(source, GroundingData):
        return None
    from augment.sources import select_split
    from augment.world.truth import check_caption_of_row, has_scenes

    rows = select_split(source, cfg.val_split)
    rows = rows.select(range(min(cfg.val_limit, len(rows)))) if cfg.val_limit else rows
    return check_caption_of_row if len(rows) and has_scenes(rows) else None


__all__ = ["Trainer", "TrainConfig", "StepRecord", "train_run"]

