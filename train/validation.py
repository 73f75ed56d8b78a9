"""Validation during training: a robust score on a held-out split every K steps, and the best checkpoint.

A `Validator` is a trainer callback (`Trainer(config, validator=validator)`, or the trainer's own under
--val-frequency): at the first micro step of every K-th optimizer step it evaluates a
copy of the model as it stands after that many steps (before the step's update) under one attack
with the task's evaluation (`METRICS`: retrieval's R@1 by `train.evaluate.evaluate`, captioning's
CIDEr by `train.evaluate_captioning.evaluate_captioning`, grounding's accuracy by
`train.evaluate_grounding.evaluate_grounding`), appends a line to `RUN/validation.jsonl` and, when
the score is the best so far, writes the weights to `RUN/best/` (the checkpoint layout, loadable
like `RUN/ckpt/`). The trainer validates once more after the last step (`validate_last`), once the final
checkpoint is saved; its scores reach the run's loggers (--report-to) under `val/`.

The copy is evaluated in eval mode without touching the trained model's weights, gradients or
RNG streams that matter (the trainer reseeds every micro step), so a run with validation trains
to the same weights as one without. On resume, lines of steps after the checkpoint's are dropped
(the resumed run redoes them); a line of the checkpoint's own step is kept (the resumed run starts
from those weights). `RUN/best/validation.json` says what `RUN/best/` holds and is what a new score
is ranked against; `best/` is replaced only by a swap (`.best-partial` written, then renamed over,
`.best-old` the fallback), never deleted first. Every line records the settings it was measured
under (attack, split, source, number of images): a resume under other ones is refused
(`check_resume`), so one curve never ranks incomparable scores. From a train config,
`load_validation_data` reads and checks what is validated on and `validation_settings` gives the
settings (the trainer calls both before RUN is written).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from augment.atomic import atomic_write_text, naming_write_errors, swap_folder_into_place
from augment.json_records import DamagedRecord, read_json_object
from train.jsonl import read_jsonl

if TYPE_CHECKING:
    from train.config import TrainConfig

VALIDATION_FILE = "validation.jsonl"
BEST_DIR = "best"
BEST_PARTIAL = ".best-partial"  # a best checkpoint being written
BEST_OLD = ".best-old"  # the previous one, during the swap
# the settings a line was measured under: `train` flags naming them (a resume under others is refused)
SETTING_FLAGS = {"attack": "--val-attack", "split": "--val-split", "data": "--val-data", "limit": "--val-limit",
                 "captions": "captions", "captions_per_image": "captions_per_image",
                 "parts_off": "--pgd-steps / --attack-eps / --word-budget", "segment_cjk": "--val-segment-cjk",
                 "cjk_forms": "--val-segment-cjk's folding of fullwidth forms (since 2026-12-06)"}


def tidy_best(run_dir: str | os.PathLike) -> None:
    """After a kill while `best/` was being saved: restore the previous best if the swap stopped
    half-way, and remove the partial copies."""
    run_dir = Path(run_dir)
    best, old, partial = run_dir / BEST_DIR, run_dir / BEST_OLD, run_dir / BEST_PARTIAL
    if old.exists() and not best.exists():
        os.replace(old, best)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)


# what a validation ranks, per task: (the metric's name in lines and logs, the loggers' key)
METRICS = {"retrieval": ("R@1", "r1"), "captioning": ("CIDEr", "cider"), "grounding": ("accuracy", "accuracy")}


def settings_record(settings: ValidationSettings, source) -> dict:
    """What a validation score depends on besides the weights (recorded in every line)."""
    from augment.referring import GroundingData

    if isinstance(source, GroundingData):  # grounding: images, candidate boxes and expressions
        from train.evaluate_grounding import data_fingerprint

        data = data_fingerprint(source)
    else:
        from augment.sources import source_fingerprint

        data = source_fingerprint(source)
    record = {"attack": settings.attack, "split": settings.split, "data": data,
              "limit": settings.limit, "captions": settings.captions, "captions_per_image": settings.captions_per_image}
    off = parts_switched_off(settings)
    if off:  # only then: the lines of a multimodal attack that ran whole read as before
        record["parts_off"] = off
    if settings.task == "captioning":  # CIDEr's text; a line written before it was unsegmented (check_resume)
        record["segment_cjk"] = settings.segment_cjk
        if settings.segment_cjk != "none":  # segmented text is folded first (`train.caption_metrics.CJK_FORMS`)
            from train.caption_metrics import CJK_FORMS

            record["cjk_forms"] = CJK_FORMS
    return record


def attack_as_run(line: dict) -> str:
    """A validation line's attack as it ran: 'sep without its text part (--word-budget 0)' (`parts_switched_off`)."""
    off = parts_off_as_named(line.get("attack"), (line.get("settings") or {}).get("parts_off")) or {}
    return line["attack"] + "".join(f" without its {part} part ({flag})" for part, flag in off.items())


