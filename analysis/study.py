"""`analysis study`: which pool properties predict robustness, on the bundled sample world.

The study is a chain of cached steps under `out/`; each step writes its result atomically and is
skipped when a re-run finds it done with the same settings, so an interrupted study resumes:

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
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from augment.pool import write_json_atomic

DONE = ".done.json"


def _settings_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(folder: Path, settings: Any) -> bool:
    marker = folder / DONE
    return marker.exists() and json.loads(marker.read_text()).get("settings") == _settings_hash(settings)


def mark_done(folder: Path, settings: Any, **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / DONE, {"settings": _settings_hash(settings), **extra})


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


class Study:
    def __init__(self, config: dict, log: Callable[[str], None] = print):
        self.config = config
        self.out = Path(config["out"])
        self.log = log

    # ------------------------------------------------------------------ 1. the world and its subsets

    def world(self) -> Path:
        folder = self.out / "world"
        settings = self.config["world"]
        if not is_done(folder, settings):
            from augment.sample_world import write_sample

            if folder.exists():
                shutil.rmtree(folder)
            self.log(f"[world] {settings['n']} scenes")
            write_sample(folder, n=settings["n"], seed=settings["seed"])
            mark_done(folder, settings)
        return folder

    def subset(self, name: str, train_scenes: int) -> Path:
        """A Karpathy JSON with the first `train_scenes` train scenes and all val/test scenes."""
        world = self.world()
        folder = self.out / name
        settings = {"world": self.config["world"], "train_scenes": train_scenes}
        if not is_done(folder, settings):
            data = json.loads((world / "dataset_sample.json").read_text())
            kept, seen = [], 0
            for entry in data["images"]:
                if entry["split"] == "train":
                    seen += 1
                    if seen > train_scenes:
                        continue
                kept.append(entry)
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
        if which == "oracle":
            factor = (self.config.get("more_samples") or {}).get("oracle_factor", 3)
            return self.subset("oracle", self.config["finetune_scenes"] * factor)
        return self.subset("finetune", self.config["finetune_scenes"])

    # ------------------------------------------------------------------ 2. pretraining

    def pretrain(self) -> Path:
        folder = self.out / "pretrain"
        settings = {"world": self.config["world"], "model": self.config["model"], **self.config["pretrain"]}
        if not is_done(folder, settings):
            self.log(f"[pretrain] clean, {settings['steps']} steps on every train scene")
            p = self.config["pretrain"]
            train_resumable(folder, {
                "method": "clean", "model": self.config["model"], "source": str(self.world()),
                "max_steps": p["steps"], "batch_size": p["batch_size"], "lr": p["lr"],
                "warmup_steps": max(1, p["steps"] // 20), "seed": p.get("seed", 0),
            })
            mark_done(folder, settings)
        return folder / "ckpt"

    # ------------------------------------------------------------------ 3-4. pools and their scores

    def pool(self, name: str) -> Path:
        """The pool `name`, or `name@nK`: the pool cut to K rows per source item."""
        base, _, cut = name.partition("@n")
        spec = self.config["pools"][base]
        folder = self.out / "pools" / base
        settings = {"spec": spec, "finetune_scenes": self.config["finetune_scenes"], "world": self.config["world"]}
        if not is_done(folder, settings):
            self.log(f"[pool] {base}: {spec['method']} x{spec.get('n', 4)}")
            argv = ["generate", "--method", spec["method"], "--source", str(self.source_dir("finetune")),
                    "--out", str(folder), "--no-progress", "--overwrite"]
            for key, value in spec.items():
                if key != "method":
                    argv += [f"--{key.replace('_', '-')}", str(value)]
            run_augment(argv)
            mark_done(folder, settings)
        if not cut:
            return folder
        selected = self.out / "pools" / f"{base}@n{cut}"
        if not is_done(selected, {**settings, "max_per_item": int(cut)}):
            run_augment(["select", str(folder), "--out", str(selected), "--max-per-item", cut, "--overwrite"])
            mark_done(selected, {**settings, "max_per_item": int(cut)})
        return selected

    def score(self, name: str) -> dict:
        folder = self.pool(name)
        scorer = self.config.get("scorer") or str(self.pretrain())
        settings = {"scorer": scorer, "pool": json.loads((folder / DONE).read_text())["settings"]}
        marker = folder / "scores" / DONE
        if not is_done(marker.parent, settings):
            self.log(f"[score] {name}")
            run_augment(["score", str(folder), "--scorer", scorer, "--source", str(self.source_dir("finetune")), "--no-progress"])
            mark_done(marker.parent, settings)
        return json.loads((folder / "scores.json").read_text())

    # ------------------------------------------------------------------ 5-6. runs and evaluations

    def train(self, spec: RunSpec, seed: int) -> Path:
        folder = self.out / "runs" / spec.folder_name(seed)
        pools = [str(self.pool(p)) for p in spec.pools]
        t = self.config["train"]
        settings = {
            "method": spec.method, "model": str(self.pretrain()), "source": str(self.source_dir(spec.source)),
            "pools": pools, "pool_mode": spec.pool_mode, "seed": seed, "max_steps": t["steps"],
            "batch_size": t["batch_size"], "lr": t["lr"], "warmup_steps": t.get("warmup_steps", 0),
            "eps": t["eps"], "pgd_steps": t["pgd_steps"], "text_attack": t["text_attack"],
            "word_budget": t["word_budget"], "p_original": t.get("p_original", 0.5),
        }
        if not is_done(folder, settings):
            self.log(f"[train] {spec.name} seed {seed}")
            train_settings = dict(settings)
            if spec.method != "mat+":
                train_settings.pop("pools"), train_settings.pop("pool_mode"), train_settings.pop("p_original")
            train_resumable(folder, train_settings)
            mark_done(folder, settings)
        return folder / "ckpt"

    def evaluate(self, name: str, checkpoint: Path, seed: int) -> dict:
        from augment.sample_world import check_caption_of_row
        from models import load_model
        from augment.sources import load_source
        from train.config import parse_fraction
        from train.evaluate import evaluate, markdown_report

        folder = self.out / "evals" / name
        e = self.config["eval"]
        settings = {"checkpoint": str(checkpoint), "eval": e, "seed": seed,
                    "trained": json.loads((checkpoint.parent / DONE).read_text()) if (checkpoint.parent / DONE).exists() else None}
        if not is_done(folder, settings):
            self.log(f"[eval] {name}")
            source, _ = load_source(str(self.source_dir("finetune")))
            options = {"eps": parse_fraction(e["eps"], "eval.eps"), "steps": e["pgd_steps"], "mlm": e["mlm"]}
            report = evaluate(
                load_model(str(checkpoint), kind="retrieval"), source, split=e["split"], attacks=e["attacks"],
                batch_size=e["batch_size"], captions_per_image=e.get("captions_per_image"), limit=e.get("limit"),
                attack_options=options, caption_checker=check_caption_of_row, seed=seed, progress=False,
            )
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "eval.json", report)
            (folder / "eval.md").write_text(markdown_report(report))
            mark_done(folder, settings)
        return json.loads((folder / "eval.json").read_text())

    # ------------------------------------------------------------------ 7. everything, then the report

    def run(self) -> Path:
        from analysis.report import write_report

        config = self.config
        specs = run_specs(config)
        pool_names = sorted({p for spec in specs for p in spec.pools} | set(config["pools"]))
        scores = {name: self.score(name) for name in pool_names}
        pretrained = self.pretrain()
        results: list[dict] = []
        for seed in config["seeds"]:
            results.append({"run": "pretrained", "method": "pretrained", "pools": [], "seed": seed, "group": "main",
                            "eval": self.evaluate(f"pretrained-s{seed}", pretrained, seed)})
        for spec in specs:
            for seed in config["seeds"]:
                checkpoint = self.train(spec, seed)
                results.append({
                    "run": spec.name, "method": spec.method, "pools": spec.pools, "pool_mode": spec.pool_mode,
                    "source": spec.source, "group": spec.group, "n_aug": spec.n_aug, "seed": seed,
                    "eval": self.evaluate(spec.folder_name(seed), checkpoint, seed),
                })
        return write_report(self.out, config, scores, results)


def train_resumable(folder: Path, settings: dict) -> dict:
    """Train into `folder`: resume a killed run of the same settings, replace one of other settings."""
    from train.config import ConfigError
    from train.trainer import train_run

    common = {**settings, "out": str(folder), "progress": False}
    if not folder.exists():
        return train_run(common)
    try:
        return train_run({**common, "resume": True})
    except ConfigError as exc:
        if "settings differ" not in str(exc):
            raise
        return train_run({**common, "overwrite": True})


def run_augment(argv: list[str]) -> None:
    """Run an `augment` sub-command in this process (errors propagate as exceptions)."""
    from augment.cli import build_parser

    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise RuntimeError(f"augment {' '.join(argv)} exited with {code}")
