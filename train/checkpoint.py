"""Checkpoints: the model in its family's native layout, plus what `--resume` needs.

Layout (one folder, replaced as a whole so a kill never leaves a model from one step beside an
optimizer from another)::

    RUN/ckpt/
      matplus_model.json             family, name: `models.load_model("RUN/ckpt")` loads the folder
      ...                            the family's own files (open_clip: open_clip_config.json +
                                     open_clip_model.safetensors, so open_clip's "local-dir:RUN/ckpt"
                                     loads it; transformers families: save_pretrained's files)
      train_state/
        state.json                   steps done, draws so far, world size, the model's files, training format
        optimizer.pt                 torch.save'd state dicts, read back with weights_only=True
        scheduler.pt
        scaler.pt                    fp16 only
        rng-<rank>.pt                torch / CUDA (its own device) / Python / NumPy RNG states of each process

To share only the model, copy `RUN/ckpt` without `train_state/`.

Written here, not accelerate's save_state/load_state: the model must stay in its family's own
loadable layout (above), and the whole folder is swapped in at once.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from augment.atomic import naming_write_errors, swap_folder_into_place
from augment.errors import MatPlusError, first_line
from augment.json_records import DamagedRecord, read_json_object

log = logging.getLogger(__name__)

CKPT_DIR = "ckpt"
STATE_DIR = "train_state"
STATE_FILE = "state.json"
PARTIAL_DIR = ".ckpt-partial"  # a checkpoint being written
OLD_DIR = ".ckpt-old"  # the previous one, during the swap
MODEL_FILES = "model_files"  # in state.json: what model.save wrote (every family writes *.safetensors)
# state.json's "training_format": raised when a change of the code changes what a training step computes from the
# same checkpoint and settings (the attacks inside a step, a loss, which parameters decay, a clamp), so that a
# resume of a checkpoint written before the change is refused (`training_format_problem`) instead of training one
# run's weights two ways. 1: 2026-12-07, the first recorded; a checkpoint without the key (0) was written by an
# earlier mat-plus, which before 2026-12-06 split words and accepted substitutes otherwise in MAT's word attack
# (a9acf87, cfb07db, 408f6e5, 84f1dd6: other scripts, accents, curly apostrophes, zero-width joiners) and before
# 2026-12-03 18:33 (87c9042) ran the inner attacks in training mode (dropout, batch norm) and clamped SigLIP's
# logit scale; ALBEF's and BLIP's ITM head (6faf769, 2026-12-06) and the captioner's caption length (07c071a,
# 2026-12-06) changed too. Nothing a format-0 checkpoint records tells when it was written, so it resumes only
# where none of those changes reaches its training (`_unchanged_since_format_0`).
FORMAT_KEY, TRAINING_FORMAT = "training_format", 1
# in every refusal of an earlier format (the study trains such a run again from scratch on it)
TRAINED_OTHERWISE = "an earlier mat-plus trained it otherwise"


class CheckpointError(MatPlusError):
    """A checkpoint is missing, incomplete, or does not fit the run."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CKPT_DIR


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # NumPy's state as plain tensors and numbers, so torch.load(weights_only=True) reads it
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available():
        # this process's own device only: a resume may see fewer GPUs (each rank saves its own file)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, torch.Tensor):  # the state of the device this process saved from: to its device now
            torch.cuda.set_rng_state(cuda)
        else:  # older checkpoints: every GPU visible then, restored to the ones visible now
            for index, device_state in zip(range(torch.cuda.device_count()), cuda):
                torch.cuda.set_rng_state(device_state, index)


def load_tensors(path: Path, hint: str, error: type[MatPlusError] = MatPlusError) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a damaged file is one line naming it and `hint`
    (what to do), not a traceback: the files are written atomically, so only a damaged disk or a hand
    edit gets here."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler meets garbage with any error (IndexError, EOFError, ...)
        # torch's own line for these advises weights_only=False: never the way out for a file of ours
        reason = ("not plain tensors and numbers" if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)
                  else first_line(exc))
        raise error(f"{path}: unreadable ({reason}); {hint}") from None


def _write_errors() -> tuple[type[BaseException], ...]:
    """What torch and safetensors raise for a write that failed (a full disk, a quota) instead of OSError:
    torch.save's RuntimeError ("[enforce fail at inline_container.cc:...] unexpected pos ...",
    "basic_ios::clear: iostream error"), safetensors' SafetensorError ("I/O error: ...")."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return (RuntimeError,)
    return (RuntimeError, SafetensorError)


def could_not_write(path: Path, exc: BaseException) -> OSError:
    """`exc` of a write into `path` (a file, or the folder a model was saved into, with what was
    written so far still there) as an OSError: the commands print an OSError as one line
    (`error: PATH: could not be written (...)`, exit 2), torch's RuntimeError as a traceback."""
    log.debug("writing %s failed: %s", path, first_line(exc))
    return OSError(errno.EIO, f"could not be written ({_likely_cause(Path(path))})", str(path))


