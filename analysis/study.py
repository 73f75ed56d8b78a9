"""`analysis study`: which pool properties predict robustness, on the bundled sample world.

The study is a chain of cached steps under `out/`; each step writes its result atomically and is
skipped when a re-run finds it done with the same settings (which hold the fingerprints of the
steps it read: a remade pretrained model redoes the scores, runs and evaluations made from the
old one), so an interrupted study resumes; those settings hold the paths inside `out/` relative
to it (`Study.portable`), so a study folder moved or copied elsewhere is reused as it was. The steps:

1. `world/`: the sample world; `finetune/` (its first `finetune_scenes` train scenes plus every
   val/test scene) and `oracle/` (more train scenes) reuse its images;
2. `pretrain/`: clean CLIP training on every train scene: the world's "pretrained CLIP";
3. `pools/<name>/`: one pool per configured generator, built from the fine-tuning scenes;
4. pool scores (in each pool folder) with the pretrained model as scorer;
5. `runs/<run>-s<seed>/`: adversarial fine-tuning of the pretrained model per method, pool and
   seed (the trainer resumes a killed run);
6. `evals/<run>-s<seed>/eval.json`: retrieval under attack, with the world's truth checker
   reporting which attacked captions are still true;
7. `report.md`, `results.json` and PNG plots (see `analysis.report`).

`task: captioning|grounding` runs the same chain for another task through its arm
(`analysis.task_arms`): the arm writes the world, the trainer gets `task`, the arm evaluates
each checkpoint and gives its headline numbers; pool scores and the retrieval-only sections
are left out, and the report is the per-task comparison table.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from analysis.config import generate_arguments, method_train_settings, oracle_factor, run_train_settings
from augment.errors import MatPlusError
from augment.json_records import DamagedRecord, read_json_object
from augment.pool import write_json_atomic

DONE = ".done.json"
STUDY_LOCK = ".study.lock"  # held (flock) by the one study writing into its folder


def read_study_record(path: Path, *keys: str) -> dict:
    """A JSON object the study wrote (a stage's .done.json or .started.json, an eval.json, scores.json,
    results.json), holding `keys`; one line naming it when it is damaged (truncated, edited, not UTF-8, not
    an object, without a key: a JSONDecodeError, AttributeError or KeyError traceback before). Deleting it
    redoes the step that wrote it."""
    try:
        record = read_json_object(path)
        missing = [key for key in keys if key not in record]
        problem = f"no {missing[0]!r}" if missing else None
    except DamagedRecord as damage:
        problem = str(damage)
    if problem is not None:
        raise MatPlusError(f"{path}: damaged ({problem}); delete it to redo the step that wrote it")
    return record


def _settings_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(folder: Path, settings: Any) -> bool:
    marker = folder / DONE
    return marker.exists() and read_study_record(marker).get("settings") == _settings_hash(settings)


def mark_done(folder: Path, settings: Any, **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # each setting's own hash too, so that a re-run can say which one changed (see Study.cached)
    write_json_atomic(folder / DONE, {"settings": _settings_hash(settings), "parts": _part_hashes(settings), **extra})


def _part_hashes(settings: Any) -> dict[str, str]:
    """Each top-level setting's hash ({} for settings that are not a mapping)."""
    return {key: _settings_hash(value) for key, value in settings.items()} if isinstance(settings, dict) else {}


def made(folder: Path) -> str | None:
    """The fingerprint of the cached stage in `folder` (its settings' hash, which holds the
    fingerprints of the stages it read), None if it has none (not made, or not by a study)."""
    record = done_record(folder)
    return record.get("settings") if record else None


def done_record(folder: Path) -> dict | None:
    """The cached stage's record in `folder` (None: not made, or not by a study)."""
    marker = folder / DONE
    return read_study_record(marker) if marker.exists() else None


# how a path inside the study folder is written in a cache key: `<study>/pretrain/ckpt`
IN_STUDY = "<study>"


# a training stage's fingerprint, written before it trains: a killed run resumes only when it was
# started from the same settings and inputs (the trainer compares its own settings only, and the
# pretrained model's path stays the same when its weights are retrained)
STARTED = ".started.json"


@dataclass
class RunSpec:
    """One fine-tuning run of the study (before seeds)."""

    name: str  # e.g. "mat+:scene", "mat+expand:scene", "mat:oracle"
    method: str  # trainer method
    pools: list[str] = field(default_factory=list)  # pool names (or selected pool folders)
    pool_mode: str = "sample"
    source: str = "finetune"  # "finetune" or "oracle"
    group: str = "main"  # main | n_aug | more_samples
    n_aug: int | None = None

    def folder_name(self, seed: int) -> str:
        safe = self.name.replace("+", "plus").replace(":", "-")
        return f"{safe}-s{seed}"


