"""Image captioning under attack: caption metrics clean and under each attack, with the drop.

Protocol:

1. The split's images (at most `limit`) and their captions (the first `captions_per_image`, or
   all) are the evaluated images and their references.
2. Batch by batch (`batch_size` images with all their references), the victim captions the
   clean images (beam search 3, 20 tokens at most, 5 at least: BLIP's COCO setting, unless
   `generation` says otherwise), then every attack crafts its adversarial images (and, for
   prompted captioners, prompts) against the references and the victim captions those.
3. Metrics over all images (`train.caption_metrics`, pycocoevalcap): BLEU-4, METEOR (when Java
   is present), ROUGE-L, CIDEr, in percent; `drop` = clean minus attacked for each. The mean LM
   loss of the references (what the untargeted attacks maximise) is reported too.
4. With a `caption_checker` (the sample world's truth checker), the share of generated captions
   it calls true of their image (`truth.true_pct`), clean and under each attack: the world's
   ground truth for "the caption is still right".
5. The targeted attack also reports how often the generated caption IS the target.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from train.attacks.captioning import CAPTION_ATTACK_NAMES, CaptionAttack, build_caption_attack, lm_losses
from train.caption_metrics import METRICS, caption_scores, simple_tokenize

CaptionChecker = Callable[[str, dict], "bool | None"]
DEFAULT_CAPTION_ATTACKS = ("clean", "pgd", "pgd-targeted")
PROMPT_ATTACKS = ("prompt", "prompt-pgd")
EXAMPLES = 5  # generated captions per attack kept in the report

PROTOCOL = (
    "Each attack perturbs the images (L-inf PGD on [0, 1] pixels) and/or the prompt (word substitutions) of a batch "
    "against all reference captions of its images; the victim then captions the attacked inputs (beam search). "
    "pgd maximises the references' LM loss (untargeted); pgd-targeted minimises the LM loss of a target caption; "
    "prompt substitutes prompt words to maximise the references' LM loss; prompt-pgd does both. BLEU-4, METEOR, "
    "ROUGE-L and CIDEr (pycocoevalcap, percent) are computed over all images; drop = clean - attacked. truth: "
    "share of generated captions the sample world's truth checker calls true of their image."
)


def default_attacks(victim) -> tuple[str, ...]:
    """clean, pgd, pgd-targeted; plus prompt and prompt-pgd for prompted captioners."""
    return DEFAULT_CAPTION_ATTACKS + (PROMPT_ATTACKS if getattr(victim, "prompt", None) else ())


def build_caption_attacks(names: Sequence[str | CaptionAttack], victim, options: dict) -> dict[str, CaptionAttack]:
    options = dict(options)
    if any(n in PROMPT_ATTACKS for n in names if isinstance(n, str)):
        if not getattr(victim, "prompt", None):
            raise ValueError(f"the prompt attacks need a prompted captioner; '{victim.name}' has no prompt (pass --prompt)")
        if options.get("candidates", "mlm") == "mlm" and isinstance(options.get("mlm", "default"), str):
            from augment.registry import load_mlm
            from train.attacks.captioning import default_caption_mlm

            name = options.get("mlm") or "default"
            name = default_caption_mlm(victim) if name == "default" else name
            model, tokenizer = load_mlm(name, device=victim.device)
            options["mlm"] = (model, tokenizer, name)
    attacks: dict[str, CaptionAttack] = {}
    for entry in names:
        attack = build_caption_attack(entry, victim, **options) if isinstance(entry, str) else entry
        key = entry if isinstance(entry, str) else attack.name
        if key in attacks:
            raise ValueError(f"attack {key!r} listed twice")
        attacks[key] = attack
    return attacks


def _normalised(text: str) -> str:
    return simple_tokenize(text)


class _Record:
    """What one attack produced: generated captions, verdicts, budgets."""

    def __init__(self, attack: CaptionAttack | None):
        self.attack = attack
        self.captions: list[str] = []
        self.verdicts: list[bool | None] = []
        self.reference_losses: list[torch.Tensor] = []
        self.prompts: list[str] = []
        self.target_hits: list[bool] = []
        self.linf = 0.0
        self.seconds = 0.0


def evaluate_captioning(
    victim,
    source_dataset,
    split: str | None = "test",
    attacks: Sequence[str | CaptionAttack] | None = None,
    batch_size: int = 32,
    captions_per_image: int | None = None,
    limit: int | None = None,
    attack_options: dict | None = None,
    caption_checker: CaptionChecker | None = None,
    generation: dict | None = None,
    meteor: bool | None = None,
    java: bool | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Captioning metrics of `victim` (a `CaptioningModel`) on `split`, clean and under `attacks`.

    `attacks`: names from `CAPTION_ATTACK_NAMES` (default: `default_attacks(victim)`), built
    with `attack_options` (see `build_caption_attack`; the seed defaults to `seed`), or ready
    objects. `generation`: keyword arguments for `victim.generate`. Returns the dict that
    `train eval --task captioning` writes as eval.json; its "captions" entry holds every
    generated caption per attack (the command writes them to captions.jsonl).
    """
    from tqdm.auto import tqdm

    from augment.sources import select_split

    rows_all = select_split(source_dataset, split)
    if limit is not None:
        rows_all = rows_all.select(range(min(limit, len(rows_all))))
    if len(rows_all) == 0:
        raise ValueError(f"split {split!r} has no images")
    references = [list(c if captions_per_image is None else c[:captions_per_image]) for c in rows_all["captions"]]
    if any(not refs for refs in references):
        raise ValueError("every evaluated image needs at least one reference caption")
    names = list(attacks) if attacks is not None else list(default_attacks(victim))
    options = {"seed": seed, **(attack_options or {})}
    built = build_caption_attacks([n for n in names if n != "clean"], victim, options)
    generation = dict(generation or {})
    records: dict[str, _Record] = {"clean": _Record(None), **{name: _Record(a) for name, a in built.items()}}

    bar = tqdm(total=len(rows_all), desc="evaluating captions", unit="img", disable=not progress)
    for start in range(0, len(rows_all), batch_size):
        rows = [rows_all[i] for i in range(start, min(start + batch_size, len(rows_all)))]
        pixels = torch.stack([victim.preprocess_eval(row["image"]) for row in rows]).to(victim.device)
        texts = [t for image in range(len(rows)) for t in references[start + image]]
        pairing = torch.tensor([image for image in range(len(rows)) for _ in references[start + image]], dtype=torch.long)
        for name, record in records.items():
            bar.set_postfix_str(name)
            began = time.perf_counter()
            if record.attack is None:
                images, prompts, info = pixels, None, {}
            else:
                result = record.attack(pixels, texts, pairing)
                images, info = result.images, result.info
                prompts = info.get("prompts")
                record.linf = max(record.linf, float((images - pixels).abs().max()))
            captions = victim.generate(images, prompts=prompts, **generation)
            record.seconds += time.perf_counter() - began
            with torch.no_grad():
                text_prompts = [prompts[int(i)] for i in pairing] if prompts is not None else None
                record.reference_losses.append(lm_losses(victim, images[pairing.to(images.device)], texts, text_prompts).cpu())
            record.captions += captions
            if prompts is not None:
                record.prompts += list(prompts)
            if "targets" in info:
                record.target_hits += [_normalised(c) == _normalised(t) for c, t in zip(captions, info["targets"])]
            if caption_checker is not None:
                record.verdicts += [caption_checker(caption, row) for caption, row in zip(captions, rows)]
        bar.update(len(rows))
    bar.close()

    results: dict[str, Any] = {}
    notes: list[str] = []
    for name, record in records.items():
        scores = caption_scores(references, record.captions, meteor=meteor, java=java)
        notes += [n for n in scores.pop("notes") if n not in notes]
        scores.pop("per_image_cider")
        entry: dict[str, Any] = {
            "modality": record.attack.modality if record.attack is not None else "none",
            **scores,
            "reference_loss": float(torch.cat(record.reference_losses).mean()),
            "params": record.attack.params() if record.attack is not None else {},
            "seconds": round(record.seconds, 3),
            "examples": record.captions[:EXAMPLES],
        }
        if record.attack is not None and record.attack.modality in ("image", "multimodal"):
            entry["linf_max"] = record.linf
        if record.prompts:
            default_prompt = getattr(victim, "prompt", "") or ""
            entry["prompts_changed_pct"] = 100.0 * sum(p != default_prompt for p in record.prompts) / len(record.prompts)
            entry["prompt_examples"] = record.prompts[:EXAMPLES]
        if record.target_hits:
            entry["target_hit_pct"] = 100.0 * sum(record.target_hits) / len(record.target_hits)
        if caption_checker is not None:
            judged = [v for v in record.verdicts if v is not None]
            entry["truth"] = {"captions": len(record.verdicts), "judged": len(judged), "true": sum(judged),
                              "false": len(judged) - sum(judged),
                              "true_pct": 100.0 * sum(judged) / len(record.verdicts) if record.verdicts else None}
        results[name] = entry
    clean = results["clean"]
    for name, entry in results.items():
        entry["drop"] = {m: (clean[m] - entry[m] if clean.get(m) is not None and entry.get(m) is not None else None)
                         for m in METRICS}
        if caption_checker is not None:
            entry["drop"]["truth_pct"] = clean["truth"]["true_pct"] - entry["truth"]["true_pct"]
    return {
        "task": "captioning",
        "protocol": PROTOCOL,
        "victim": victim.describe(),
        "settings": {
            "split": split, "num_images": len(rows_all), "num_references": sum(len(r) for r in references),
            "captions_per_image": captions_per_image, "limit": limit, "batch_size": batch_size, "seed": seed,
            "generation": {**_generation_defaults(), **generation},
            "attack_options": {k: (v[2] if k == "mlm" and isinstance(v, tuple) else v) for k, v in options.items()},
            "caption_checker": getattr(caption_checker, "__name__", None) if caption_checker else None,
            "metrics": "pycocoevalcap " + _version("pycocoevalcap"),
        },
        "notes": notes,
        "attacks": results,
        "captions": {name: record.captions for name, record in records.items()},
        "image_ids": list(rows_all["image_id"]),
    }