def parts_off_as_named(attack, off):
    """A line's `parts_off` under today's part names: prompt-pgd's prompt part was named "text" in lines written
    before 2026-12-06 (eval.md: "prompt"); anything else as it is."""
    if not (isinstance(off, dict) and "text" in off and isinstance(attack, str)):
        return off
    return {_text_part(attack) if part == "text" else part: flag for part, flag in off.items()}


def _as_named(line):
    """A validation line with `parts_off_as_named` (the line itself when nothing is renamed)."""
    if not isinstance(line, dict) or not isinstance(line.get("settings"), dict):
        return line
    off = line["settings"].get("parts_off")
    named = parts_off_as_named(line.get("attack"), off)
    return line if named is off else {**line, "settings": {**line["settings"], "parts_off": named}}


def attack_parts(attack: str, task: str, steps, eps, budget) -> dict[str, str | None]:
    """Each part (image, text) `attack` reads under `task` (train eval's table, `ATTACK_OPTIONS`), with the flag
    that switches it off under these budgets, None where it runs: sep with --word-budget 0 is
    {"image": None, "text": "--word-budget 0"}; clean reads none."""
    if attack == "clean":
        return {}
    from train.commands_eval import ATTACK_OPTIONS

    readers = ATTACK_OPTIONS.get(task, ATTACK_OPTIONS["retrieval"])
    parts: dict[str, str | None] = {}
    if attack in readers["pgd_steps"]:
        parts["image"] = "--pgd-steps 0" if steps == 0 else "--attack-eps 0" if eps == 0 else None
    if attack in readers["word_budget"]:
        parts[_text_part(attack)] = "--word-budget 0" if budget == 0 else None
    return parts


def _text_part(attack: str) -> str:
    """What the text part of `attack` attacks, as eval.md names it: captioning's prompt attacks the prompt."""
    from train.attacks.captioning import PROMPT_ATTACKS

    return "prompt" if attack in PROMPT_ATTACKS else "text"


def every_part_off(attack: str, task: str, steps, eps, budget) -> str | None:
    """The flags that switch off every part of `attack` under these budgets ("--word-budget 0" for bert-attack,
    "--pgd-steps 0 and --word-budget 0" for sep), else None: such an attack changes nothing, and the trainer's
    --val-attack, `train eval`'s --attacks and the study's attacks refuse it (`attack_parts`)."""
    parts = attack_parts(attack, task, steps, eps, budget)
    return " and ".join(parts.values()) if parts and all(parts.values()) else None


def parts_switched_off(settings: ValidationSettings) -> dict[str, str]:
    """The parts of a multimodal validation attack (image and text: sep, co-attack, sga, captioning's prompt-pgd)
    that the training's budgets switch off, each with the flag that does: {"text": "--word-budget 0"}. Such an attack
    runs as its other part alone (sep with --word-budget 0 is its PGD) under its own name, which the lines said alone.
    An attack with every part off is refused (`train.config._check_validation_attack_runs`)."""
    options = settings.attack_options
    parts = attack_parts(settings.attack, settings.task, options.get("steps"), options.get("eps"), options.get("budget"))
    return {part: flag for part, flag in parts.items() if flag} if len(parts) == 2 else {}