def run_specs(config: dict) -> list[RunSpec]:
    """Every distinct run the config asks for (the same run serves several report sections)."""
    specs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        specs.setdefault(spec.name, spec)

    for method in config["methods"]:
        if method == "mat+":
            for pool in config["pools"]:
                add(RunSpec(f"mat+:{pool}", "mat+", [pool]))
        else:
            add(RunSpec(method, method))
    sweep = config.get("n_aug_sweep") or {}
    if sweep.get("pool"):
        for k in sweep["values"]:
            add(RunSpec(f"mat+:{sweep['pool']}:n{k}", "mat+", [f"{sweep['pool']}@n{k}"], group="n_aug", n_aug=k))
    more = config.get("more_samples") or {}
    if more.get("pool"):
        pool = more["pool"]
        add(RunSpec("mat", "mat", group="more_samples"))
        add(RunSpec(f"mat+expand:{pool}", "mat+", [pool], pool_mode="expand", group="more_samples"))
        add(RunSpec(f"mat+:{pool}", "mat+", [pool], group="more_samples"))
        add(RunSpec("mat:oracle", "mat", source="oracle", group="more_samples"))
    return list(specs.values())


def _takes_device(function: Callable) -> bool:
    """Whether a task arm's evaluate_checkpoint takes `device` (added 2026-12-06): an arm written to the
    older signature got it all the same and stopped the study with a TypeError after training every run."""
    import inspect

    parameters = inspect.signature(function).parameters.values()
    return any(p.name == "device" or p.kind is p.VAR_KEYWORD for p in parameters)


