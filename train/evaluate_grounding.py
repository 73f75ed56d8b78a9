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

`--protocol co-attack` (`attack_options["protocol"]`): Co-Attack's grounding scripts instead of step 2
(`train.attacks.grounding_protocols`): the retrieval attacks of that protocol, each expression on
its own copy of its image, grounded in that copy; expressions cleaned by `pre_caption` first (clean
included), as its data loader does.

Every finished (attack, batch) can be kept (`progress_dir`, retrieval's `BatchStore`; each batch's
attack is seeded from (seed, attack, batch)), so a killed evaluation resumes to the same report.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from augment.referring import GroundingData, GroundingImage, ReferringExpression
from tasks.grounding import IOU_THRESHOLD, box_iou, ground, oracle_accuracy, random_box_accuracy
from train.attacks.base import words_changed_of
from train.attacks.grounding import GROUNDING_ATTACKS, build_grounding_attack
from train.attacks.grounding_protocols import IMAGE_PER_TEXT
from train.eval_report import percent_cell, settings_markdown
from train.eval_store import BatchStore, content_problem, substitute_model_identity, weights_identity
from train.eval_common import (advance_resumed, build_attacks, emptied_in_words, attack_bars, evaluated_in_eval_mode,
                               plain_attack_options, reseed_attack, to_victim_resolution)

DEFAULT_GROUNDING_ATTACKS = ("clean", "pgd", "bert-attack", "sep", "co-attack", "sga")
ExpressionChecker = Callable[[str, GroundingImage, ReferringExpression], "bool | None"]

