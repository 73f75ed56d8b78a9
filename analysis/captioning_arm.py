"""The study's captioning arm (`task: captioning`, see `analysis.task_arms`).

The study pretrains `tiny-captioner` clean on the sample world, fine-tunes it with clean, tecoa,
mat and mat+ (`train ... --task captioning`), evaluates every checkpoint here and reports
`headline(report)`: clean and robust CIDEr (robust = under untargeted PGD) and the share of
generated captions the world's truth checker calls true.

`eval` keys (defaults in DEFAULT_EVAL): split, limit, captions_per_image (None: all), batch_size,
attacks (clean, pgd, pgd-targeted; prompt, prompt-pgd need `prompt`), attack_eps, pgd_steps,
pgd_step_size (None: attack_eps / 4), target,
prompt, min_length, mlm (of the prompt attacks), meteor (None: when Java is present).
"""
from __future__ import annotations

from pathlib import Path

MODEL = "tiny-captioner"
METHODS = ("clean", "tecoa", "mat", "mat+")  # fare is an embedding-space method: no captioning counterpart
HEADLINE_ATTACK = "pgd"  # the untargeted image attack: the captioning counterpart of robust R@1


def attack_names() -> tuple[str, ...]:
    """The attacks `eval.attacks` may name (imported when a captioning study is checked)."""
    from train.attacks.captioning import CAPTION_ATTACK_NAMES

    return CAPTION_ATTACK_NAMES


DEFAULT_EVAL = {
    "split": "test", "limit": 100, "captions_per_image": None, "batch_size": 50,
    "attacks": ["clean", "pgd", "pgd-targeted"],
    # the attack papers' budget; the tiny captioner's beam-searched captions barely move below
    # about 8/255 (tests/test_captioning.py), so bundled captioning studies set attack_eps 8/255
    "attack_eps": "2/255", "pgd_steps": 10, "pgd_step_size": None, "target": "a black triangle", "prompt": None,
    "min_length": 1,  # BLIP's 5-token minimum would pad the world's short captions
    "mlm": "default", "meteor": None,
}


def write_world(folder: Path, n: int, seed: int) -> None:
    """The plain sample world: a captioner reads the same images and captions as retrieval."""
    from augment.world.writer import write_sample

    write_sample(folder, n=n, seed=seed)


def evaluate_checkpoint(checkpoint: str | Path, source_dir: str | Path, eval_settings: dict, seed: int,
                        folder: str | Path, device: str = "cpu") -> dict:
    """Evaluate `checkpoint` on `device` on `source_dir` under every configured attack; writes folder/eval.json,
    eval.md and captions.jsonl (train.eval_report.write_report) and returns the report."""
    from augment.world.truth import check_caption_of_row
    from augment.sources import load_source
    from models import load_model
    from analysis.config import eval_pgd_step_size
    from train.attacks.settings import pgd_step_size
    from train.config import parse_fraction
    from train.evaluate_captioning import evaluate_captioning

    e = {**DEFAULT_EVAL, **eval_settings}
    victim = load_model(str(checkpoint), kind="captioning", prompt=e["prompt"], device=device)
    source, _ = load_source(str(source_dir))
    eps = parse_fraction(e["attack_eps"], "eval.attack_eps")
    step = eval_pgd_step_size(e)
    options = {"eps": eps, "steps": int(e["pgd_steps"]), "step_size": pgd_step_size(eps, step), "target": e["target"],
               "mlm": e["mlm"]}
    report = evaluate_captioning(
        victim, source, split=e["split"], attacks=e["attacks"], batch_size=int(e["batch_size"]),
        captions_per_image=e["captions_per_image"], limit=e["limit"], attack_options=options,
        caption_checker=check_caption_of_row, generation={"min_length": int(e["min_length"])}, meteor=e["meteor"],
        seed=seed, progress=False,
    )
    write_report(report, folder)  # takes the per-caption lists out into captions.jsonl
    return report


def write_report(report: dict, folder: str | Path) -> None:
    """folder/eval.json and eval.md of a captioning `report`, and captions.jsonl when it holds the
    per-caption lists (an eval.json read back, as the study rewrites one it reuses, does not)."""
    from train.evaluate_captioning import write_captioning_report

    write_captioning_report(report, folder)


def headline(report: dict) -> dict:
    """Clean and robust CIDEr (robust = under `HEADLINE_ATTACK`) and the truth-checked shares."""
    attacks = report["attacks"]
    attack = HEADLINE_ATTACK if HEADLINE_ATTACK in attacks else "clean"
    clean, robust = attacks["clean"], attacks[attack]
    return {
        "metric": "CIDEr", "clean": clean["cider"], "robust": robust["cider"], "attack": attack,
        "clean_true_pct": (clean.get("truth") or {}).get("true_pct"),
        "robust_true_pct": (robust.get("truth") or {}).get("true_pct"),
    }