class Study:
    def cached(self, stage: str, folder: Path, settings: Any, in_place: Any = None) -> bool:
        """Whether `folder` holds `stage` made with `settings` (inputs' fingerprints included); an
        older result made otherwise is to be redone, and one line says which and why.

        `in_place`: the same settings with the study's paths as they are now, as keys held them
        before `portable`; such a key still holds while the study folder has not moved, and is
        recorded anew in `settings`' terms so that the folder may be moved from then on."""
        if is_done(folder, settings):
            return True
        marker = folder / DONE
        if in_place is not None and is_done(folder, in_place):
            # the old record stays beside the new one: an evaluation's key holds its run's whole record
            mark_done(folder, settings, in_place=read_study_record(marker))
            return True
        if marker.exists():
            record = read_study_record(marker)
            parts = record.get("parts") or {}
            now = _part_hashes(settings)
            changed = sorted(key for key in set(parts) | set(now) if parts.get(key) != now.get(key)) if parts else []
            # a marker without its parts was written before they were recorded: by an earlier mat-plus,
            # whose settings are hashed otherwise (not "other settings": the config may be unchanged)
            why = (f"made with other {', '.join(changed)}" if changed else "made with other settings or inputs"
                   if "parts" in record else "recorded by an earlier mat-plus, which hashed its settings otherwise")
            self.log(f"[{stage}] {folder.relative_to(self.out) if folder.is_relative_to(self.out) else folder}: "
                     f"redone from scratch ({why})")
        return False

    def __init__(self, config: dict, log: Callable[[str], None] = print):
        self.config = config
        self.out = Path(config["out"])
        self.log = log
        self.task = config.get("task", "retrieval")
        self.arm = None
        if self.task != "retrieval":
            from analysis.task_arms import load_arm

            self.arm = load_arm(self.task)

    def portable(self, settings: dict, *keys: str) -> dict:
        """`settings` with the paths at `keys` (a path or a list of them) that lie inside the study
        folder written relative to it (`<study>/pretrain/ckpt`), so that a cache key holds where in
        the study an input is, not where the study is; paths elsewhere (a `scorer`, another study's
        pretrained model) stay as given. What an input at the same place holds is told by the
        fingerprints beside its path."""
        def relative(path: str) -> str:
            place = Path(path)
            return f"{IN_STUDY}/{place.relative_to(self.out).as_posix()}" if place.is_relative_to(self.out) else path

        return {key: ([relative(p) for p in value] if isinstance(value, list) else relative(value)) if key in keys
                else value for key, value in settings.items()}

    def world_key(self) -> dict:
        """The world's settings in cache keys (retrieval's as they always were; another task's world may differ)."""
        return self.config["world"] if self.arm is None else {**self.config["world"], "task": self.task}

    def task_settings(self) -> dict:
        """What a non-retrieval run adds to its trainer settings (nothing for retrieval: its caches stay valid)."""
        return {} if self.arm is None else {"task": self.task}

    # ------------------------------------------------------------------ 1. the world and its subsets

    def world(self) -> Path:
        folder = self.out / "world"
        settings = self.world_key()
        if not self.cached("world", folder, settings):
            from augment.world.writer import write_sample

            if folder.exists():
                shutil.rmtree(folder)
            self.log(f"[world] {settings['n']} scenes")
            write = self.arm.write_world if self.arm is not None else write_sample
            write(folder, n=settings["n"], seed=settings["seed"])
            mark_done(folder, settings)
        return folder

    def subset(self, name: str, train_scenes: int | None, skip: int = 0, captions: dict | None = None) -> Path:
        """A Karpathy JSON with train scenes `skip` .. `skip + train_scenes` (None: all the rest)
        and all val/test scenes; `captions` ({per_image, choice}) thins the train captions."""
        world = self.world()
        folder = self.out / name
        settings = {"world": self.world_key(), "train_scenes": train_scenes, "skip": skip, "captions": captions}
        if skip == 0 and captions is None:  # the settings subsets had before these options (keeps caches valid)
            settings = {"world": self.world_key(), "train_scenes": train_scenes}
        if not self.cached(name, folder, settings):
            data = json.loads((world / "dataset_sample.json").read_text())
            kept, seen = [], 0
            for entry in data["images"]:
                if entry["split"] == "train":
                    seen += 1
                    if seen <= skip or (train_scenes is not None and seen > skip + train_scenes):
                        continue
                    if captions is not None:
                        entry = {**entry, "sentences": keep_captions(entry["sentences"], seen - skip - 1, captions)}
                        entry["sentids"] = [c["sentid"] for c in entry["sentences"]]
                kept.append(entry)
            train_scenes = seen - skip if train_scenes is None else train_scenes
            if seen < train_scenes:
                self.log(f"[{name}] the world has only {seen} train scenes (asked for {train_scenes})")
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "dataset_sample.json", {**data, "images": kept})
            link = folder / "images"
            if not link.exists():
                os.symlink(os.path.relpath(world / "images", folder), link)
            mark_done(folder, settings)
        return folder

    def source_dir(self, which: str) -> Path:
        captions = self.config.get("finetune_captions")
        if which == "oracle":
            return self.subset("oracle", self.config["finetune_scenes"] * oracle_factor(self.config),
                               captions=captions)
        return self.subset("finetune", self.config["finetune_scenes"], captions=captions)

    # ------------------------------------------------------------------ 2. pretraining

    def pretrain(self) -> Path:
        if self.config["pretrain"].get("checkpoint"):  # another study's pretrained model (same world)
            from analysis.config import pretrain_checkpoint_problem

            problem = pretrain_checkpoint_problem(self.config)  # checked at load too; a folder may go since
            if problem:
                from augment.errors import MatPlusError

                raise MatPlusError(f"study config: {problem}")
            return Path(self.config["pretrain"]["checkpoint"]).expanduser()
        folder = self.out / "pretrain"
        settings = {"world": self.world_key(), "model": self.config["model"], **self.config["pretrain"], **self.task_settings()}
        if settings.get("checkpoint", "") is None:  # `checkpoint: null` pretrains here, as no key does: the same key
            settings.pop("checkpoint")
        rest = settings.pop("scenes", "all") == "rest"
        if rest:  # pretrained on the scenes the fine-tuning set lacks: fine-tuning brings new scenes
            settings["skip_scenes"] = self.config["finetune_scenes"]
        if not self.cached("pretrain", folder, settings):
            which = f"the {settings['skip_scenes']}+ train scenes not fine-tuned on" if rest else "every train scene"
            self.log(f"[pretrain] clean, {settings['steps']} steps on {which}")
            p = self.config["pretrain"]
            source = self.subset("pretrain-rest", None, skip=self.config["finetune_scenes"]) if rest else self.world()
            train_resumable(folder, {
                "method": "clean", "model": self.config["model"], "train_data": str(source),
                "max_steps": p["steps"], "batch_size": p["batch_size"], "lr": p["lr"],
                "warmup": max(1, p["steps"] // 20), "seed": p.get("seed", 0), **self.task_settings(),
            }, made_from=_settings_hash(settings), study=self.out, log=self.log)
            mark_done(folder, settings)
        return folder / "ckpt"

    # ------------------------------------------------------------------ 3-4. pools and their scores

    def pool(self, name: str) -> Path:
        """The pool `name`, or `name@nK`: the pool cut to K rows per source item."""
        base, _, cut = name.partition("@n")
        spec = self.config["pools"][base]
        folder = self.out / "pools" / base
        settings = {"spec": spec, "finetune_scenes": self.config["finetune_scenes"], "world": self.world_key()}
        if self.config.get("finetune_captions") is not None:
            settings["finetune_captions"] = self.config["finetune_captions"]
        if not self.cached("pool", folder, settings):
            source = self.source_dir("finetune")  # the world first, with its own log line: it followed this one's
            self.log(f"[pool] {base}: {spec['method']} x{spec.get('n', 4)}")
            run_augment(["generate", *generate_arguments(spec), "--source", str(source),
                         "--out", str(folder), "--no-progress", "--overwrite"])
            mark_done(folder, settings)
        if not cut:
            return folder
        selected = self.out / "pools" / f"{base}@n{cut}"
        if not self.cached("pool", selected, {**settings, "max_per_item": int(cut)}):
            run_augment(["select", str(folder), "--out", str(selected), "--max-per-item", cut, "--overwrite"])
            mark_done(selected, {**settings, "max_per_item": int(cut)})
        return selected

    def score(self, name: str) -> dict:
        folder = self.pool(name)
        scorer = self.config.get("scorer") or str(self.pretrain())
        settings = {"scorer": scorer, "pool": read_study_record(folder / DONE, "settings")["settings"]}
        if not self.config.get("scorer"):  # the study's pretrained model: its weights change under the same path
            settings["pretrained_fingerprint"] = made(Path(scorer).parent)
        marker = folder / "scores" / DONE
        key = self.portable(settings, "scorer")
        # scores.json deleted (as its damage report says): scored again, not [Errno 2]
        if not ((folder / "scores.json").is_file() and self.cached("score", marker.parent, key, in_place=settings)):
            self.log(f"[score] {name}")
            run_augment(["score", str(folder), "--scorer", scorer, "--source", str(self.source_dir("finetune")), "--no-progress"])
            mark_done(marker.parent, key)
        return read_study_record(folder / "scores.json")

    # ------------------------------------------------------------------ 5-6. runs and evaluations

    def train(self, spec: RunSpec, seed: int) -> Path:
        from train.config import OUTPUT_NEUTRAL_SETTINGS

        folder = self.out / "runs" / spec.folder_name(seed)
        pools = [str(self.pool(p)) for p in spec.pools]
        # the method's `train:` settings (analysis.config.method_train_settings), then what the study sets
        settings = {
            **run_train_settings(method_train_settings(self.config["train"], spec.method), pooled=bool(pools),
                                 pool_mode=spec.pool_mode),
            "method": spec.method, "model": str(self.pretrain()), "train_data": str(self.source_dir(spec.source)),
            "seed": seed, **self.task_settings(),
        }
        if pools:
            settings.update(pools=pools, pool_mode=spec.pool_mode)
        validation = self.config.get("validation")
        # validation also reads the evaluation's attack settings and the headline (Study.validator):
        # left out, a run chose its best/ and drew its curve under settings no longer in force
        # settings that change nothing the run makes (where its metrics also go, its loader workers, how
        # often it saves): adding `report_to: tensorboard` or `workers: 8` to train: retrained and
        # re-evaluated every finished run from scratch
        made_by = {key: value for key, value in settings.items() if key not in OUTPUT_NEUTRAL_SETTINGS}
        marker = dict(made_by, validation=validation, validated_by=self.validation_reads()) if validation \
            else dict(made_by)
        # what the run reads, by the fingerprints of the stages that made it: the paths above stay the
        # same when the pretrained model, a pool or the fine-tuning set is remade from other settings
        marker.update(pretrained_fingerprint=made(Path(settings["model"]).parent),
                      pool_fingerprints=[made(Path(p)) for p in pools],
                      source_fingerprint=made(Path(settings["train_data"])))
        key = self.portable(marker, "model", "train_data", "pools")
        if not self.cached("train", folder, key, in_place=marker):
            self.log(f"[train] {spec.name} seed {seed}")
            validator = self.validator(folder, seed) if validation else None
            train_resumable(folder, settings, validator, made_from=_settings_hash(key),
                            made_in_place=_settings_hash(marker), study=self.out, log=self.log)
            mark_done(folder, key)
        return folder / "ckpt"

    def validation_reads(self) -> dict:
        """What a run's validation reads besides `validation:` (see `validator`): part of its cache key."""
        from analysis.config import eval_attack_options

        v, e = self.config["validation"], self.config["eval"]
        return {"attack": v.get("attack", self.config.get("headline_attack", "sga")),
                "captions": self.config.get("headline_captions", "meaning_preserved"),
                "batch_size": v.get("batch_size", e["batch_size"]), "attack_options": eval_attack_options(e)}

    def validator(self, folder: Path, seed: int):
        """The trainer callback validating a run every `validation.every` steps (see train.validation)."""
        from augment.world.truth import check_caption_of_row
        from augment.sources import load_source
        from train.validation import ValidationSettings, Validator

        v = dict(self.config["validation"])
        reads = self.validation_reads()  # the evaluation's attack settings, on the validation split
        settings = ValidationSettings(
            every=int(v["every"]), attack=reads["attack"],
            split=v.get("split", "val"), limit=v.get("limit", 50), captions_per_image=v.get("captions_per_image", 2),
            batch_size=reads["batch_size"], captions=reads["captions"], attack_options=reads["attack_options"], seed=seed)
        source, _ = load_source(str(self.source_dir("finetune")))
        return Validator(folder, source, settings, caption_checker=check_caption_of_row, log=self.log)

    def eval_device(self) -> str:
        """Where the final evaluations run: the CPU under `train: {cpu: true}`, else cuda when torch sees a GPU,
        else the CPU (`augment.devices.default_device`, as `train eval`'s default): where the trainer trained,
        except on Apple silicon, where accelerate trains on MPS and this stays on the CPU. They loaded every
        checkpoint on the CPU: a study on a GPU machine trained there and then attacked on the host."""
        from augment.devices import default_device

        return "cpu" if self.config["train"].get("cpu") else default_device()

    def evaluate(self, name: str, checkpoint: Path, seed: int) -> dict:
        """The evaluation of `checkpoint` (cached); a run of this study (`checkpoint` inside `out`) is held with
        the trainer's own lock meanwhile (`train.run_folder.lock_run_folder`): a `train ... --resume` of that run
        by hand is refused while the study evaluates it, and the study stops in one line while one runs (it
        evaluated whichever checkpoint the other's saves had left, as the run's finished one)."""
        import contextlib

        from train.run_folder import lock_run_folder

        run = Path(checkpoint).parent
        inside = run.resolve().is_relative_to(self.out.resolve())
        with lock_run_folder(run, True, 1) if inside and run.is_dir() else contextlib.nullcontext():
            return self._evaluate(name, checkpoint, seed)

    def _evaluate(self, name: str, checkpoint: Path, seed: int) -> dict:
        from augment.world.truth import check_caption_of_row
        from models import load_model
        from analysis.config import eval_attack_options
        from augment.sources import load_source
        from train.eval_common import _checkpoint_step, record_checkpoint_steps
        from train.eval_report import EVAL_JSON, write_report
        from train.evaluate import evaluate, markdown_report

        folder = self.out / "evals" / name
        e = self.config["eval"]
        trained = done_record(checkpoint.parent)
        settings = {"checkpoint": str(checkpoint), "eval": e, "seed": seed,
                    "trained": {k: v for k, v in trained.items() if k != "in_place"} if trained else None}
        # a key made before `portable` held the run's record as it was then (see Study.cached)
        in_place = dict(settings, trained=trained.get("in_place", trained)) if trained else settings
        key = self.portable(settings, "checkpoint")
        # an eval.json deleted (as its damage report says) redoes the evaluation: it was [Errno 2] after
        made = (folder / EVAL_JSON).is_file() and self.cached("eval", folder, key, in_place=in_place)
        step = _checkpoint_step(Path(checkpoint))  # which weights: a run extended by hand since has another
        made = made and self._same_checkpoint_step(folder, step)
        if self.arm is not None and not made:
            self.log(f"[eval] {name}")
            where = {"device": self.eval_device()} if _takes_device(self.arm.evaluate_checkpoint) else {}
            if not where:  # an arm written before 2026-12-06 (no device): it loads where it chooses, as it did
                self.log(f"  (the {self.task} arm's evaluate_checkpoint takes no device: not given one)")
            self.arm.evaluate_checkpoint(checkpoint, self.source_dir("finetune"), e, seed, folder, **where)
            mark_done(folder, key, checkpoint_step=step)
        if self.arm is None and not made:  # (the arm's evaluation is done above)
            self.log(f"[eval] {name}")
            source, _ = load_source(str(self.source_dir("finetune")))
            options = eval_attack_options(e)
            report = evaluate(
                load_model(str(checkpoint), kind="retrieval", device=self.eval_device()), source, split=e["split"], attacks=e["attacks"],
                batch_size=e["batch_size"], captions_per_image=e.get("captions_per_image"), limit=e.get("limit"),
                attack_options=options, caption_checker=check_caption_of_row, seed=seed, progress=False,
            )
            record_checkpoint_steps(report, step, None, str(checkpoint))  # as `train eval` records them
            write_report(report, folder, markdown_report)  # the same eval.json / eval.md as `train eval`
            mark_done(folder, key, checkpoint_step=step)
        report = read_study_record(folder / EVAL_JSON)
        from analysis.cli import _shape_problem  # what `analysis compare` checks of an eval.json

        if problem := _shape_problem(report):
            raise MatPlusError(f"{folder / EVAL_JSON}: damaged ({problem}); delete it to redo the step that wrote it")
        write = self.arm.write_report if self.arm is not None else lambda r, f: write_report(r, f, markdown_report)
        return renamed_checkpoint(report, checkpoint, self.out, folder, write)

    def _same_checkpoint_step(self, folder: Path, step: int | None) -> bool:
        """Whether the evaluation cached in `folder` is of the checkpoint's weights now: its marker's
        `checkpoint_step` (the step of `train_state/state.json` when it was evaluated) is the checkpoint's
        step. The key hashes the settings, not the weights: a run extended by hand (`train ... --resume
        --max-steps N`) after the study marked it done kept its old evaluation. A marker written before the
        step was recorded holds as it did (a study folder of an earlier mat-plus is not evaluated again)."""
        record = done_record(folder) or {}
        if "checkpoint_step" not in record or record["checkpoint_step"] == step:
            return True
        self.log(f"[eval] {folder.relative_to(self.out) if folder.is_relative_to(self.out) else folder}: redone "
                 f"(its checkpoint is at step {step} now, evaluated at step {record['checkpoint_step']})")
        return False

    # ------------------------------------------------------------------ 7. everything, then the report

    def run(self) -> Path:
        """Every step (cached ones skipped), then the report; one log line per step, no library progress bars."""
        from augment.atomic import sole_writer

        self._check_out()
        with sole_writer(self.out, STUDY_LOCK, "another analysis study is writing here (its pools, runs and "
                                               "evaluations would be made twice at once); wait for it to finish"):
            return self._run_quietly()

    def _run_quietly(self) -> Path:
        from augment.progress import quiet_progress_bars

        # pools are written and read many times, checkpoints loaded as often: their bars would swamp the log
        with quiet_progress_bars(("datasets", "transformers")):
            return self._run()

    def _check_out(self) -> None:
        """Refuse an --out that holds something other than a study (a training run, a pool, a source):
        the study wrote its world, pools and runs among those files (augment generate refuses such a folder)."""
        if self.out.is_file():
            raise MatPlusError(f"{self.out}: is a file, not a study folder; choose another out")
        if (self.out.is_dir() and any(path.name != STUDY_LOCK for path in self.out.iterdir())
                and not (self.out / "world").is_dir()):
            raise MatPlusError(f"{self.out}: holds other files and no study (no world/ of one): choose another out "
                               "(an empty or new folder, or an earlier study's)")

    def _run(self) -> Path:
        from analysis.report import write_report

        if self.arm is not None:
            return self._run_task()
        config = self.config
        specs = run_specs(config)
        if "world-mlm" in (config["eval"].get("mlm"), config["train"].get("mlm")):
            from augment.world_mlm import world_mlm_dir

            world_mlm_dir(log=self.log)  # trained once (about 30 s), then cached with the tiny models
        pool_names = sorted({p for spec in specs for p in spec.pools} | set(config["pools"]))
        scores = {name: self.score(name) for name in pool_names}
        pretrained = self.pretrain()
        results: list[dict] = []
        for seed in config["seeds"]:
            results.append({"run": "pretrained", "method": "pretrained", "pools": [], "seed": seed, "group": "main",
                            "eval": self.evaluate(f"pretrained-s{seed}", pretrained, seed)})
        # seed by seed, so an interrupted study already has every method for its first seeds
        for seed, spec in [(seed, spec) for seed in config["seeds"] for spec in specs]:
            checkpoint = self.train(spec, seed)
            entry = {
                "run": spec.name, "method": spec.method, "pools": spec.pools, "pool_mode": spec.pool_mode,
                "source": spec.source, "group": spec.group, "n_aug": spec.n_aug, "seed": seed,
                "eval": self.evaluate(spec.folder_name(seed), checkpoint, seed),
            }
            if config.get("validation"):
                from train.validation import BEST_DIR, read_curve

                entry["curve"] = read_curve(checkpoint.parent)
                best = checkpoint.parent / BEST_DIR
                entry["best_step"] = read_study_record(best / "validation.json", "step")["step"]
                # the last step's weights are the best ones: the same evaluation
                entry["eval_best"] = (entry["eval"] if entry["best_step"] == config["train"]["max_steps"]
                                      else self.evaluate(spec.folder_name(seed) + "-best", best, seed))
            results.append(entry)
        return write_report(self.out, config, scores, results)


    def _run_task(self) -> Path:
        """Another task's study: pretrained model, then every run seed by seed, each evaluated by the arm."""
        from analysis.report import write_task_report

        config = self.config
        specs = run_specs(config)
        if "world-mlm" in (config["eval"].get("mlm"), config["train"].get("mlm")):
            from augment.world_mlm import world_mlm_dir

            world_mlm_dir(log=self.log)
        pretrained = self.pretrain()
        results: list[dict] = []
        for seed in config["seeds"]:
            report = self.evaluate(f"pretrained-s{seed}", pretrained, seed)
            results.append({"run": "pretrained", "method": "pretrained", "pools": [], "seed": seed, "group": "main",
                            "headline": self.arm.headline(report), "eval": report})
        for seed, spec in [(seed, spec) for seed in config["seeds"] for spec in specs]:
            report = self.evaluate(spec.folder_name(seed), self.train(spec, seed), seed)
            results.append({"run": spec.name, "method": spec.method, "pools": spec.pools, "pool_mode": spec.pool_mode,
                            "source": spec.source, "group": spec.group, "seed": seed,
                            "headline": self.arm.headline(report), "eval": report})
        return write_task_report(self.out, config, results)


def former_study(recorded: Path, place: tuple[str, ...]) -> Path | None:
    """The folder a moved study was in when it recorded `recorded`, the path of what now lies at
    `place` inside it (`recorded` less that ending); None when `recorded` does not end in `place`."""
    if recorded.parts[len(recorded.parts) - len(place):] != place:
        return None
    return Path(*recorded.parts[:len(recorded.parts) - len(place)])


def renamed_checkpoint(report: dict, checkpoint: Path, study: Path, folder: Path,
                       write: Callable[[dict, Path], Any]) -> dict:
    """The evaluation `report` in `folder` naming `checkpoint` where it is now, rewritten there
    (eval.json and eval.md, atomically, by the task's `write`) when it names the checkpoint at its
    place in the `study` folder before that folder was moved or copied: its cache key (paths
    relative to the study) holds, so it is this checkpoint's evaluation, but its model names
    (`model_id`, grounding's settings.checkpoint) and any other path inside the old study folder
    (grounding's settings.source) were those of the old place, and `analysis compare`, results.json
    and the report showed a path that may no longer exist. Unchanged otherwise (a fresh evaluation
    names `checkpoint`; a checkpoint outside the study never moved with it)."""
    named = (report.get("victim") or report.get("model") or {}).get("name")
    # the folder `analysis compare` tells models apart by (absolute: also stale when the names, relative, are not)
    # (missing in a retrieval evaluation the study wrote before the key, ad519a0: recorded as a fresh one is; an
    # arm's report records what its command does, and only retrieval's transfer tables tell models apart by it)
    settings, recorded = report.get("settings"), (report.get("settings") or {}).get("checkpoint_path")
    stale = isinstance(settings, dict) and recorded != str(checkpoint.resolve()) and (
        isinstance(recorded, str) or (recorded is None and report.get("task", "retrieval") == "retrieval"))
    old_study = None
    if isinstance(named, str) and named != str(checkpoint) and checkpoint.is_relative_to(study):
        old_study = former_study(Path(named), checkpoint.relative_to(study).parts)  # place: ("runs", "mat-s0", "ckpt")
    if old_study is None:
        if not stale:
            return report
        report = {**report, "settings": {**report["settings"], "checkpoint_path": str(checkpoint.resolve())}}
        write(dict(report), folder)
        return report

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: moved(v) for key, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str) and (value == named or (old_study.parts and Path(value).is_relative_to(old_study))):
            return str(study / Path(value).relative_to(old_study))
        return value

    report = moved(report)
    if stale:
        report["settings"]["checkpoint_path"] = str(checkpoint.resolve())
    write(dict(report), folder)  # a copy: the captioning writer takes keys out of what it writes
    return report