def _generation_defaults() -> dict:
    from models.captioner import DEFAULT_GENERATION

    return dict(DEFAULT_GENERATION)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- report


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_report(report: dict) -> str:
    """eval.md: one row per attack: the four metrics, the CIDEr drop, the truth-checked share."""
    settings, victim = report["settings"], report["victim"]
    with_truth = any("truth" in entry for entry in report["attacks"].values())
    header = ["attack", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CIDEr drop", "ref. LM loss"]
    if with_truth:
        header += ["true (%)", "true drop"]
    lines = [
        f"# Captioning robustness: {victim['name']}" + (f" (prompt: '{victim['prompt']}')" if victim.get("prompt") else ""),
        "",
        f"Split `{settings['split']}`: {settings['num_images']} images, {settings['num_references']} reference captions; "
        f"white-box attacks.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name, entry in report["attacks"].items():
        cells = [entry.get("bleu4"), entry.get("meteor"), entry.get("rouge_l"), entry.get("cider"),
                 entry["drop"].get("cider"), entry.get("reference_loss")]
        row = [_cell(v) if i != 5 else (f"{v:.3f}" if v is not None else "-") for i, v in enumerate(cells)]
        if with_truth:
            row += [_cell(entry["truth"]["true_pct"]), _cell(entry["drop"].get("truth_pct"))]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "Metrics in percent under the attack (pycocoevalcap); drop = clean - attacked. "
              "ref. LM loss: mean token cross-entropy of the reference captions (what untargeted attacks raise)."]
    targeted = {n: e for n, e in report["attacks"].items() if "target_hit_pct" in e}
    for name, entry in targeted.items():
        lines.append(f"`{name}`: the caption equals the target '{entry['params'].get('target')}' for "
                     f"{entry['target_hit_pct']:.1f}% of the images.")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}.")
    lines += ["", report["protocol"]]
    return "\n".join(lines) + "\n"


__all__ = ["CAPTION_ATTACK_NAMES", "DEFAULT_CAPTION_ATTACKS", "evaluate_captioning", "markdown_report"]