def check_resume(run_dir: str | os.PathLike, current: dict, start: int) -> None:
    """Before a run resumed at step `start` writes anything: the validation lines it keeps (steps up
    to `start`) must have been measured under the settings `current` (`settings_record`); a line
    written before they were recorded is compared on its attack only, and one written before
    --val-segment-cjk as unsegmented (`segment_cjk` none: only captioning's `current` holds the key); a
    segmented line written before `cjk_forms` was recorded cut its text unfolded (another CIDEr)."""
    from train.config import ConfigError

    path = Path(run_dir) / VALIDATION_FILE
    differ = set()
    for record in read_jsonl(path):
        if record["step"] <= start:
            saved = dict(record.get("settings") or {}, attack=record.get("attack"))
            if "parts_off" in saved:  # prompt-pgd's prompt part was "text" before 2026-12-06 (`parts_off_as_named`)
                saved["parts_off"] = parts_off_as_named(saved["attack"], saved["parts_off"])
            # a line written before --val-segment-cjk (2026-12-06) scored captioning's CIDEr unsegmented
            saved.setdefault("segment_cjk", "none")
            if saved["segment_cjk"] != "none":  # segmented before fullwidth forms were folded (b238406): other CIDEr
                saved.setdefault("cjk_forms", "unfolded")
            differ |= {key for key, value in saved.items() if key in current and value != current[key]}
    if differ:
        flags = [SETTING_FLAGS[key] for key in SETTING_FLAGS if key in differ]
        raise ConfigError(f"--resume: validation settings differ from the run in {Path(run_dir)} (its {VALIDATION_FILE}): "
                          f"{flags}; resume with the run's, or start over with --overwrite")


def check_resume_keeps_validating(run_dir: str | os.PathLike, start: int) -> None:
    """Before a run resumed at step `start` without validation writes anything: a run validated up
    to there would quietly stop validating (its validation.jsonl and best/ frozen at `start`, its
    config.yaml and summary.json saying it never validated)."""
    from train.config import ConfigError

    steps = [record["step"] for record in read_jsonl(Path(run_dir) / VALIDATION_FILE) if record["step"] <= start]
    if steps:
        raise ConfigError(f"--resume: the run in {Path(run_dir)} was validated (its {VALIDATION_FILE}, up to step "
                          f"{max(steps)}) but this resume has no --val-frequency: resume with the run's validation "
                          "settings, or start over with --overwrite")


def best_line(run_dir: str | os.PathLike) -> dict | None:
    """The validation line of the weights in RUN/best (None when there are none)."""
    meta = Path(run_dir) / BEST_DIR / "validation.json"
    if not meta.is_file():
        return None
    try:
        line = read_json_object(meta)
    except DamagedRecord:
        return None  # written before its folder was renamed into place: only a hand edit gets here
    return line if isinstance(line.get("step"), int) else None


@dataclasses.dataclass
class ValidationSettings:
    every: int = 25  # optimizer steps between validations (step 0, the starting model, included)
    task: str = "retrieval"  # what is scored (`METRICS`); grounding validates a `GroundingData` of the split
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
    segment_cjk: str = "none"  # captioning's CIDEr (train.caption_metrics.segment_cjk)


def score_of(report: dict, attack: str, captions: str = "meaning_preserved") -> float:
    """Mean of TR@1 and IR@1 under `attack` (meaning-preserving variant when asked and present)."""
    entry = report["attacks"][attack]
    suffix = "_meaning_preserved" if captions == "meaning_preserved" and entry.get("tr@1_meaning_preserved") is not None else ""
    return (entry[f"tr@1{suffix}"] + entry[f"ir@1{suffix}"]) / 2