def _likely_cause(path: Path) -> str:
    """Why a write into `path` failed, where torch's and safetensors' errors carry no errno: the
    process's file-size limit (`ulimit -f`, EFBIG) when a file written reached it, else a full disk,
    said with the space its file system has left."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit = None if limit == resource.RLIM_INFINITY else limit
    except (ImportError, OSError, ValueError):  # no such limit here (not POSIX)
        limit = None
    try:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        largest = max((p.stat().st_size for p in files), default=0)
    except OSError:
        largest = 0
    if limit is not None and largest >= limit:
        return f"the file-size limit of this process is reached: ulimit -f, {limit} bytes"
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "No space left on device?"
    return f"No space left on device? {free / 2 ** 20:.0f} MiB free there now"


def save_tensors(value: Any, path: Path) -> None:
    """`torch.save(value, path)`; a failed write is an OSError naming `path` and leaves no partial file."""
    try:
        torch.save(value, path)
    except BaseException as exc:
        # the cause read while the part written is still there (a file-size limit is seen in its size)
        error = could_not_write(path, exc) if isinstance(exc, _write_errors()) else None
        with contextlib.suppress(OSError):
            Path(path).unlink(missing_ok=True)
        if error is not None:
            raise error from None
        raise


def _load(path: Path) -> Any:
    return load_tensors(path, "resume from another checkpoint, or start over with --overwrite", CheckpointError)


def save_checkpoint(run_dir: str | os.PathLike, *, model: Any, optimizer: Any, scheduler: Any, scaler: Any,
                    state: dict, rank: int, is_main: bool, barrier: Callable[[], None]) -> Path:
    """Write RUN/ckpt (`model`: a `models.base.ImageTextModel`); every process must call it
    (each saves its RNG state)."""
    run_dir = Path(run_dir)
    partial, final, old = run_dir / PARTIAL_DIR, checkpoint_dir(run_dir), run_dir / OLD_DIR
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / STATE_DIR).mkdir(parents=True)
    barrier()
    save_tensors(_rng_state(), partial / STATE_DIR / f"rng-{rank}.pt")
    barrier()
    if is_main:
        try:
            try:
                model.save(partial)
            except _write_errors() as exc:  # safetensors' or torch's failed write: the folder written to
                raise could_not_write(partial, exc) from None
            # the model's own files, checked on resume: a folder copied without its weights loads random ones
            state = {**state, FORMAT_KEY: TRAINING_FORMAT, MODEL_FILES: sorted(str(path.relative_to(partial)) for path in partial.rglob("*")
                                                  if path.is_file() and STATE_DIR not in path.relative_to(partial).parts)}
            save_tensors(optimizer.state_dict(), partial / STATE_DIR / "optimizer.pt")
            save_tensors(scheduler.state_dict(), partial / STATE_DIR / "scheduler.pt")
            if scaler is not None:
                save_tensors(scaler.state_dict(), partial / STATE_DIR / "scaler.pt")
            with naming_write_errors(partial / STATE_DIR / STATE_FILE):
                (partial / STATE_DIR / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        except BaseException:
            # a full disk (or a kill) part-way: the partial copy would hold the space the next try
            # needs; RUN/ckpt, the last complete checkpoint, is untouched
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if final.exists():  # .ckpt-old is then a finished swap's leftover: free the name the swap moves RUN/ckpt to
            shutil.rmtree(old, ignore_errors=True)
        # else .ckpt-old may be the only complete checkpoint (a kill between an earlier swap's renames):
        # kept until the new one is in place, which the swap then deletes it after. A kill between
        # the two renames leaves .ckpt-old, which loading falls back to
        swap_folder_into_place(partial, final, aside=old)
    barrier()
    return final


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    for folder in (checkpoint_dir(run_dir), Path(run_dir) / OLD_DIR):
        if (folder / STATE_DIR / STATE_FILE).is_file():
            return folder
    return None


def unresumable_reason(folder: Path) -> str | None:
    """Why `folder`, a checkpoint folder without its training state, cannot be resumed (None when it
    has one or is no folder): a model shared without `train_state/`, as the docstring suggests, holds
    weights but no optimizer, schedule or step, and must not be taken for "no checkpoint yet"."""
    if not folder.is_dir() or (folder / STATE_DIR / STATE_FILE).is_file():
        return None
    has_weights = (folder / "matplus_model.json").is_file() or any(folder.glob("*.safetensors"))
    what = f"has weights but no {STATE_DIR}/" if has_weights else f"has no {STATE_DIR}/{STATE_FILE}"
    return f"{folder} {what}: it cannot be resumed"


def read_state(folder: Path) -> dict:
    path = folder / STATE_DIR / STATE_FILE
    try:
        state = read_json_object(path)
    except DamagedRecord as problem:
        raise CheckpointError(f"{path}: unreadable ({problem}); resume from another checkpoint, or start over with "
                              "--overwrite") from None
    if not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: not a training state (no integer 'step')")
    problem = _state_problem(state)
    if problem is not None:  # a resume trained on "from step -1", or stopped with a TypeError in Counter
        raise CheckpointError(f"{path}: not a training state ({problem}); resume from another checkpoint, or start "
                              "over with --overwrite")
    check_model_files(folder, state)
    return state


def _state_problem(state: dict) -> str | None:
    """What of a state.json's counters a resume takes up is not what a run writes (None: nothing)."""
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not count(state["step"]):
        return f"'step' must be a whole number >= 0, got {state['step']!r}"
    draws = state.get("draws_total", {})
    if not isinstance(draws, dict) or not all(count(n) for n in draws.values()):
        return f"'draws_total' must map each source to a whole number of rows drawn, got {str(draws)[:80]}"
    elapsed = state.get("elapsed_seconds", 0.0)
    if not (isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and math.isfinite(elapsed) and elapsed >= 0):
        return f"'elapsed_seconds' must be a number of seconds, got {elapsed!r}"
    return None


