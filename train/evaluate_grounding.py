"""Robust visual grounding: accuracy on clean expressions and under image, text and multimodal attacks.

Protocol:

1. The split's images (at most `limit`) with all their expressions.
2. Each attack runs batch by batch (a batch = `batch_size` images with ALL their expressions,
   `train.attacks.grounding`; the images decoded and preprocessed to the attacker's resolution in
   DataLoader workers): an image is perturbed once against all its expressions.
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

Every finished (attack, batch) can be kept (`progress_dir`, retrieval's `BatchStore`; each batch's
attack is seeded from (seed, attack, batch)), so a killed evaluation resumes to the same report.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from augment.referring import GroundingData, GroundingImage, ReferringExpression
from tasks.grounding import IOU_THRESHOLD, box_iou, ground, oracle_accuracy, random_box_accuracy
from train.attacks.grounding import GROUNDING_ATTACKS, build_grounding_attack
from train.eval_report import settings_markdown
from train.eval_store import BatchStore, weights_identity
from train.eval_common import build_attacks, plain_attack_options, reseed_attack, to_victim_resolution

DEFAULT_GROUNDING_ATTACKS = ("clean", "pgd", "bert-attack", "sep", "co-attack", "sga")
ExpressionChecker = Callable[[str, GroundingImage, ReferringExpression], "bool | None"]

PROCEDURE = (
    "Grounding: Grad-CAM heat of the ITM score (model.grounding_heatmap) upsampled to the image, each candidate box "
    "scored by heat inside / area**0.5 (ALBEF), best box chosen; accuracy = percent of expressions whose box has "
    "IoU >= 0.5 with the truth. Attacks run per batch of images with all their expressions and lower the grounding "
    "objective ({objective}); asr = percent of the expressions correct when clean that the attack makes wrong."
)
OBJECTIVE_WORDS = {"itm": "ITM score", "heat": "share of the Grad-CAM heat on the true box"}


def world_expression_checker(text: str, image: GroundingImage, expression: ReferringExpression) -> bool | None:
    """The sample world's truth checker: does `text` still single out the expression's object?"""
    from augment.world.scene import Scene
    from augment.world.truth import check_expression

    if image.scene is None or expression.target is None:
        return None
    return check_expression(text, Scene.from_dict(image.scene), expression.target)


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


@dataclass
class _BatchResult:
    """What the report needs from one attacked batch, per expression of the batch (in `ids` order):
    plain lists and numbers, so `BatchStore` keeps it and `torch.load(weights_only=True)` reads it."""

    hits: list[bool]
    kept_hits: list[bool]  # with the expressions the checker rejected grounded unattacked
    words_changed: list[int]
    verdicts: list[bool | None]
    linf: float
    seconds: float

    def state(self) -> dict:
        return asdict(self)


class _Tally:
    """One attack's results over every expression, filled batch by batch."""

    def __init__(self, size: int):
        self.hits, self.kept_hits = [False] * size, [False] * size
        self.words_changed: list[int] = [0] * size
        self.verdicts: list[bool | None] = [None] * size
        self.linf = self.seconds = 0.0

    def add(self, ids: list[int], state: dict) -> None:
        for key in ("hits", "kept_hits", "words_changed", "verdicts"):
            column = getattr(self, key)
            for i, value in zip(ids, state[key], strict=True):
                column[i] = value
        self.linf = max(self.linf, float(state["linf"]))
        self.seconds += float(state["seconds"])


def _data_fingerprint(data: GroundingData) -> str:
    """A digest of the evaluated images (their files too: another --image-root, an image replaced in
    place), candidates and expressions: a resumed run must see the same ones."""
    from augment.source_cache import path_identity

    content = {"images": [[image.image_id, image.candidates, image.path and path_identity(image.path)] for image in data.images],
               "expressions": [[e.ref_id, e.image, e.text, e.box] for e in data.expressions]}
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()


def _image_views(modality: str, model, attacker, transfer: bool) -> list[Callable]:
    """The preprocessings one attack needs of each image: the attacker's view (what it crafts on),
    then the victim's own where the victim grounds the unattacked image (clean; text attacks in
    transfer). Clean crafts nothing: its one view is the victim's."""
    views = [attacker.preprocess_eval] if modality != "none" else []
    if modality == "none" or (transfer and modality == "text"):
        views.append(model.preprocess_eval)
    return views


