"""Robust visual grounding: accuracy on clean expressions and under image, text and multimodal attacks.

Protocol:

1. The split's images (at most `limit`) with all their expressions; each image is preprocessed
   to the model's resolution once.
2. Each attack runs batch by batch (a batch = `batch_size` images with ALL their expressions,
   `train.attacks.grounding`): an image is perturbed once against all its expressions.
3. Every (attacked image, attacked expression) pair is grounded (`tasks.grounding.ground`:
   Grad-CAM heat, candidate boxes scored by ALBEF's rule, best box chosen).
4. Metrics (percent): accuracy = chosen box with IoU >= 0.5 with the true box; asr = share of the
   expressions grounded correctly when clean that the attack makes wrong; random_box = expected
   accuracy of a uniformly random candidate; oracle = expressions with any good candidate.
   `accuracy_multi` / `random_box_multi`: the same on the expressions whose image has at least two
   candidates (one candidate is always right: those rows only raise both numbers).

`expression_checker(text, image, expression) -> bool | None` (the sample world's: does the
attacked expression still single out the same object?) adds, for attacks that change text,
`meaning_preserved` (changed expressions still true) and `accuracy_meaning_preserved` /
`asr_meaning_preserved`, where an attacked expression the checker rejects counts as not
attacked (its clean text is grounded against the attacked image).

Transfer (`attacker`: another model with an ITM head, any family): the attacks craft on the
attacker's grounding objective and its preprocessed pixels; adversarial images are resized
(bicubic) to the victim's resolution when they differ, and the victim grounds them. Image-free
attacks (clean, text) leave the victim's own pixels untouched.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from augment.referring import GroundingData, GroundingImage, ReferringExpression
from tasks.grounding import IOU_THRESHOLD, box_iou, ground, oracle_accuracy, random_box_accuracy
from train.attacks.grounding import GROUNDING_ATTACKS, build_grounding_attack
from train.evaluate import _to_victim_resolution

DEFAULT_GROUNDING_ATTACKS = ("clean", "pgd", "bert-attack", "sep", "co-attack", "sga")
ExpressionChecker = Callable[[str, GroundingImage, ReferringExpression], "bool | None"]

PROTOCOL = (
    "Grounding: Grad-CAM heat of the ITM score (model.grounding_heatmap) upsampled to the image, each candidate box "
    "scored by heat inside / area**0.5 (ALBEF), best box chosen; accuracy = percent of expressions whose box has "
    "IoU >= 0.5 with the truth. Attacks run per batch of images with all their expressions and lower the grounding "
    "objective (ITM score); asr = percent of the expressions correct when clean that the attack makes wrong."
)


def world_expression_checker(text: str, image: GroundingImage, expression: ReferringExpression) -> bool | None:
    """The sample world's truth checker: does `text` still single out the expression's object?"""
    from augment.world.scene import Scene
    from augment.world.truth import check_expression

    if image.scene is None or expression.target is None:
        return None
    return check_expression(text, Scene.from_dict(image.scene), expression.target)


def _pixels(model, images: Sequence[GroundingImage]) -> torch.Tensor:
    return torch.stack([model.preprocess_eval(image.load()) for image in images])


def check_attacker(attacker, objective: str = "itm") -> None:
    """Raise ValueError (one line) when `attacker` cannot compute the grounding objective."""
    needs = "has_grounding" if objective == "heat" else "has_itm"
    if not getattr(attacker, needs, False):
        raise ValueError(f"the attacker '{attacker.name}' ({attacker.family}) has no "
                         f"{'grounding_heatmap' if objective == 'heat' else 'ITM head'}: grounding attacks "
                         f"need one for the '{objective}' objective")


def _accuracy(hits: Sequence[bool]) -> float:
    return 100.0 * sum(hits) / max(len(hits), 1)


def _asr(clean: Sequence[bool], attacked: Sequence[bool]) -> float:
    correct = [a for c, a in zip(clean, attacked) if c]
    return 100.0 * sum(not a for a in correct) / max(len(correct), 1)


def evaluate_grounding(model, data: GroundingData, attacks: Sequence[str] = DEFAULT_GROUNDING_ATTACKS,
                       attack_options: dict | None = None, batch_size: int = 16, ground_batch: int = 64,
                       expression_checker: ExpressionChecker | None = None, seed: int = 0,
                       progress: bool = False, attacker=None) -> dict[str, Any]:
    """Clean and robust grounding accuracy of `model` on `data` (already the split to evaluate);
    `attacker`: None (white-box) or the model the attacks craft on (transfer)."""
    unknown = [a for a in attacks if a not in GROUNDING_ATTACKS]
    if unknown:
        raise ValueError(f"unknown grounding attack(s) {unknown}; expected {', '.join(GROUNDING_ATTACKS)}")
    if not len(data):
        raise ValueError("no expressions to evaluate")
    model.eval()
    transfer = attacker is not None and attacker is not model
    attacker = attacker if transfer else model
    if transfer:
        attacker.eval()
        check_attacker(attacker, (attack_options or {}).get("objective", "itm"))
    attacks = ["clean", *[a for a in attacks if a != "clean"]]
    options = {"seed": seed, **(attack_options or {})}
    truth = [e.box for e in data.expressions]
    candidates = [data.images[e.image].candidates for e in data.expressions]
    sizes = [(data.images[e.image].height, data.images[e.image].width) for e in data.expressions]
    image_of_text = torch.tensor(data.image_of_text(), dtype=torch.long)
    multi = [i for i, boxes in enumerate(candidates) if len(boxes) >= 2]  # rows a grounder can get wrong
    report: dict[str, Any] = {
        "task": "grounding", "model": model.describe(), "attacker": attacker.describe(), "protocol": PROTOCOL,
        "data": {"source": data.source, "format": data.format, "images": len(data.images),
                 "expressions": len(data), "splits": data.splits()},
        "baselines": {"random_box": random_box_accuracy(candidates, truth),
                      "oracle": oracle_accuracy(candidates, truth),
                      "random_box_multi": random_box_accuracy([candidates[i] for i in multi], [truth[i] for i in multi]),
                      "expressions_multi": len(multi)},
        "settings": {"attacks": attacks, "batch_size": batch_size, "iou_threshold": IOU_THRESHOLD,
                     "mode": "transfer" if transfer else "white-box",
                     "attack_options": {k: v for k, v in options.items() if k != "mlm" or isinstance(v, str)}},
        "attacks": {},
    }

    def hits_of(pixels: torch.Tensor, texts: list[str], ids: list[int]) -> list[bool]:
        chosen = ground(model, pixels, texts, [candidates[i] for i in ids], [sizes[i] for i in ids], ground_batch)
        return [box_iou(candidates[i][c], truth[i]) >= IOU_THRESHOLD for i, c in zip(ids, chosen)]

    clean_hits: list[bool] | None = None
    for name in attacks:
        torch.manual_seed(seed)
        attack = build_grounding_attack(name, attacker, **options)
        started = time.time()
        hits, kept_hits = [False] * len(data), [False] * len(data)
        words_changed, verdicts, linf = [0] * len(data), [None] * len(data), 0.0
        # a batch at a time (images decoded, attacked and grounded per batch): memory stays bounded
        for start in range(0, len(data.images), batch_size):
            stop = min(start + batch_size, len(data.images))
            ids = torch.nonzero((image_of_text >= start) & (image_of_text < stop)).flatten().tolist()
            pairing = image_of_text[ids] - start
            pixels = _pixels(attacker, data.images[start:stop]).to(attacker.device)
            result = attack(pixels, [data.expressions[i].text for i in ids], pairing,
                            boxes=[truth[i] for i in ids], sizes=[sizes[i] for i in ids])
            linf = max(linf, float(result.info.get("linf", 0.0)))
            changes = result.info.get("words_changed", [[] for _ in ids])
            if not transfer:
                images = result.images.detach()
            elif attack.modality in ("image", "multimodal"):  # the attacker's pixels, at the victim's size
                images = _to_victim_resolution(result.images.detach().to(model.device), model.image_size)
            else:
                images = _pixels(model, data.images[start:stop]).to(model.device)
            row_pixels = images[pairing.to(images.device)]
            batch_hits = hits_of(row_pixels, list(result.texts), ids)
            rejected = []
            for local, i in enumerate(ids):
                hits[i] = kept_hits[i] = batch_hits[local]
                words_changed[i] = len(changes[local])
                if expression_checker is not None and changes[local]:
                    expression = data.expressions[i]
                    verdicts[i] = expression_checker(result.texts[local], data.images[expression.image], expression)
                    if verdicts[i] is False:
                        rejected.append(local)
            if rejected:  # an expression the attack made refer elsewhere counts as not attacked
                regrounded = hits_of(row_pixels[rejected], [data.expressions[ids[k]].text for k in rejected],
                                     [ids[k] for k in rejected])
                for local, hit in zip(rejected, regrounded):
                    kept_hits[ids[local]] = hit
        entry: dict[str, Any] = {
            "modality": attack.modality, "params": attack.params(), "accuracy": _accuracy(hits),
            "accuracy_multi": _accuracy([hits[i] for i in multi]),
            "seconds": round(time.time() - started, 2),
        }
        if name == "clean":
            clean_hits = hits
        else:
            entry["asr"] = _asr(clean_hits, hits)
        if attack.modality in ("image", "multimodal"):
            entry["linf"] = linf
        if attack.modality in ("text", "multimodal"):
            changed = [w for w in words_changed if w]
            entry["texts_changed"] = len(changed)
            entry["words_changed_mean"] = sum(words_changed) / len(words_changed)
            if expression_checker is not None:
                judged = [v for v in verdicts if v is not None]
                entry["meaning_preserved"] = {"true": sum(judged), "false": len(judged) - sum(judged),
                                              "unknown": len(changed) - len(judged)}
                entry["accuracy_meaning_preserved"] = _accuracy(kept_hits)
                entry["asr_meaning_preserved"] = _asr(clean_hits, kept_hits)
        report["attacks"][name] = entry
        if progress:
            print(f"{name}: accuracy {entry['accuracy']:.1f}%", flush=True)
    return report


def markdown_grounding_report(report: dict) -> str:
    """One table: rows = attacks; accuracy, ASR, and the meaning-preserving numbers when judged."""
    judged = any("accuracy_meaning_preserved" in e for e in report["attacks"].values())
    model = report["model"]
    attacker = report.get("attacker") or model
    lines = [
        f"# Grounding robustness: {model.get('name')} ({model.get('family')})", "",
        *([f"Transfer attacks crafted on {attacker.get('name')} ({attacker.get('family')}).", ""]
          if report["settings"].get("mode") == "transfer" else []),
        f"{report['data']['expressions']} expressions on {report['data']['images']} images "
        f"({report['data']['format']}: {report['data']['source']}). "
        f"Random box: {report['baselines']['random_box']:.1f}%; oracle (best candidate): "
        f"{report['baselines']['oracle']:.1f}%. On the {report['baselines'].get('expressions_multi', 0)} expressions "
        f"with two or more candidates, random box: {report['baselines'].get('random_box_multi', 0.0):.1f}%.", "",
    ]
    header = ["attack", "accuracy", "accuracy (2+ candidates)", "ASR"] + (["accuracy (meaning kept)", "ASR (meaning kept)", "changed true/false/?"] if judged else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in report["attacks"].items():
        row = [name, f"{entry['accuracy']:.1f}", f"{entry.get('accuracy_multi', 0.0):.1f}",
               f"{entry['asr']:.1f}" if "asr" in entry else "-"]
        if judged:
            if "accuracy_meaning_preserved" in entry:
                mp = entry["meaning_preserved"]
                row += [f"{entry['accuracy_meaning_preserved']:.1f}", f"{entry['asr_meaning_preserved']:.1f}",
                        f"{mp['true']}/{mp['false']}/{mp['unknown']}"]
            else:
                row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", report["protocol"], ""]
    return "\n".join(lines)