def training_format_problem(folder: Path, state: dict, config: Any, model: Any, validation: dict | None = None) -> str | None:
    """Why the checkpoint `folder` (its `state`) may not be resumed by this version's training of `config` on
    `model` (the built `models.base.ImageTextModel`) validated under `validation` (`train.validation.settings_record`:
    --val-frequency's or a given validator's, e.g. the study's; None: not validated), as one sentence; None when it may. A checkpoint of this
    format resumes; one of a later format (a newer mat-plus) never does; one of format 0 (written before the key)
    resumes only where no change up to format 1 reaches the training (`TRAINING_FORMAT`'s note)."""
    found = state.get(FORMAT_KEY, 0)
    if found == TRAINING_FORMAT:
        return None
    ways = (f"start again with --overwrite instead of --resume, or train on from its weights with --model {folder} "
            "and another --out")
    if not (isinstance(found, int) and not isinstance(found, bool) and 0 <= found < TRAINING_FORMAT):
        return (f"--resume: {folder} is of training format {found!r}, not this version's {TRAINING_FORMAT} (a newer "
                f"mat-plus wrote it?): resume it with that version, or {ways}")
    changed = _unchanged_since_format_0(config, model, validation)
    if changed is None:
        return None
    recorded = f"records {FORMAT_KEY} {found}" if FORMAT_KEY in state else f"records no {FORMAT_KEY}"
    return (f"--resume: {folder}'s state.json {recorded} (this version's is {TRAINING_FORMAT}): {TRAINED_OTHERWISE} "
            f"({changed}), so resuming would train one run's weights two ways; {ways}")


def _unchanged_since_format_0(config: Any, model: Any, validation: dict | None = None) -> str | None:
    """What of this training (`config` on `model`) changed since format 0 (the changes `TRAINING_FORMAT`'s
    note names), in words; None when none reaches it: a CLIP (open_clip or transformers, softmax loss) trained
    by a method that searches no words, and validated (`validation`) by no attack that does, whose inner image attack
    (if any) runs on a model that computes alike in training and eval mode (no dropout, batch norm or patch
    dropout)."""
    from train.config import MULTIMODAL_METHODS

    if config.method in MULTIMODAL_METHODS and config.word_budget > 0:
        return ("its word attack split words and accepted substitutes otherwise before 2026-12-06: words of other "
                "scripts, accents, curly apostrophes, zero-width joiners")
    val_attack = (validation or {}).get("attack")
    # a text or prompt part switched off by the budgets (`train.validation.parts_switched_off`) searches no words
    text_off = set((validation or {}).get("parts_off") or {}) - {"image"}
    if val_attack not in (None, "clean", "pgd", "pgd-targeted") and not text_off:
        # the weights train alike, but the validation lines kept and RUN/best were chosen the old way
        return (f"its validation attack {val_attack} split words and accepted substitutes otherwise before 2026-12-06, "
                "so its validation curve and best/ would mix both")
    family = getattr(model, "family", None)
    if family in ("albef", "blip", "captioner"):
        return {"captioner": "the captioner read prompt and caption to another length before 2026-12-06"}.get(
            family, f"{family.upper()}'s inner attacks ran in training mode, with dropout, before 2026-12-03 and its ITM "
                    "head computed in half precision under --precision amp* before 2026-12-06")
    if getattr(model, "itc_loss", None) == "sigmoid":
        return "SigLIP's logit scale was clamped at 100 before 2026-12-03"
    attacks_images = config.method != "clean" and config.pgd_steps > 0 and config.attack_eps > 0
    if attacks_images and _computes_otherwise_in_training_mode(model):
        return "its inner attacks ran in training mode, with this model's dropout or batch norm, before 2026-12-03"
    return None


