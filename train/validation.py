"""Validation during training: robust R@1 on a held-out split every K steps, and the best checkpoint.

A `Validator` is a trainer callback (`Trainer(config, callbacks=[validator])`, then
`validator.attach(trainer)`): at the first micro step of every K-th optimizer step it evaluates a
copy of the model as it stands after that many steps (before the step's update) under one attack
with `train.evaluate.evaluate`, appends a line to `RUN/validation.jsonl` and, when the score is
the best so far, writes the weights to `RUN/best/` (open_clip's local-dir layout, loadable like
`RUN/ckpt/`). Call `validate(step)` once more after the run for the last weights.

The copy is evaluated in eval mode without touching the trained model's weights, gradients or
RNG streams that matter (the trainer reseeds every micro step), so a run with validation trains
to the same weights as one without. On resume, lines and a best checkpoint from steps the
resumed run will redo are dropped first.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from augment.atomic import atomic_write_text

VALIDATION_FILE = "validation.jsonl"
BEST_DIR = "best"


@dataclasses.dataclass
class ValidationSettings:
    every: int = 25  # optimizer steps between validations (step 0, the starting model, included)
    attack: str = "sga"
    split: str = "val"
    limit: int | None = 50
    captions_per_image: int | None = 2
    batch_size: int = 50
    # the score: R@1 under `attack` counting only attacked captions that stay true
    # ("meaning_preserved", needs a caption checker) or every attacked caption ("all")
    captions: str = "meaning_preserved"
    attack_options: dict = dataclasses.field(default_factory=dict)
    seed: int = 0


def score_of(report: dict, attack: str, captions: str = "meaning_preserved") -> float:
    """Mean of TR@1 and IR@1 under `attack` (meaning-preserving variant when asked and present)."""
    entry = report["attacks"][attack]
    suffix = "_meaning_preserved" if captions == "meaning_preserved" and entry.get("tr@1_meaning_preserved") is not None else ""
    return (entry[f"tr@1{suffix}"] + entry[f"ir@1{suffix}"]) / 2


class Validator:
    def __init__(self, run_dir: str | os.PathLike, source_dataset, settings: ValidationSettings,
                 caption_checker: Callable[[str, dict], Any] | None = None, log: Callable[[str], None] | None = None,
                 report: Callable[[int, dict], None] | None = None):
        self.run_dir = Path(run_dir)
        self.source = source_dataset
        self.settings = settings
        self.checker = caption_checker
        self.log = log
        self.report = report  # (step, {name: value}) to the run's loggers (--report-to)
        self.trainer = None
        self._started = False
        self._options = dict(settings.attack_options)
        mlm = self._options.get("mlm")
        if isinstance(mlm, str) and self._options.get("candidates", "mlm") == "mlm":  # load once, not per validation
            from augment.registry import load_mlm

            model, tokenizer = load_mlm(mlm)
            self._options["mlm"] = (model, tokenizer, mlm)

    @property
    def path(self) -> Path:
        return self.run_dir / VALIDATION_FILE

    def attach(self, trainer) -> "Validator":
        self.trainer = trainer
        return self

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _drop_from(self, step: int) -> None:
        """Forget validations of steps >= `step` (a resumed run redoes them)."""
        kept = [r for r in self.records() if r["step"] < step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        best = self.run_dir / BEST_DIR
        meta = best / "validation.json"
        if best.exists() and (not meta.exists() or json.loads(meta.read_text())["step"] >= step):
            shutil.rmtree(best)

    def __call__(self, record) -> None:
        """The trainer callback (called after every micro step, before the optimizer step)."""
        if not self._started:
            self._started = True
            self._drop_from(record.step)
        grad_accum = self.trainer.cfg.grad_accum
        if record.micro_step % grad_accum == 0 and record.step % self.settings.every == 0:
            self.validate(record.step)

    def validate(self, step: int) -> dict:
        """Evaluate the trainer's model as it is now, as the weights after `step` optimizer steps."""
        from train.evaluate import evaluate

        self._drop_from(step)
        self._started = True
        snapshot = self.trainer.model.frozen_copy()  # the model as it is now, outside training
        s = self.settings
        attacks = ["clean"] if s.attack == "clean" else ["clean", s.attack]  # clean: model selection on clean R@1
        report = evaluate(snapshot, self.source, split=s.split, attacks=attacks, batch_size=s.batch_size,
                          captions_per_image=s.captions_per_image, limit=s.limit, attack_options=self._options,
                          caption_checker=self.checker, seed=s.seed, progress=False)
        entry = report["attacks"][s.attack]
        line = {"step": step, "robust": score_of(report, s.attack, s.captions),
                "clean": score_of(report, "clean", "all"), "attack": s.attack,
                "true_pct": (entry.get("meaning_preserved") or {}).get("true_pct")}
        previous = [r["robust"] for r in self.records()]
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        best = not previous or line["robust"] > max(previous)
        if best:
            self._save_best(snapshot, line)
        if self.report:
            self.report(step, {"val/robust_r1": line["robust"], "val/clean_r1": line["clean"]})
        if self.log:
            self.log(f"  step {step:4d}: val robust R@1 {line['robust']:5.1f}  clean R@1 {line['clean']:5.1f}  "
                     f"({s.attack}{', best so far' if best else ''})")
        return line

    def summary(self) -> dict | None:
        """The run's validation for summary.json: the last line, the best one and where its weights are."""
        records = self.records()
        if not records:
            return None
        best = max(records, key=lambda r: (r["robust"], -r["step"]))  # the first step reaching the best score
        return {"last": records[-1], "best": best, "best_weights": str(self.run_dir / BEST_DIR),
                "curve": str(self.path)}

    def _save_best(self, snapshot, line: dict) -> None:
        best = self.run_dir / BEST_DIR
        tmp = self.run_dir / f".{BEST_DIR}-partial"
        shutil.rmtree(tmp, ignore_errors=True)
        snapshot.save(tmp)
        (tmp / "validation.json").write_text(json.dumps(line, sort_keys=True) + "\n")
        if best.exists():
            shutil.rmtree(best)
        os.replace(tmp, best)


def read_curve(run_dir: str | os.PathLike) -> list[dict]:
    """The validation lines of a run, by step."""
    path = Path(run_dir) / VALIDATION_FILE
    if not path.exists():
        return []
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()), key=lambda r: r["step"])