def _resumable_batches(data: GroundingData, spans: list[tuple[int, int]], views: list[Callable], workers: int,
                       store, name: str):
    """(batch index, stacked pixels per view or None) for every batch: None where a resumed
    evaluation already has attack `name`'s batch. Only the other batches' images are decoded, in
    `workers` DataLoader processes (`augment.loading.ordered_batches`), in order, whatever `workers` is."""
    from augment.loading import ordered_batches

    def decode(image: GroundingImage) -> list[torch.Tensor]:
        picture = image.load()
        return [preprocess(picture) for preprocess in views]

    done = [store is not None and store.has(name, b) for b in range(len(spans))]
    pending = [range(*span) for span, finished in zip(spans, done) if not finished]
    decoded = ordered_batches(data.images, pending, workers, decode)
    for batch_index in range(len(spans)):
        yield batch_index, None if done[batch_index] else [torch.stack(view) for view in zip(*next(decoded))]


def evaluate_grounding(model, data: GroundingData, attacks: Sequence[str] = DEFAULT_GROUNDING_ATTACKS,
                       attack_options: dict | None = None, batch_size: int = 16, ground_batch: int = 64,
                       expression_checker: ExpressionChecker | None = None, seed: int = 0,
                       progress: bool = False, attacker=None, progress_dir: str | Path | None = None,
                       workers: int = 0) -> dict[str, Any]:
    """Clean and robust grounding accuracy of `model` on `data` (already the split to evaluate);
    `attacker`: None (white-box) or the model the attacks craft on (transfer).

    `progress_dir`: a folder keeping every finished (attack, batch) (`train.eval_store.BatchStore`;
    each batch's attack is seeded from (seed, attack, batch)): a killed evaluation called again
    with the same settings skips them and gives the same report. `workers`: DataLoader processes
    decoding the next batches' images (0: in this process). Forward passes run in the caller's
    autocast (`models.half_precision.autocast`); the precision in force is part of the settings."""
    from tqdm.auto import tqdm

    from models.half_precision import active_precision
    from train.data import derive_seed

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
    options = {"seed": seed, **(attack_options or {})}
    built = build_attacks(["clean", *[a for a in attacks if a != "clean"]], attacker, options,
                          build=build_grounding_attack)
    truth = [e.box for e in data.expressions]
    candidates = [data.images[e.image].candidates for e in data.expressions]
    sizes = [(data.images[e.image].height, data.images[e.image].width) for e in data.expressions]
    image_of_text = torch.tensor(data.image_of_text(), dtype=torch.long)
    multi = [i for i, boxes in enumerate(candidates) if len(boxes) >= 2]  # rows a grounder can get wrong
    spans = [(start, min(start + batch_size, len(data.images))) for start in range(0, len(data.images), batch_size)]
    batch_ids = [torch.nonzero((image_of_text >= start) & (image_of_text < stop)).flatten().tolist()
                 for start, stop in spans]
    precision = active_precision(model.device)
    plain_options = plain_attack_options(options)
    report: dict[str, Any] = {
        "task": "grounding", "model": model.describe(), "attacker": attacker.describe(),
        "procedure": PROCEDURE.format(objective=OBJECTIVE_WORDS[options.get("objective", "itm")]),
        "data": {"source": data.source, "format": data.format, "images": len(data.images),
                 "expressions": len(data), "splits": data.splits()},
        "baselines": {"random_box": random_box_accuracy(candidates, truth),
                      "oracle": oracle_accuracy(candidates, truth),
                      "random_box_multi": random_box_accuracy([candidates[i] for i in multi], [truth[i] for i in multi]),
                      "expressions_multi": len(multi)},
        "settings": {"attacks": list(built), "batch_size": batch_size, "iou_threshold": IOU_THRESHOLD,
                     "mode": "transfer" if transfer else "white-box", "seed": seed, "precision": precision,
                     "attack_options": plain_options},
        "attacks": {},
    }
    store = None
    if progress_dir is not None:
        store = BatchStore(progress_dir, {
            "model": model.describe(), "attacker": attacker.describe(), "mode": report["settings"]["mode"],
            **weights_identity(model, attacker),
            "data": {**report["data"], "fingerprint": _data_fingerprint(data)},
            "attacks": {name: attack.params() for name, attack in built.items()}, "options": plain_options,
            "batch_size": batch_size, "ground_batch": ground_batch, "seed": seed, "precision": precision,
            "checker": getattr(expression_checker, "__name__", None),
        })

    def hits_of(pixels: torch.Tensor, texts: list[str], ids: list[int]) -> list[bool]:
        chosen = ground(model, pixels, texts, [candidates[i] for i in ids], [sizes[i] for i in ids], ground_batch)
        return [box_iou(candidates[i][c], truth[i]) >= IOU_THRESHOLD for i, c in zip(ids, chosen)]

    def attack_batch(name: str, attack, views: list[torch.Tensor], batch_index: int) -> _BatchResult:
        ids = batch_ids[batch_index]
        pairing = image_of_text[ids] - spans[batch_index][0]
        began = time.perf_counter()
        reseed_attack(attack, derive_seed(seed, name, batch_index))  # a resumed batch draws what it drew before
        result = attack(views[0].to(attacker.device), [data.expressions[i].text for i in ids], pairing,
                        boxes=[truth[i] for i in ids], sizes=[sizes[i] for i in ids])
        changes = result.info.get("words_changed", [[] for _ in ids])
        if len(views) > 1:  # a text attack in transfer: the victim grounds its own view of the image
            images = views[1].to(model.device)
        elif transfer and attack.modality in ("image", "multimodal"):  # the attacker's pixels, at the victim's size
            images = to_victim_resolution(result.images.detach().to(model.device), model.image_size)
        else:
            images = result.images.detach()
        row_pixels = images[pairing.to(images.device)]
        hits = hits_of(row_pixels, list(result.texts), ids)
        kept_hits, verdicts = list(hits), [None] * len(ids)
        if expression_checker is not None:
            for local, i in enumerate(ids):
                if changes[local]:
                    expression = data.expressions[i]
                    verdicts[local] = expression_checker(result.texts[local], data.images[expression.image], expression)
        rejected = [local for local, verdict in enumerate(verdicts) if verdict is False]
        if rejected:  # an expression the attack made refer elsewhere counts as not attacked
            regrounded = hits_of(row_pixels[rejected], [data.expressions[ids[k]].text for k in rejected],
                                 [ids[k] for k in rejected])
            for local, hit in zip(rejected, regrounded):
                kept_hits[local] = hit
        return _BatchResult(hits, kept_hits, [len(c) for c in changes], verdicts,
                            float(result.info.get("linf", 0.0)), time.perf_counter() - began)

    clean_hits: list[bool] | None = None
    bar = tqdm(total=len(data.images) * len(built), desc="evaluating grounding", unit="img", disable=not progress)
    for name, attack in built.items():
        bar.set_postfix_str(name)
        tally = _Tally(len(data))
        views = _image_views(attack.modality, model, attacker, transfer)
        # a batch at a time (images decoded, attacked and grounded per batch): memory stays bounded
        for batch_index, pixels in _resumable_batches(data, spans, views, workers, store, name):
            if pixels is None:
                state = store.load_state(name, batch_index)
            else:
                part = attack_batch(name, attack, pixels, batch_index)
                if store is not None:
                    store.save(name, batch_index, part)
                state = part.state()
            tally.add(batch_ids[batch_index], state)
            bar.update(spans[batch_index][1] - spans[batch_index][0])
        hits = tally.hits
        entry: dict[str, Any] = {
            "modality": attack.modality, "params": attack.params(), "accuracy": _accuracy(hits),
            "accuracy_multi": _accuracy([hits[i] for i in multi]),
            "seconds": round(tally.seconds, 2),
        }
        if name == "clean":
            clean_hits = hits
        else:
            entry["asr"] = _asr(clean_hits, hits)
        if attack.modality in ("image", "multimodal"):
            entry["linf"] = tally.linf
        if attack.modality in ("text", "multimodal"):
            changed = [w for w in tally.words_changed if w]
            entry["texts_changed"] = len(changed)
            entry["words_changed_mean"] = sum(tally.words_changed) / len(tally.words_changed)
            if expression_checker is not None:
                judged = [v for v in tally.verdicts if v is not None]
                entry["meaning_preserved"] = {"true": sum(judged), "false": len(judged) - sum(judged),
                                              "unknown": len(changed) - len(judged)}
                entry["accuracy_meaning_preserved"] = _accuracy(tally.kept_hits)
                entry["asr_meaning_preserved"] = _asr(clean_hits, tally.kept_hits)
        report["attacks"][name] = entry
        if progress:
            bar.write(f"{name}: accuracy {entry['accuracy']:.1f}%")
    bar.close()
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
    lines += ["", report["procedure"]]
    lines += settings_markdown(report) + [""]
    return "\n".join(lines)

