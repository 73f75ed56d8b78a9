"""The study's grounding arm (`task: grounding`): the world, evaluation and headline numbers.

The study (`analysis/study.py`) finds this module through `analysis/task_arms.py` and calls:

* `write_world(folder, n, seed)`: the sample world with referring expressions (captions = two
  expressions per object, true boxes in the JSON: `augment make-sample --expressions 2`);
* `evaluate_checkpoint(...)`: grounding accuracy, clean and under every configured attack
  (`train.evaluate_grounding`), on the world's test split, with the world's truth checker;
  eval.json / eval.md through `write_report` (`train.eval_report.write_report`);
* `headline(report)`: clean and robust accuracy (robust = under `HEADLINE_ATTACK`, counting an
  attacked expression the checker says no longer singles out its object as not attacked, as
  the retrieval arm's `headline_captions: meaning_preserved`), with the random-box baseline.

Eval settings (`DEFAULT_EVAL`, overridden by the study config's `eval`): split, limit (images),
batch_size (images per attack batch), attacks, attack_eps, pgd_steps, pgd_step_size (None:
attack_eps / 4), mlm, top_k, word_budget, objective (itm | heat). Other keys are refused.
"""
from __future__ import annotations

from pathlib import Path

MODEL = "tiny-albef"
METHODS = ("clean", "mat", "mat+")
HEADLINE_ATTACK = "sga"  # the retrieval study's headline attack too
EXPRESSIONS_PER_OBJECT = 2


def attack_names() -> tuple[str, ...]:
    """The attacks `eval.attacks` may name (imported when a grounding study is checked)."""
    from train.attacks.grounding import GROUNDING_ATTACKS

    return GROUNDING_ATTACKS


DEFAULT_EVAL: dict = {
    "split": "test", "limit": None, "batch_size": 16,
    "attacks": ["clean", "pgd", "bert-attack", "sep", "co-attack", "sga"],
    "attack_eps": "2/255", "pgd_steps": 10, "pgd_step_size": None, "mlm": "tiny-mlm", "top_k": 10, "word_budget": 1, "objective": "itm",
}


def write_world(folder: Path, n: int, seed: int) -> None:
    """The sample world with referring expressions (Karpathy JSON + images/) in `folder`."""
    from augment.world.writer import write_sample

    write_sample(folder, n=n, seed=seed, expressions=EXPRESSIONS_PER_OBJECT)


def attack_options(eval_settings: dict, seed: int) -> dict:
    """`build_grounding_attack` options from the study's eval settings."""
    from analysis.config import eval_pgd_step_size
    from train.attacks.settings import pgd_step_size
    from train.config import parse_fraction

    e = {**DEFAULT_EVAL, **eval_settings}
    eps = parse_fraction(e["attack_eps"], "eval.attack_eps")
    step = eval_pgd_step_size(e)
    return {"objective": e["objective"], "eps": eps, "steps": int(e["pgd_steps"]),
            "step_size": pgd_step_size(eps, step),
            "mlm": e["mlm"], "top_k": int(e["top_k"]), "budget": int(e["word_budget"]), "seed": seed}


def evaluate_checkpoint(checkpoint: str | Path, source_dir: str | Path, eval_settings: dict, seed: int,
                        folder: str | Path, device: str = "cpu") -> dict:
    """Grounding accuracy of `checkpoint` on `device` on the world `source_dir`, clean and under attack;
    writes folder/eval.json and eval.md and returns the report."""
    import torch

    from augment.referring import load_grounding
    from models import load_model
    from train.evaluate_grounding import evaluate_grounding, world_expression_checker

    e = {**DEFAULT_EVAL, **eval_settings}
    torch.manual_seed(seed)
    model = load_model(str(checkpoint), device=device)
    data = load_grounding(source_dir).select(e["split"], e["limit"])
    report = evaluate_grounding(model, data, attacks=list(e["attacks"]), attack_options=attack_options(e, seed),
                                batch_size=int(e["batch_size"]), expression_checker=world_expression_checker,
                                seed=seed)
    report["settings"].update({"source": str(source_dir), "split": e["split"], "checkpoint": str(checkpoint),
                               "command": "analysis study (grounding arm)"})
    write_report(report, folder)
    return report


def write_report(report: dict, folder: str | Path) -> None:
    """folder/eval.json and eval.md of a grounding `report` (also the study's, rewriting one it reuses)."""
    from train.eval_report import write_report as write
    from train.evaluate_grounding import markdown_grounding_report

    write(report, folder, markdown_grounding_report)


def headline(report: dict) -> dict:
    """Clean and robust grounding accuracy (percent); robust = under `HEADLINE_ATTACK` with
    meaning-preserving expressions (the raw number beside it), else the clean one."""
    attacks = report["attacks"]
    name = HEADLINE_ATTACK if HEADLINE_ATTACK in attacks else "clean"
    robust = attacks[name]
    return {
        "metric": "accuracy", "clean": attacks["clean"]["accuracy"],
        "robust": robust.get("accuracy_meaning_preserved", robust["accuracy"]), "attack": name,
        "robust_all": robust["accuracy"], "random_box": report["baselines"]["random_box"],
        "oracle": report["baselines"]["oracle"],
    }