class Validator:
    def __init__(self, run_dir: str | os.PathLike, source_dataset, settings: ValidationSettings,
                 caption_checker: Callable[[str, dict], Any] | None = None, log: Callable[[str], None] | None = None,
                 report: Callable[[int, dict], None] | None = None, progress: bool = False):
        self.run_dir = Path(run_dir)
        self.source = source_dataset
        self.settings = settings
        self.checker = caption_checker
        self.log = log
        self.report = report  # (step, {name: value}) to the run's loggers (--report-to)
        # none given (a study's validator, made before its trainer): the attached trainer's loggers, as
        # --val-frequency's validation reaches them (the study's scores never reached TensorBoard / W&B)
        self._reports_to_trainer = report is None
        # a bar under the training bar while a validation runs (cleared after: `eval_common.evaluation_bar`);
        # an attack on a few hundred real-size images takes minutes, which the training bar sat through
        self.progress = progress
        self.trainer = None
        self._started = False
        self._on_record: int | None = None  # a resumed run's first step whose kept line stands (not validated again)
        self._options = dict(settings.attack_options)
        mlm = self._options.get("mlm")
        # load once, not per validation; none for a text part of budget 0 (the study's eval.word_budget 0)
        if isinstance(mlm, str) and self._options.get("candidates", "mlm") == "mlm" and self._options.get("budget") != 0:
            from augment.registry import load_mlm

            model, tokenizer = load_mlm(mlm)
            self._options["mlm"] = (model, tokenizer, mlm)

    @property
    def path(self) -> Path:
        return self.run_dir / VALIDATION_FILE

    def attach(self, trainer) -> "Validator":
        self.trainer = trainer
        if self._reports_to_trainer:
            self.report = self._to_trainer_loggers
        return self

    def _to_trainer_loggers(self, step: int, scalars: dict) -> None:
        metrics = getattr(self.trainer, "metrics", None)  # none in a run found finished (`Trainer.setup` stops first)
        if metrics is not None:
            metrics.report(step, scalars)

    def records(self) -> list[dict]:
        return read_jsonl(self.path)

    def settings_record(self) -> dict:
        """What a score depends on besides the weights (recorded in every line)."""
        if getattr(self, "_record", None) is None:
            self._record = settings_record(self.settings, self.source)
        return self._record

    def check_resume(self, start: int) -> None:
        check_resume(self.run_dir, self.settings_record(), start)

    def _drop_from(self, step: int) -> None:
        """Forget validations of steps >= `step` (a resumed run redoes them). `best/` stays until a
        validation replaces it (`_is_best`)."""
        tidy_best(self.run_dir)
        kept = [r for r in self.records() if r["step"] < step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def __call__(self, record) -> None:
        """The trainer callback (called after every micro step, before the optimizer step)."""
        if not self._started:
            self._started = True
            # the run starts at record.step: the weights of that step are the checkpoint's, so its line stays
            self._drop_from(record.step + 1)
            kept = [r for r in self.records() if r["step"] == record.step]
            validated = record.step % self.settings.every == 0
            if kept and (not validated or self._settled(kept[0])):
                # not validated again (a resume on a validation step redid minutes of attacked evaluation for
                # the line it kept): its scalars to the loggers, whose steps from here on were purged
                self._on_record = record.step
                if self.report:
                    self.report(record.step, self._scalars(kept[0]))
        grad_accum = self.trainer.cfg.grad_accum
        if (record.micro_step % grad_accum == 0 and record.step % self.settings.every == 0
                and record.step != self._on_record):
            self.validate(record.step)

    def validate_last(self, step: int, model=None) -> dict:
        """The validation after the last step (`step`: the run's length). A resumed run with no step left
        (killed after its final checkpoint, before summary.json) keeps that step's line as a resume on
        any validation step does (it was validated again: minutes of attacked evaluation for the same
        number), its scalars to the loggers, whose steps from here on were purged. `model`: the weights to
        validate where the trainer has none (a run found finished), else the trainer's."""
        if not self._started:  # no step was trained: the weights are the final checkpoint's
            self._drop_from(step + 1)
            kept = [r for r in self.records() if r["step"] == step]
            if kept and self._settled(kept[0]):
                self._started = True
                if self.report:
                    self.report(step, self._scalars(kept[0]))
                return kept[0]
        return self.validate(step, model)

    def _settled(self, line: dict) -> bool:
        """Whether a kept line of the step a run resumes at needs no validation again: RUN/best holds
        its weights, or an earlier line beats it (a RUN/best of a later step, which the resumed run
        redoes, or a best line whose copy a kill interrupted, are settled by validating again)."""
        held = best_line(self.run_dir)
        if held is not None and held["step"] >= line["step"]:
            return held["step"] == line["step"]
        earlier = [r["robust"] for r in self.records() if r["step"] < line["step"]]
        return bool(earlier) and line["robust"] <= max(earlier)

    def _is_best(self, line: dict) -> bool:
        """Whether `line` beats every earlier validation of the run (a tie keeps the earlier step): ranked
        against what RUN/best holds, or, where it holds none or the weights of this step or a later one
        (a resumed run redoing them: those lines are gone from the curve, so are those weights), against
        the best of the earlier lines kept in the curve. Such a stale RUN/best is removed first, so it is
        never reported for weights the curve no longer has."""
        held = best_line(self.run_dir)
        if held is not None and held["step"] >= line["step"]:
            shutil.rmtree(self.run_dir / BEST_DIR, ignore_errors=True)
            held = None
        earlier = [r["robust"] for r in self.records() if r["step"] < line["step"]]
        rival = held["robust"] if held is not None else max(earlier, default=None)
        return rival is None or line["robust"] > rival

    def validate(self, step: int, model=None) -> dict:
        """Evaluate the trainer's model as it is now (or `model`: the weights of a finished run's
        checkpoint), as the weights after `step` optimizer steps."""
        self._drop_from(step)
        self._started = True
        if model is None:
            snapshot = self.trainer.model.frozen_copy()  # the model as it is now, outside training
        else:
            snapshot = model.eval()
        s = self.settings
        robust, clean, true_pct = self._measure(snapshot)
        line = {"step": step, "robust": robust, "clean": clean, "attack": s.attack, "metric": METRICS[s.task][0],
                "true_pct": true_pct, "settings": self.settings_record()}
        with naming_write_errors(self.path), open(self.path, "a", encoding="utf-8") as handle:  # a full disk names it
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        best = self._is_best(line)
        if best:
            self._save_best(snapshot, line)
        if self.report:
            self.report(step, self._scalars(line))
        if self.log:
            metric = METRICS[s.task][0]
            self.log(f"  step {step:4d}: val robust {metric} {line['robust']:5.1f}  clean {metric} {line['clean']:5.1f}  "
                     f"({attack_as_run(line)}{', best so far' if best else ''})")
        return line

    def _scalars(self, line: dict) -> dict:
        """A line's scores for the run's loggers: val/robust_r1 and val/clean_r1 for retrieval (cider,
        accuracy for the other tasks)."""
        key = METRICS[self.settings.task][1]
        return {f"val/robust_{key}": line["robust"], f"val/clean_{key}": line["clean"]}

    def _measure(self, snapshot) -> tuple[float, float, float | None]:
        """(robust score, clean score, percent of attacked texts still true where a checker judged them)
        of `snapshot` on the validation data, by the task's own evaluation."""
        s = self.settings
        mlm = self._options.get("mlm")
        if isinstance(mlm, tuple) and callable(getattr(mlm[0], "to", None)):
            # loaded once, on the CPU, before the trainer's device was known (`__init__`): to the weights' device,
            # where the attacks' substitute searches run (on a GPU run they ran the masked LM on the host)
            mlm[0].to(snapshot.device)
        attacks = ["clean"] if s.attack == "clean" else ["clean", s.attack]  # clean: model selection on the clean score
        if s.task == "captioning":
            from train.evaluate_captioning import evaluate_captioning

            report = evaluate_captioning(snapshot, self.source, split=s.split, attacks=attacks, batch_size=s.batch_size,
                                         captions_per_image=s.captions_per_image, limit=s.limit,
                                         attack_options=self._options, caption_checker=self.checker, meteor=False,
                                         segment_cjk=s.segment_cjk, seed=s.seed, progress=self.progress)
            entry = report["attacks"][s.attack]
            return entry["cider"], report["attacks"]["clean"]["cider"], (entry.get("truth") or {}).get("true_pct")
        if s.task == "grounding":  # self.source: the split's GroundingData, already cut to the limit
            from train.evaluate_grounding import evaluate_grounding

            report = evaluate_grounding(snapshot, self.source, attacks=attacks, attack_options=self._options,
                                        batch_size=s.batch_size, expression_checker=self.checker, seed=s.seed,
                                        progress=self.progress)
            entry = report["attacks"][s.attack]
            kept = entry.get("accuracy_meaning_preserved") if s.captions == "meaning_preserved" else None
            return (entry["accuracy"] if kept is None else kept), report["attacks"]["clean"]["accuracy"], None
        from train.evaluate import evaluate

        report = evaluate(snapshot, self.source, split=s.split, attacks=attacks, batch_size=s.batch_size,
                          captions_per_image=s.captions_per_image, limit=s.limit, attack_options=self._options,
                          caption_checker=self.checker, seed=s.seed, progress=self.progress)
        entry = report["attacks"][s.attack]
        return (score_of(report, s.attack, s.captions), score_of(report, "clean", "all"),
                (entry.get("meaning_preserved") or {}).get("true_pct"))

    def summary(self) -> dict | None:
        """The run's validation for summary.json: the last line, the best one (what RUN/best holds) and
        where its weights are (None when RUN/best holds none)."""
        records = self.records()
        if not records:
            return None
        held = best_line(self.run_dir)
        best = held if held is not None else max(records, key=lambda r: (r["robust"], -r["step"]))
        return {"last": _as_named(records[-1]), "best": _as_named(best),
                "best_weights": str(self.run_dir / BEST_DIR) if held is not None else None, "curve": str(self.path)}

    def _save_best(self, snapshot, line: dict) -> None:
        """Write RUN/best by a swap, as checkpoints are: a kill leaves the old best or the new one
        (`tidy_best` restores `.best-old` when it stopped between the renames)."""
        best, tmp, old = self.run_dir / BEST_DIR, self.run_dir / BEST_PARTIAL, self.run_dir / BEST_OLD
        snapshot.save(tmp)  # no partial copy is left: `validate`'s `_drop_from` ran `tidy_best`
        with naming_write_errors(tmp / "validation.json"):
            (tmp / "validation.json").write_text(json.dumps(line, sort_keys=True) + "\n")
        swap_folder_into_place(tmp, best, aside=old)


def read_curve(run_dir: str | os.PathLike) -> list[dict]:
    """The validation lines of a run, by step."""
    return sorted(read_jsonl(Path(run_dir) / VALIDATION_FILE), key=lambda r: r["step"])


# ----------------------------------------------------------------------------- from a train config


def load_validation_data(cfg: TrainConfig, train_source, report_skipped: bool = True):
    """What `train --val-frequency` validates on: --val-data (default: the train data,
    `train_source`) cut to --val-split, or for grounding the split's images with their boxes
    (`augment.referring.load_grounding`). Read and checked before RUN is written: an unknown or
    absent split is one line naming it (it used to stop the run at its first validation).
    `report_skipped`: whether this process writes --skip-bad's report of --val-data (one process does)."""
    from augment.errors import SourceError
    from augment.sources import select_split

    which = "validation (--val-frequency)" if cfg.val_data is None else f"--val-data {cfg.val_data}"
    if cfg.task == "grounding":  # boxes to ground: the source read as grounding data, cut to the split
        return _grounding_validation(cfg, which)
    source = train_source if cfg.val_data is None else _validation_source(cfg, report_skipped)
    try:
        select_split(source, cfg.val_split)  # an unknown or absent split: one line now
    except SourceError as exc:
        raise SourceError(f"{which}: {exc}; choose another with --val-split or --val-data") from None
    return source


def validation_settings(cfg: TrainConfig, every: int) -> ValidationSettings:
    """The `ValidationSettings` of a train config, validating every `every` optimizer steps: the
    attack's options are the training's (--eps, --pgd-steps, ...), its masked LM the training's
    or the model's default; WordNet, when --val-attack synonym needs it, is checked now."""
    if cfg.val_attack == "synonym":  # WordNet's substitutes: missing, one line before anything is written
        from augment.wordnet import require_wordnet

        require_wordnet()
    if cfg.val_segment_cjk != "none":  # jieba missing: its install line before anything is written
        from train.caption_metrics import require_segmenter

        require_segmenter(cfg.val_segment_cjk, "--val-segment-cjk")
    # --attack-eps 0 derives a PGD step of 0, which the attack settings refuse (PGD of budget 0 leaves the images
    # clean): it stopped every validation of such a run, --val-attack clean too, with a traceback after RUN was written
    options = {"eps": cfg.attack_eps, "steps": cfg.pgd_steps, "step_size": cfg.pgd_step_size if cfg.attack_eps > 0 else None,
               "budget": cfg.word_budget, "top_k": cfg.top_k}
    from train.config import default_mlm, validation_reads_mlm

    if validation_reads_mlm(cfg):  # substitutes from a masked LM
        options["mlm"] = cfg.mlm or default_mlm(cfg.model)  # cfg.mlm is filled (derived) when the run validates
    if cfg.task == "grounding":
        options["objective"] = "itm"  # train eval --task grounding's default
    return ValidationSettings(every=every, task=cfg.task, attack=cfg.val_attack, split=cfg.val_split,
                              limit=cfg.val_limit, captions="all",
                              # retrieval: 2 captions per image; a caption's CIDEr reads all its image's references
                              captions_per_image=2 if cfg.task == "retrieval" else None,
                              attack_options=options, seed=cfg.seed, batch_size=min(50, cfg.val_limit or 50),
                              segment_cjk=cfg.val_segment_cjk)


# --skip-bad's report of --val-data's records, beside RUN as the train data's RUN.skipped.json
VAL_SKIP_REPORT_SUFFIX = ".val-data.skipped.json"


def _validation_source(cfg: TrainConfig, report_skipped: bool = True):
    """--val-data, its images found from --val-image-root or its own location (--image-root is the
    train data's). A source whose rows are all in the default split "train" (an open_clip CSV/TSV
    or an ALBEF file that names no split) is read as --val-split whole, as --source-split labels
    the train data's: it was refused for having no "val" rows. One that names its splits keeps
    them (`flickr30k_test.json` holds "test" rows, refused for --val-split val: model selection
    on test data is asked for with --val-split test). Errors name --val-data: the train data was
    read fine. --validate and --skip-bad apply to it as to the train data (its skipped records
    reported in RUN.val-data.skipped.json)."""
    from augment.errors import MatPlusError, SourceError, first_line
    from augment.sources import load_source

    def load(split, validate: bool):
        return load_source(cfg.val_data, image_root=cfg.val_image_root, split=split, skip_bad=cfg.skip_bad,
                           validate=validate, allow_outside_root=cfg.allow_outside_root, csv_img_key=cfg.csv_img_key,
                           csv_caption_key=cfg.csv_caption_key, csv_separator=cfg.csv_separator)

    try:
        source, report = load(None, cfg.validate)
        only_default_split = set(source.unique("split")) == {"train"}
        if only_default_split and cfg.val_split not in ("all", "train"):
            # every row labelled so: a second read, from the source cache (with --skip-bad, which never uses
            # it, every image is decoded again to know what to skip; --validate's check is not repeated)
            source, report = load(cfg.val_split, False)
        if report.skipped and report_skipped:
            target = report.write_skipped(str(cfg.out).rstrip("/") + VAL_SKIP_REPORT_SUFFIX, None)
            print(f"skipped {len(report.skipped)} bad records of --val-data; report: {target}", file=sys.stderr)
    except MatPlusError as exc:
        reason = first_line(exc)
        for named in (f"{cfg.val_data}: ", f"{Path(cfg.val_data).name}: "):  # said once, by the prefix
            reason = reason[len(named):] if reason.startswith(named) else reason
        raise SourceError(f"--val-data {cfg.val_data}: {reason}") from None
    return source


def _grounding_validation(cfg: TrainConfig, which: str):
    """The validation split of --val-data (default: the train data) as grounding data (images with
    their candidate boxes, expressions with their true box: `augment.referring.load_grounding`),
    its first --val-limit images; one line naming it when it cannot be read or holds no expression."""
    from augment.errors import MatPlusError, SourceError, first_line
    from augment.referring import load_grounding

    path, image_root = (cfg.train_data, cfg.image_root) if cfg.val_data is None else (cfg.val_data, cfg.val_image_root)
    try:
        data = load_grounding(path, image_root=image_root).select(cfg.val_split, cfg.val_limit)
    except MatPlusError as exc:
        raise SourceError(f"{which}: {first_line(exc)}") from None
    if not len(data):
        raise SourceError(f"{which}: no referring expressions in split {cfg.val_split!r} of {path}; "
                          "choose another with --val-split or --val-data")
    return data