def _computes_otherwise_in_training_mode(model: Any) -> bool:
    """Whether a module of `model` computes otherwise in training mode: dropout of a probability above 0 (a
    module, or an attention's rate), batch norm, open_clip's patch dropout, timm's drop path (stochastic depth)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        # nn.MultiheadAttention, HF attention, PatchDropout, timm's DropPath (open_clip's ConvNeXt, ViTamin towers)
        for name in ("dropout", "attention_dropout", "dropout_p", "prob", "drop_prob"):
            rate = getattr(module, name, None)
            if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
                return True
    return False


def check_model_files(folder: Path, state: dict) -> None:
    """A checkpoint folder lacking a model file (a partial copy, a hand edit) is one line naming it:
    open_clip would start from random weights, and the run would train on from them."""
    hint = "copy the checkpoint again, resume from another one, or start over with --overwrite"
    listed = state.get(MODEL_FILES)
    if isinstance(listed, list):
        missing = [name for name in listed if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: {missing[0]} is missing" + (f" (and {len(missing) - 1} more model files)"
                                                                          if len(missing) > 1 else "") + f"; {hint}")
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        # saved before the list was kept: every family's weights are safetensors files
        raise CheckpointError(f"{folder}: no weights file (*.safetensors) is there; {hint}")


def load_model_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy the weights (and buffers: momentum encoders, queues) saved in `folder` into `model`."""
    from models import load_model

    saved = load_model(str(folder), device="cpu")  # the caller read its state: `read_state` checked its files
    model.load_state_dict(saved.state_dict(), strict=True)


def load_training_state(folder: Path, *, optimizer: Any, scheduler: Any, scaler: Any, rank: int,
                        saved_world_size: int | None = None, world_size: int = 1) -> None:
    """Restore optimizer, scheduler, grad scaler and this process's RNG states (`saved_world_size`:
    state.json's, the processes that saved theirs: None when it is not recorded; `world_size`: this run's)."""
    state_dir = folder / STATE_DIR
    if isinstance(saved_world_size, int):
        # every process checks every process's file: one that checked only its own went on (process 0
        # rewrote config.yaml) until torchrun stopped it for another's, which printed "interrupted: ...
        # add --resume latest" after the line
        for other in range(min(world_size, saved_world_size)):
            rng_file = state_dir / f"rng-{other}.pt"
            if not rng_file.is_file():
                # a process of the run saved it: lost (a partial copy, a hand edit), the resume drew other
                # random numbers than the run would have, without a word
                raise CheckpointError(f"{rng_file}: missing (the run's process {other} saved its random states there); "
                                      "copy the checkpoint again, resume from another one, or start over with --overwrite")
    try:
        optimizer.load_state_dict(_load(state_dir / "optimizer.pt"))
    except ValueError as exc:  # torch: "... parameter group that doesn't match the size of optimizer's group"
        if "group" not in str(exc):
            raise
        # AdamW's state is kept per parameter, in groups: a run begun by a version that grouped them
        # otherwise (before 2026-12-02 open_clip's position embeddings were weight-decayed) has no place
        # here, and loading it was torch's traceback
        raise CheckpointError(f"{folder}: its optimizer state has other parameter groups than this version makes "
                              "(a run begun before 2026-12-02, when position embeddings were still weight-decayed, "
                              f"or with other settings): it cannot be resumed; train on from its weights with "
                              f"--model {folder} and another --out") from None
    scheduler.load_state_dict(_load(state_dir / "scheduler.pt"))
    if scaler is not None:
        if not (state_dir / "scaler.pt").is_file():
            raise CheckpointError(f"{folder}: no grad-scaler state (was the run started without fp16?)")
        scaler.load_state_dict(_load(state_dir / "scaler.pt"))
    rng_file = state_dir / f"rng-{rank}.pt"
    if rng_file.is_file():  # absent when resuming with more processes than the run had (checked above)
        _set_rng_state(_load(rng_file))