def keep_captions(sentences: list[dict], image: int, captions: dict) -> list[dict]:
    """`captions["per_image"]` of an image's sentences: its first ones, or (choice rotate) those
    from index `image` mod their number on, so consecutive images keep different wordings."""
    k = min(int(captions["per_image"]), len(sentences))
    start = image % len(sentences) if captions.get("choice", "rotate") == "rotate" else 0
    return [sentences[(start + i) % len(sentences)] for i in range(k)]


def train_resumable(folder: Path, settings: dict, validator=None, made_from: str | None = None,
                    made_in_place: str | None = None, study: Path | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Train into `folder`: resume a killed run of the same settings, replace one of other settings (or
    of a pool made again since: the trainer refuses that resume, `--resume: pool NAME is another pool`; or
    whose checkpoint an earlier mat-plus trained otherwise: `train.checkpoint.TRAINED_OTHERWISE`).

    `made_from` (the stage's fingerprint: its settings and its inputs') is recorded before training;
    a run in `folder` started from another (or none recorded) is trained again from scratch, never
    resumed: its checkpoint may hold weights fine-tuned from another pretrained model.
    `made_in_place`: the same fingerprint as recorded before it held paths relative to the `study`
    folder (`Study.portable`), accepted too. A run started in the `study` folder at another place
    (moved or copied since) resumes as it would have there (`relocate_run`).

    With a `validator` (train.validation.Validator) the run is validated every K steps and once
    more after its last step, by the trainer (its scores in the run's loggers too). A run found finished
    (before the study marked it done) keeps its last line where settled, else its checkpoint's weights are
    validated again."""
    from train.checkpoint import TRAINED_OTHERWISE
    from train.data import POOL_MADE_AGAIN
    from train.config import ConfigError, resolve_config
    from train.trainer import Trainer

    def run(extra: dict) -> dict:
        # the trainer runs the validator as --val-frequency's: every K steps, then after the final checkpoint
        # is saved (before summary.json), its scores to the run's loggers
        trainer = Trainer(resolve_config({**settings, "out": str(folder), "progress": False, **extra}), validator=validator)
        summary = trainer.run()
        if validator is not None and trainer.finished_summary is not None:
            # found finished (a study of an older version was killed in the validation it ran after the trainer's
            # summary): the last line stands if settled, else the checkpoint's weights are validated again
            from models import load_model
            from train.checkpoint import checkpoint_dir

            weights = load_model(str(checkpoint_dir(folder)), device=trainer.accelerator.device)
            validator.validate_last(trainer.total_steps, model=weights)
        return summary

    from train.run_folder import RUN_OUTPUTS

    if made_from is not None:
        started = folder / STARTED
        recorded = read_study_record(started).get("made_from") if started.exists() else None
        has_run = any((folder / name).exists() for name in RUN_OUTPUTS)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(started, {"made_from": made_from})
        # a run with nothing recorded (killed before it was, or by an older version) is never resumed
        accepted = {made_from} | ({made_in_place} if made_in_place is not None else set())
        if has_run and recorded not in accepted:
            log(f"{folder.name}: its run was started from other settings or inputs: trained from scratch, not resumed")
            return run({"overwrite": True})
        if not has_run:
            return run({})
        if study is not None:
            relocate_run(folder, settings, study)
    if not folder.exists():
        return run({})
    try:
        return run({"resume": True})
    except ConfigError as exc:
        if POOL_MADE_AGAIN in str(exc):
            # a pool made again since (same settings, another finish stamp: deleted and re-made): the trainer
            # refuses the resume and says --overwrite, which the study's user has no way to give
            log(f"{folder.name}: a pool it trained on is another pool than the run trained on (made again since): "
                "trained from scratch, not resumed")
        elif TRAINED_OTHERWISE in str(exc):
            # a checkpoint of an earlier training format (`train.checkpoint.TRAINING_FORMAT`) whose training this
            # version does otherwise: the trainer refuses the resume and says --overwrite, as above
            log(f"{folder.name}: its checkpoint was trained otherwise by an earlier mat-plus (training format): "
                "trained from scratch, not resumed")
        elif "settings differ" not in str(exc):
            raise
        return run({"overwrite": True})


def relocate_run(folder: Path, settings: dict, study: Path) -> None:
    """Point the config.yaml of the run in `folder` (inside the `study` folder) at the study's
    place now when the study folder was moved since the run started: the trainer refuses to resume
    a run whose model, train data or pools are other paths, and the study then trained it again
    from scratch. Only for a run the study started from the same settings and inputs (compared
    by their places in the study and their fingerprints); a saved path is replaced only by the one
    of `settings` (the trainer's now) at its place in the moved study, and the trainer compares
    every other setting as on any resume (and writes config.yaml anew when it trains on)."""
    import yaml

    from augment.atomic import atomic_write_text
    from augment.yaml_settings import load_settings_yaml
    from train.config import config_path

    path = config_path(folder)
    saved = load_settings_yaml(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(saved, dict) or not isinstance(saved.get("out"), str):
        return
    started_in = Path(saved["out"])
    old_study = former_study(started_in, folder.relative_to(study).parts)  # place: ("runs", "mat-s0") or ("pretrain",)
    if started_in == folder or old_study is None:
        return

    def moved(value: Any) -> Any:
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str) and Path(value).is_relative_to(old_study):
            return str(study / Path(value).relative_to(old_study))
        return value

    relocated = dict(saved, out=str(folder))
    for key in ("model", "train_data", "pools"):
        if key in saved and saved[key] != settings.get(key) and moved(saved[key]) == settings.get(key):
            relocated[key] = settings[key]
    atomic_write_text(path, yaml.safe_dump(relocated, sort_keys=False))


def run_augment(argv: list[str]) -> None:
    """Run an `augment` sub-command in this process (errors propagate as exceptions)."""
    from augment.cli import build_parser

    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise RuntimeError(f"augment {' '.join(argv)} exited with {code}")
