"""The study's captioning arm (`task: captioning`): evaluate a captioner checkpoint, headline numbers.

Kept apart from `analysis/study.py` (which owns the retrieval arm): the study calls
`evaluate_captioner` where it would call retrieval's `evaluate` for a run whose task is
captioning, and reports `headline(report)` beside retrieval's robust R@1.

Study config keys read from `eval` (with these defaults): attacks [clean, pgd, pgd-targeted],
eps "2/255", pgd_steps 10, batch_size 32, limit (all), captions_per_image (all), prompt (none),
target ("a black triangle"), min_length 5, meteor (when Java is present).
"""
from __future__ import annotations

import json
from pathlib import Path

HEADLINE_ATTACK = "pgd"  # the untargeted image attack: the captioning counterpart of robust R@1


def evaluate_captioner(checkpoint: str | Path, source_dir: str | Path, eval_settings: dict, seed: int,
                       folder: str | Path) -> dict:
    """Evaluate `checkpoint` on the sample world `source_dir`; write folder/eval.json and eval.md."""
    from augment.sample_world import check_caption_of_row
    from augment.sources import load_source
    from models import load_model
    from train.attacks.captioning import DEFAULT_TARGET
    from train.config import parse_fraction
    from train.evaluate_captioning import evaluate_captioning, markdown_report

    e = eval_settings
    victim = load_model(str(checkpoint), kind="captioning", prompt=e.get("prompt"))
    source, _ = load_source(str(source_dir))
    options = {"eps": parse_fraction(e.get("eps", 2 / 255), "eval.eps"), "steps": int(e.get("pgd_steps", 10)),
               "target": e.get("target", DEFAULT_TARGET), "mlm": e.get("mlm", "default")}
    report = evaluate_captioning(
        victim, source, split=e.get("split", "test"), attacks=e.get("attacks", ["clean", "pgd", "pgd-targeted"]),
        batch_size=int(e.get("batch_size", 32)), captions_per_image=e.get("captions_per_image"), limit=e.get("limit"),
        attack_options=options, caption_checker=check_caption_of_row,
        generation={"min_length": int(e.get("min_length", 5))}, meteor=e.get("meteor"), seed=seed, progress=False,
    )
    report.pop("captions"), report.pop("image_ids")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (folder / "eval.md").write_text(markdown_report(report), encoding="utf-8")
    return report


def headline(report: dict) -> dict:
    """Clean and robust CIDEr and truth-checked share (robust = under `HEADLINE_ATTACK`)."""
    attacks = report["attacks"]
    clean, robust = attacks["clean"], attacks.get(HEADLINE_ATTACK, attacks["clean"])
    return {
        "clean_cider": clean["cider"], "robust_cider": robust["cider"],
        "clean_true_pct": (clean.get("truth") or {}).get("true_pct"),
        "robust_true_pct": (robust.get("truth") or {}).get("true_pct"),
        "attack": HEADLINE_ATTACK if HEADLINE_ATTACK in attacks else "clean",
    }