PROCEDURE = (
    "Grounding: Grad-CAM heat of the ITM score (model.grounding_heatmap) upsampled to the image, each candidate box "
    "scored by heat inside / area**0.5 (ALBEF), best box chosen; accuracy = percent of expressions whose box has "
    "IoU >= 0.5 with the truth. Attacks run per batch of images with all their expressions and lower the grounding "
    "objective ({objective}); asr = percent of the expressions correct when clean that the attack makes wrong."
)
REFERENCE_PROCEDURE = (
    "Grounding: Grad-CAM heat of the ITM score (model.grounding_heatmap) upsampled to the image, each candidate box "
    "scored by heat inside / area**0.5 (ALBEF), best box chosen; accuracy = percent of expressions whose box has "
    "IoU >= 0.5 with the truth. Attacks as Co-Attack's grounding code runs them (--protocol co-attack): its retrieval "
    "attacks on the {embedding}, each expression against its own copy of its image (SGA: each image once against all "
    "its expressions), grounded in that copy; asr = percent of the expressions correct when clean that the attack "
    "makes wrong."
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


def _accuracy(hits: Sequence[bool]) -> float | None:
    """Percent of hits; None for no expressions (undefined, not 0: e.g. `accuracy_multi` of a set
    whose images all have one candidate)."""
    return 100.0 * sum(hits) / len(hits) if len(hits) else None


def _asr(clean: Sequence[bool], attacked: Sequence[bool]) -> float | None:
    """Percent of the clean-correct expressions the attack makes wrong; None when none was correct
    (undefined, as retrieval's `attack_success_rates` says, not an attack that never succeeds)."""
    correct = [a for c, a in zip(clean, attacked) if c]
    return 100.0 * sum(not a for a in correct) / len(correct) if correct else None


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

    @staticmethod
    def problem(expressions: int, state) -> str | None:
        """What is wrong with a kept batch of `expressions` expressions (a `state()` read back), or None."""
        return content_problem(state, {**{key: (list, expressions) for key in ("hits", "kept_hits", "words_changed", "verdicts")},
                                       "linf": ((int, float), None), "seconds": ((int, float), None)})


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


def data_fingerprint(data: GroundingData, root: str | None = None) -> str:
    """A digest of the evaluated images (their files too: another --image-root, an image replaced in
    place), candidates and expressions: a resumed run must see the same ones. `root`: the source's folder,
    inside which image paths are taken relative to it (an evaluation moved with its source resumes)."""
    from augment.source_cache import identity_within, path_identity

    base = os.path.abspath(root) if root is not None else None

    def identity(path: str) -> list:
        return identity_within(path_identity(path), base) if base is not None else path_identity(path)

    content = {"images": [[image.image_id, image.candidates, image.path and identity(image.path)] for image in data.images],
               "expressions": [[e.ref_id, e.image, e.text, e.box] for e in data.expressions]}
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()


def _image_view(modality: str, transfer: bool) -> str:
    """The preprocessings one attack needs of each image, by name (`_decodings`): the attacker's view
    (what it crafts on), then the victim's own where the victim grounds the unattacked image (clean;
    text attacks in transfer). Clean crafts nothing: its one view is the victim's."""
    if modality == "none":
        return "victim"
    return "attacker+victim" if transfer and modality == "text" else "attacker"


def _decodings(data: GroundingData, model, attacker, workers: int):
    """The DataLoader workers decoding the images for every attack of one evaluation, each image into
    the list of its `_image_view` preprocessings (started once, not once per attack)."""
    from augment.loading import DecodingWorkers

    # partials of a module-level function, not local functions: workers may be spawned
    return DecodingWorkers(data.images, {
        "attacker": partial(_decoded_views, [attacker.preprocess_eval]),
        "victim": partial(_decoded_views, [model.preprocess_eval]),
        "attacker+victim": partial(_decoded_views, [attacker.preprocess_eval, model.preprocess_eval]),
    }, workers)


def _decoded_views(views: list[Callable], image: GroundingImage) -> list[torch.Tensor]:
    """The image preprocessed by each view: what a `_resumable_batches` worker hands back."""
    picture = image.load()
    return [preprocess(picture) for preprocess in views]


def _resumable_batches(decoding, spans: list[tuple[int, int]], view: str, store, name: str):
    """(batch index, stacked pixels per view or None) for every batch: None where a resumed
    evaluation already has attack `name`'s batch. Only the other batches' images are decoded, by
    `decoding`'s DataLoader processes (`_decodings`), in order, whatever their number."""
    done = [store is not None and store.has(name, b) for b in range(len(spans))]
    pending = [range(*span) for span, finished in zip(spans, done) if not finished]
    decoded = decoding.passes(view, pending)
    for batch_index in range(len(spans)):
        yield batch_index, None if done[batch_index] else [torch.stack(view) for view in zip(*next(decoded))]


@evaluated_in_eval_mode("model", "attacker")
def evaluate_grounding(model, data: GroundingData, attacks: Sequence[str] = DEFAULT_GROUNDING_ATTACKS,
                       attack_options: dict | None = None, batch_size: int = 16, ground_batch: int = 64,
                       expression_checker: ExpressionChecker | None = None, seed: int = 0,
                       progress: bool = False, attacker=None, progress_dir: str | Path | None = None,
                       workers: int = 0, caption_preprocess: str | None = None) -> dict[str, Any]:
    """Clean and robust grounding accuracy of `model` on `data` (already the split to evaluate);
    `attacker`: None (white-box) or the model the attacks craft on (transfer).

    `progress_dir`: a folder keeping every finished (attack, batch) (`train.eval_store.BatchStore`;
    each batch's attack is seeded from (seed, attack, batch)): a killed evaluation called again
    with the same settings skips them and gives the same report. `workers`: DataLoader processes
    decoding the next batches' images (0: in this process). Forward passes run in the caller's
    autocast (`models.half_precision.autocast`); the precision in force is part of the settings.
    `attack_options["protocol"]`: "project" (default) or "co-attack" (module docstring);
    `caption_preprocess`: "none", "pre_caption" or "blip_pre_caption" (None: the protocol's)."""
    from models.half_precision import active_precision
    from train.attacks import PROTOCOL_CHOICES
    from train.attacks.grounding_protocols import GROUNDING_PROTOCOLS, build_reference_grounding_attack
    from train.evaluate import captions_read_as_given

    _check_attacks_and_data(attacks, data)
    options = {"seed": seed, **(attack_options or {})}
    protocol = options.get("protocol") or "project"
    if protocol not in GROUNDING_PROTOCOLS:
        raise ValueError(f"--protocol {protocol} has no grounding evaluation to reproduce (the SGA code evaluates "
                         f"retrieval only); grounding protocols: {', '.join(GROUNDING_PROTOCOLS)}")
    protocol_default = protocol if caption_preprocess is None else None
    if caption_preprocess is None:
        caption_preprocess = PROTOCOL_CHOICES[protocol].caption_preprocess
    # first: a text cleaned away stops before any model runs
    texts = _expression_texts(data, caption_preprocess, protocol_default)
    transfer = attacker is not None and attacker is not model  # both in eval mode (`evaluated_in_eval_mode`)
    attacker = attacker if transfer else model
    if transfer:
        if protocol == "project":  # the reference attacks read the encoders' embeddings, not a grounding objective
            check_attacker(attacker, options.get("objective", "itm"))
    build = build_grounding_attack if protocol == "project" else build_reference_grounding_attack
    built = build_attacks(["clean", *[a for a in attacks if a != "clean"]], attacker, options, build=build)
    run = _GroundingRun.over(data, texts, model, attacker, transfer, batch_size, ground_batch, expression_checker, seed,
                             _decodings(data, model, attacker, workers))
    report = run.report_head(built, options, protocol, active_precision(model.device), caption_preprocess)
    if progress_dir is not None:
        run.store = run.batch_store(progress_dir, report, built)

    clean_hits: list[bool] | None = None
    # captions cleaned once, as the reference reads them; the decoding workers end with the evaluation
    with captions_read_as_given(caption_preprocess, model, attacker), run.decoding:
        for name, attack, bar in attack_bars(built, len(data.images), "evaluating grounding", progress):
            tally = run.tally(name, attack, bar)
            if name == "clean":  # first: every attack's asr is against it
                clean_hits = tally.hits
            # no line per attack (stdout, under the bar): the report says it, as retrieval's and captioning's
            # evaluations do; in-training validation printed them beside its own one line
            report["attacks"][name] = run.report_entry(name, attack, tally, clean_hits)
    return report


def _expression_texts(data: GroundingData, caption_preprocess: str, protocol_default: str | None = None) -> list[str]:
    """Each expression's text as evaluated (`augment.words.preprocess_caption`); ValueError naming
    the first one the preprocessing leaves empty."""
    from augment.schema import is_blank
    from augment.words import preprocess_caption

    texts = []
    for expression in data.expressions:
        text = preprocess_caption(expression.text, caption_preprocess)
        if is_blank(text):  # as sources' captions
            raise ValueError(f"expression {expression.ref_id!r} ({expression.text!r}): "
                             f"{emptied_in_words(caption_preprocess, protocol_default)}; fix or drop that expression")
        texts.append(text)
    return texts


def _check_attacks_and_data(attacks: Sequence[str], data: GroundingData) -> None:
    """ValueError for an attack grounding has not, or no expression to evaluate."""
    unknown = [a for a in attacks if a not in GROUNDING_ATTACKS]
    if unknown:
        raise ValueError(f"unknown grounding attack(s) {unknown}; expected {', '.join(GROUNDING_ATTACKS)}")
    if not len(data):
        raise ValueError("no expressions to evaluate")


@dataclass
class _GroundingRun:
    """What every batch and report entry of one grounding evaluation read: the models, the data and
    per expression its true box, candidates and image size, the batches, and the store of finished ones."""

    model: Any
    attacker: Any  # the model itself in white-box mode
    transfer: bool
    data: GroundingData
    texts: list[str]  # each expression's text as evaluated (cleaned under a reference protocol)
    truth: list
    candidates: list
    sizes: list[tuple[int, int]]
    image_of_text: torch.Tensor
    multi: list[int]  # the expressions whose image has two candidates or more
    batch_size: int
    spans: list[tuple[int, int]]  # each batch's (first image, image after its last)
    batch_ids: list[list[int]]  # each batch's expressions
    ground_batch: int
    expression_checker: ExpressionChecker | None
    seed: int
    decoding: Any  # `_decodings`: the images, by each `_image_view`'s preprocessings
    store: BatchStore | None = None
    # expressions per split when the evaluated ones span several (RefCOCO+ --split test: testA and
    # testB, which ALBEF reports apart; the pooled accuracy is no published number)
    splits: dict[str, list[int]] | None = None

    @classmethod
    def over(cls, data: GroundingData, texts: list[str], model, attacker, transfer: bool, batch_size: int, ground_batch: int,
             expression_checker: ExpressionChecker | None, seed: int, decoding) -> "_GroundingRun":
        truth = [e.box for e in data.expressions]
        candidates = [data.images[e.image].candidates for e in data.expressions]
        sizes = [(data.images[e.image].height, data.images[e.image].width) for e in data.expressions]
        image_of_text = torch.tensor(data.image_of_text(), dtype=torch.long)
        multi = [i for i, boxes in enumerate(candidates) if len(boxes) >= 2]  # rows a grounder can get wrong
        spans = [(start, min(start + batch_size, len(data.images))) for start in range(0, len(data.images), batch_size)]
        batch_ids = [torch.nonzero((image_of_text >= start) & (image_of_text < stop)).flatten().tolist()
                     for start, stop in spans]
        splits: dict[str, list[int]] = {}
        for i, expression in enumerate(data.expressions):
            splits.setdefault(expression.split, []).append(i)
        return cls(model, attacker, transfer, data, texts, truth, candidates, sizes, image_of_text, multi, batch_size, spans,
                   batch_ids, ground_batch, expression_checker, seed, decoding,
                   splits=splits if len(splits) > 1 else None)

    def report_head(self, built: dict, options: dict, protocol: str, precision: str,
                    caption_preprocess: str) -> dict[str, Any]:
        """The report before any attack's entry: models, data, baselines and settings; its procedure is
        `protocol`'s (the evaluation's, decided once by the caller from `options`)."""
        data, candidates, truth, multi = self.data, self.candidates, self.truth, self.multi
        if protocol == "project":
            procedure = PROCEDURE.format(objective=OBJECTIVE_WORDS[options.get("objective", "itm")])
        else:
            embedding = options.get("attacked_embedding", "unimodal")
            procedure = REFERENCE_PROCEDURE.format(embedding="encoders' unimodal embeddings" if embedding == "unimodal"
                                                   else f"fusion encoder's output ({embedding})")
        return {
            "task": "grounding", "model": self.model.describe(), "attacker": self.attacker.describe(),
            "procedure": procedure,
            "data": {"source": data.source, "format": data.format, "images": len(data.images),
                     "expressions": len(data), "splits": data.splits()},
            "baselines": {"random_box": random_box_accuracy(candidates, truth),
                          "oracle": oracle_accuracy(candidates, truth),
                          "random_box_multi": random_box_accuracy([candidates[i] for i in multi], [truth[i] for i in multi]),
                          "expressions_multi": len(multi)},
            "settings": {"attacks": list(built), "batch_size": self.batch_size, "iou_threshold": IOU_THRESHOLD,
                         "mode": "transfer" if self.transfer else "white-box", "seed": self.seed, "precision": precision,
                         "device": torch.device(self.model.device).type,
                         "caption_preprocess": caption_preprocess, "attack_options": plain_attack_options(options)},
            "attacks": {},
        }

    def batch_store(self, progress_dir: str | Path, report: dict, built: dict) -> BatchStore:
        """The store of finished batches under `progress_dir`, tagged with what a resumed run must share
        (the report's models, data and settings, the weights and the data's fingerprint)."""
        from augment.scoring.pool_scores import source_root

        settings = report["settings"]
        # the data by content, image paths relative to the source's folder (not its name: a moved one resumes);
        # a folder tagged before 2026-12-07 named the source and its images by absolute path (`placed`)
        data = {key: value for key, value in report["data"].items() if key != "source"}
        tag = {
            "model": self.model.describe(), "attacker": self.attacker.describe(), "mode": settings["mode"],
            **weights_identity(self.model, self.attacker), **substitute_model_identity(built),
            "data": {**data, "files": data_fingerprint(self.data, source_root(self.data.source))},
            "attacks": {name: attack.params() for name, attack in built.items()}, "options": settings["attack_options"],
            "batch_size": self.batch_size, "ground_batch": self.ground_batch, "seed": self.seed,
            "caption_preprocess": settings["caption_preprocess"],
            "device": torch.device(self.model.device).type,
            "precision": settings["precision"], "checker": getattr(self.expression_checker, "__name__", None),
        }
        placed = {**tag, "data": {**report["data"], "fingerprint": data_fingerprint(self.data)}}
        return BatchStore(progress_dir, tag, placed)

    def tally(self, name: str, attack, bar) -> _Tally:
        """Attack `name` over every batch, in order: read back where a resumed evaluation kept the
        batch, else attacked, grounded and kept."""
        tally = _Tally(len(self.data))
        view = _image_view(attack.modality, self.transfer)
        # a batch at a time (images decoded, attacked and grounded per batch): memory stays bounded
        for batch_index, pixels in _resumable_batches(self.decoding, self.spans, view, self.store, name):
            if pixels is None:
                expected = partial(_BatchResult.problem, len(self.batch_ids[batch_index]))
                state = self.store.load_state(name, batch_index, expected)
            else:
                part = self.attack_batch(name, attack, pixels, batch_index)
                if self.store is not None:
                    self.store.save(name, batch_index, part)
                state = part.state()
            tally.add(self.batch_ids[batch_index], state)
            images = self.spans[batch_index][1] - self.spans[batch_index][0]
            if pixels is None:  # kept by the evaluation this one resumes: not in the bar's rate
                advance_resumed(bar, images)
            else:
                bar.update(images)
        return tally

    def attack_batch(self, name: str, attack, views: list[torch.Tensor], batch_index: int) -> _BatchResult:
        """One batch attacked (on the first view) and grounded by the model; with a checker, the
        expressions it rejects grounded again unattacked."""
        from train.data import derive_seed

        ids = self.batch_ids[batch_index]
        pairing = self.image_of_text[ids] - self.spans[batch_index][0]
        began = time.perf_counter()
        reseed_attack(attack, derive_seed(self.seed, name, batch_index))  # a resumed batch draws what it drew before
        result = attack(views[0].to(self.attacker.device), [self.texts[i] for i in ids], pairing,
                        boxes=[self.truth[i] for i in ids], sizes=[self.sizes[i] for i in ids])
        changes = (words_changed_of(result, [self.texts[i] for i in ids], name)
                   if attack.modality in ("text", "multimodal") else [[] for _ in ids])
        images = self.grounded_images(attack, views, result)
        # Co-Attack's grounding code attacks one copy of the image per expression: already one row each
        per_text = len(views) == 1 and result.info.get(IMAGE_PER_TEXT, False)
        row_pixels = images if per_text else images[pairing.to(images.device)]
        hits = self.hits_of(row_pixels, list(result.texts), ids)
        verdicts = self.verdicts(ids, changes, result.texts)
        kept_hits = self.hits_with_rejected_unattacked(hits, verdicts, row_pixels, ids)
        return _BatchResult(hits, kept_hits, [len(c) for c in changes], verdicts,
                            float(result.info.get("linf", 0.0)), time.perf_counter() - began)

    def grounded_images(self, attack, views: list[torch.Tensor], result) -> torch.Tensor:
        """The batch's images the model grounds in: its own view, or the attacked ones at its resolution."""
        if len(views) > 1:  # a text attack in transfer: the victim grounds its own view of the image
            return views[1].to(self.model.device)
        if self.transfer and attack.modality in ("image", "multimodal"):  # the attacker's pixels, at the victim's size
            return to_victim_resolution(result.images.detach().to(self.model.device), self.model.image_size)
        return result.images.detach()

    def hits_of(self, pixels: torch.Tensor, texts: list[str], ids: list[int]) -> list[bool]:
        chosen = ground(self.model, pixels, texts, [self.candidates[i] for i in ids], [self.sizes[i] for i in ids],
                        self.ground_batch)
        return [box_iou(self.candidates[i][c], self.truth[i]) >= IOU_THRESHOLD for i, c in zip(ids, chosen)]

    def verdicts(self, ids: list[int], changes: list, texts: Sequence[str]) -> list[bool | None]:
        """The checker's verdict on each changed expression of the batch (None: unchanged, unjudged or no checker)."""
        verdicts: list[bool | None] = [None] * len(ids)
        if self.expression_checker is not None:
            for local, i in enumerate(ids):
                if changes[local]:
                    expression = self.data.expressions[i]
                    verdicts[local] = self.expression_checker(texts[local], self.data.images[expression.image],
                                                              expression)
        return verdicts

    def hits_with_rejected_unattacked(self, hits: list[bool], verdicts: list[bool | None], row_pixels: torch.Tensor,
                                      ids: list[int]) -> list[bool]:
        """`hits`, where an expression the checker rejected is grounded again with its clean text."""
        kept_hits = list(hits)
        rejected = [local for local, verdict in enumerate(verdicts) if verdict is False]
        if rejected:  # an expression the attack made refer elsewhere counts as not attacked
            regrounded = self.hits_of(row_pixels[rejected], [self.texts[ids[k]] for k in rejected],
                                      [ids[k] for k in rejected])
            for local, hit in zip(rejected, regrounded):
                kept_hits[local] = hit
        return kept_hits

    def report_entry(self, name: str, attack, tally: _Tally, clean_hits: list[bool]) -> dict[str, Any]:
        """Attack `name`'s entry: accuracy, asr against `clean_hits`, budget, words changed, meaning kept."""
        hits = tally.hits
        entry: dict[str, Any] = {
            "modality": attack.modality, "params": attack.params(), "accuracy": _accuracy(hits),
            "accuracy_multi": _accuracy([hits[i] for i in self.multi]),
            "seconds": round(tally.seconds, 2),
        }
        if self.splits is not None:
            entry["accuracy_by_split"] = {split: _accuracy([hits[i] for i in ids]) for split, ids in sorted(self.splits.items())}
        if name != "clean":
            entry["asr"] = _asr(clean_hits, hits)
        if attack.modality in ("image", "multimodal"):
            entry["linf"] = tally.linf
        if attack.modality in ("text", "multimodal"):
            changed = [w for w in tally.words_changed if w]
            entry["texts_changed"] = len(changed)
            entry["words_changed_mean"] = sum(tally.words_changed) / len(tally.words_changed)
            if self.expression_checker is not None:
                judged = [v for v in tally.verdicts if v is not None]
                entry["meaning_preserved"] = {"true": sum(judged), "false": len(judged) - sum(judged),
                                              "unknown": len(changed) - len(judged)}
                entry["accuracy_meaning_preserved"] = _accuracy(tally.kept_hits)
                entry["asr_meaning_preserved"] = _asr(clean_hits, tally.kept_hits)
        return entry


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
        row = [name, percent_cell(entry["accuracy"]), percent_cell(entry.get("accuracy_multi")), percent_cell(entry.get("asr"))]
        if judged:
            if "accuracy_meaning_preserved" in entry:
                mp = entry["meaning_preserved"]
                row += [percent_cell(entry["accuracy_meaning_preserved"]), percent_cell(entry["asr_meaning_preserved"]),
                        f"{mp['true']}/{mp['false']}/{mp['unknown']}"]
            else:
                row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    by_split = {name: entry["accuracy_by_split"] for name, entry in report["attacks"].items() if "accuracy_by_split" in entry}
    if by_split:  # e.g. RefCOCO+ test = testA + testB: the papers report each
        lines += ["", "Accuracy by split: " + "; ".join(
            f"{name} " + ", ".join(f"{split} {percent_cell(value)}" for split, value in splits.items())
            for name, splits in by_split.items()) + "."]
    lines += ["", report["procedure"]]
    lines += settings_markdown(report) + [""]
    return "\n".join(lines)

