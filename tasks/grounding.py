"""Visual grounding (issue 15): pick the box a referring expression refers to.

ALBEF's weakly supervised protocol (its Grounding.py and `grounding_eval`):

* training: ITC + ITM on (image, expression) pairs, as ALBEF fine-tunes for grounding
  (expressions of the same image are positives of each other; ITM negatives are mined from the
  ITC similarities): the retrieval task's loss for fusion families, except that rows whose
  expressions are the same text are positives too (`expression_positives`);
* evaluation: `heat = model.grounding_heatmap(pixels, tokens)` (Grad-CAM of the ITM score on the
  fusion encoder's cross-attention), upsampled bicubically to the original image size; each
  candidate box scores `sum of the heat inside it / area ** 0.5`; the best box is chosen;
  accuracy = share of expressions whose chosen box has IoU >= 0.5 with the true box.

Departures from ALBEF's code, on purpose: ties and all-zero heat pick the first candidate (ALBEF
keeps the previous expression's box when no score exceeds 0); the random-box baseline is the
exact expectation of choosing a candidate uniformly (no sampling noise); equal expressions of
different images are positives, not negatives (short expressions such as "the star" recur across
the sample world's scenes: as negatives, ITM learns that a star does not match a star; ALBEF
keys positives by image, which RefCOCO+'s long free-form expressions rarely contradict); on the
sample world (every training row carries its scene) an expression the world's checker finds true
of another image is a positive of that image too (`GroundingTask.true_pairs`): mined ITM
negatives are otherwise often true of their image, and ITM learns contradicting labels; and on
the sample world each expression also meets two counterfactual images of its scene, re-rendered
from the scene's spec (`counterfactual_scenes`): the referred object removed or changed so that
the world's checker finds the expression false (an ITM negative), another object removed or
changed so that it stays true (an ITM positive). ALBEF has no such pairs (its localisation comes
from pre-training on 14M images); real data has no scenes to re-render, so they are off there
(`GroundingTask(counterfactual_pairs=False)` turns them off on the world too).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from models.base import TextTokens
from tasks.retrieval import ITC_LOSSES, RetrievalTask, hard_negatives, itc_logits_for_mining, itc_loss, softmax_itc_loss

if TYPE_CHECKING:
    from models.base import VisionLanguageModel

IOU_THRESHOLD = 0.5
AREA_EXPONENT = 0.5  # ALBEF's alpha: a box's heat is divided by area ** 0.5
# the checker's verdicts and counterfactual scenes `GroundingTask` keeps per (row, text), the latest so many
# at most: pairs recur across epochs, but a batch of B adds B x B verdicts and under mat / mat+ the texts are the
# step's attacked expressions, new at almost every step (unbounded, each step's entries stayed for the run)
TRUTH_CACHE_SIZE = 1 << 16  # ~100 bytes a verdict: ~7 MB
COUNTERFACTUAL_CACHE_SIZE = 1 << 12  # ~8 KB an expression's edited scenes: ~32 MB


class FirstInFirstOut(dict):
    """A dict of at most `size` entries: `kept(key, make)` returns the value kept, or keeps `make()`'s and
    drops the oldest entry past `size` (a plain dict's order: no bookkeeping on a hit)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = max(1, int(size))

    def kept(self, key, make):
        try:
            return self[key]
        except KeyError:
            pass
        value = self[key] = make()
        if len(self) > self.size:
            del self[next(iter(self))]
        return value


# ----------------------------------------------------------------------------- boxes


def box_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """IoU of two [x, y, w, h] boxes as ALBEF's RefCOCO evaluation scores it: the continuous IoU,
    except that boxes overlapping by one pixel or less along either axis score 0 (the reference
    intersects inclusive pixel ranges and counts an intersection only when first < last).

    Plain Python, not torchvision.ops.box_iou: it runs once per candidate box, and building the
    tensors for one pair costs ~250 us there against ~1 us here."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1[:4], box2[:4]
    overlap_w = min(x1 + w1, x2 + w2) - max(x1, x2)
    overlap_h = min(y1 + h1, y2 + h2) - max(y1, y2)
    if overlap_w <= 1 or overlap_h <= 1:
        return 0.0
    inter = overlap_w * overlap_h
    return float(inter / (w1 * h1 + w2 * h2 - inter))  # both boxes wider and taller than 1 here: no zero union


def upsample_heat(heat: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[h, w] patch heat -> [height, width] (bicubic, as ALBEF)."""
    return F.interpolate(heat[None, None].float(), size=(height, width), mode="bicubic", align_corners=False)[0, 0]


def box_scores(heat: torch.Tensor, boxes: Sequence[Sequence[float]], alpha: float = AREA_EXPONENT) -> torch.Tensor:
    """[K] scores of candidate boxes on a full-resolution heat map [H, W]: heat inside / area ** alpha.

    The box's pixels are rows int(y) .. int(y + h) - 1 and columns int(x) .. int(x + w) - 1
    (ALBEF's slicing); sums come from an integral image.
    """
    height, width = heat.shape
    integral = F.pad(heat.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    scores = []
    for x, y, w, h in (b[:4] for b in boxes):
        x0, y0 = min(max(int(x), 0), width), min(max(int(y), 0), height)
        x1, y1 = min(max(int(x + w), 0), width), min(max(int(y + h), 0), height)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0] if x1 > x0 and y1 > y0 else 0.0
        scores.append(float(inside) / (w * h) ** alpha)
    return torch.tensor(scores)


def choose_box(heat: torch.Tensor, boxes: Sequence[Sequence[float]], height: int, width: int,
               alpha: float = AREA_EXPONENT) -> int:
    """Index of the best candidate for a patch heat map [h, w] of an image `height` x `width`."""
    return int(box_scores(upsample_heat(heat, height, width), boxes, alpha).argmax())


def grounding_hits(chosen: Sequence[Sequence[float]], truth: Sequence[Sequence[float]],
                   threshold: float = IOU_THRESHOLD) -> list[bool]:
    return [box_iou(c, t) >= threshold for c, t in zip(chosen, truth)]


def random_box_accuracy(candidates: Sequence[Sequence[Sequence[float]]], truth: Sequence[Sequence[float]],
                        threshold: float = IOU_THRESHOLD) -> float:
    """Expected accuracy (percent) of choosing one candidate uniformly at random per expression."""
    shares = [sum(box_iou(c, t) >= threshold for c in boxes) / len(boxes) for boxes, t in zip(candidates, truth)]
    return 100.0 * sum(shares) / max(len(shares), 1)


def oracle_accuracy(candidates: Sequence[Sequence[Sequence[float]]], truth: Sequence[Sequence[float]],
                    threshold: float = IOU_THRESHOLD) -> float:
    """Percent of expressions with at least one candidate good enough: the ceiling of any grounder."""
    hits = [any(box_iou(c, t) >= threshold for c in boxes) for boxes, t in zip(candidates, truth)]
    return 100.0 * sum(hits) / max(len(hits), 1)


def ground(model: "VisionLanguageModel", pixels: torch.Tensor, texts: Sequence[str] | TextTokens,
           candidates: Sequence[Sequence[Sequence[float]]], sizes: Sequence[tuple[int, int]],
           batch_size: int = 64, alpha: float = AREA_EXPONENT) -> list[int]:
    """The chosen candidate of each row-aligned (pixels [N, 3, S, S], expression) pair.

    `sizes`: (height, width) of each row's original image (the candidates' coordinates).
    """
    tokens = texts if isinstance(texts, TextTokens) else model.tokenize(list(texts))
    chosen = []
    for start in range(0, len(pixels), batch_size):
        part = slice(start, start + batch_size)
        with torch.enable_grad():  # Grad-CAM differentiates the ITM score
            heat = model.grounding_heatmap(pixels[part].to(model.device), tokens[part].to(model.device))
        heat = heat.detach().cpu()
        for k, row_heat in enumerate(heat):
            height, width = sizes[start + k]
            chosen.append(choose_box(row_heat, candidates[start + k], height, width, alpha))
    return chosen


# ----------------------------------------------------------------------------- the training loss


def expression_positives(keys: torch.Tensor, texts: Sequence[str] | None) -> torch.Tensor:
    """[B, B] float: 1 where two rows share their image (key) or their expression's text
    (compared in lower case, whitespace normalised)."""
    positives = keys.view(-1, 1) == keys.view(1, -1)
    if texts is not None:
        ids: dict[str, int] = {}
        text_ids = torch.tensor([ids.setdefault(" ".join(t.lower().split()), len(ids)) for t in texts],
                                device=keys.device)
        positives = positives | (text_ids.view(-1, 1) == text_ids.view(1, -1))
    return positives.float()


def grounding_itm_loss(model, output, tokens: TextTokens, positives: torch.Tensor,
                       counterfactuals: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """ALBEF's ITM (each pair; a hard negative expression per image and image per expression,
    drawn by ITC similarity among the non-positives), with `positives` [image row, text row] as the labels.

    `counterfactuals` (rows [R], pixels [R, 3, S, S], labels [R]): more pairs, each row's expression
    with an edited image of its scene, labelled by the world's checker (`GroundingTask.counterfactual_pixels`)."""
    # scaled by 1/temperature as ALBEF draws them (`itc_logits_for_mining`)
    sims = itc_logits_for_mining(output) @ output.text_emb.detach().float().T
    negative_text = hard_negatives(sims, positives)
    negative_image = hard_negatives(sims.T, positives.T)
    batch = len(positives)
    features = output.image_features
    logits = model.itm_logits(torch.cat([features, features, features[negative_image]]),
                              TextTokens.cat([tokens, tokens[negative_text], tokens]))
    rows = torch.arange(batch, device=positives.device)
    labels = torch.cat([torch.ones(batch, device=positives.device), positives[rows, negative_text],
                        positives[negative_image, rows]])
    if counterfactuals is not None:
        cf_rows, cf_pixels, cf_labels = counterfactuals
        cf_logits = model.itm_logits(model.image_features(cf_pixels.to(features.dtype)), tokens[cf_rows])
        logits = torch.cat([logits, cf_logits])
        labels = torch.cat([labels, cf_labels.to(labels.dtype)])
    return F.binary_cross_entropy_with_logits(logits.float(), labels.to(logits.device))


def scenes_of_rows(metas: Sequence[str | None]) -> list | None:
    """Per source row its sample-world `Scene` (from the row's meta JSON); None unless every row has one."""
    from augment.world.scene import Scene

    scenes = []
    for meta in metas:
        scene = json.loads(meta or "{}").get("scene")
        if not isinstance(scene, dict):
            return None
        scenes.append(Scene.from_dict(scene))
    return scenes


# ----------------------------------------------------------------------------- counterfactual negatives


def object_edits(scene, index: int) -> list[list]:
    """The scenes that differ from `scene` only in object `index`, grouped by edit: [removed],
    [each other colour], [each other shape], [the other size]. Same background noise and other
    objects: rendered, each differs from the scene's image only inside that object's box."""
    from dataclasses import replace

    from augment.world.scene import COLOURS, SHAPES, SIZES, Scene

    objects, obj = scene.objects, scene.objects[index]

    def edited(new_obj) -> Scene:
        kept = objects[:index] + ((new_obj,) if new_obj is not None else ()) + objects[index + 1:]
        return Scene(kept, scene.background, scene.noise_seed)

    return [[edited(None)],
            [edited(replace(obj, colour=c)) for c in sorted(COLOURS) if c != obj.colour],
            [edited(replace(obj, shape=s)) for s in SHAPES if s != obj.shape],
            [edited(replace(obj, size=z)) for z in SIZES if z != obj.size]]


def counterfactual_scenes(text: str, scene) -> tuple[list[list], list[list]]:
    """(false, true): edits of `scene` (`object_edits`, grouped by edit kind, empty groups left out)
    that the world's checker says make `text` refer to nothing (edits of the object it singles
    out), and that leave it singling out the same object (edits of the other objects); ([], [])
    unless `text` singles out one object.

    A false edit differs from the true image only inside the referred object's box, a true edit
    only inside another object's: together they leave ITM one way to tell match from mismatch,
    looking at the referred object, which is what Grad-CAM grounding reads."""
    from augment.world.truth import referents

    found = referents(text, scene)
    if not found or len(found) != 1:
        return [], []
    target = found[0]
    false = [[s for s in group if referents(text, s) == []] for group in object_edits(scene, target)]
    true = []
    for other in (k for k in range(len(scene.objects)) if k != target):
        for group in object_edits(scene, other):
            # removing an object listed before the target moves the target's index down by one
            shifted = [target - (other < target and len(s.objects) < len(scene.objects)) for s in group]
            true.append([s for s, index in zip(group, shifted) if referents(text, s) == [index]])
    return [g for g in false if g], [g for g in true if g]


# ----------------------------------------------------------------------------- the task


class GroundingTask(RetrievalTask):
    """Referring-expression grounding with an ITM-capable family that grounds (ALBEF).

    Training loss = the retrieval task's for fusion models (ITC with multi-positive targets, or the
    family's own, + ITM with hard negatives) on (image, expression) pairs: what ALBEF's Grounding.py
    fine-tunes with. Adversarial training attacks the grounding objective instead of ITC: PGD
    lowers the ITM score of each (image, expression) pair, the word substitutions are
    `train.attacks.grounding.GroundingTextAttack` (ITM-guided).
    """

    name: ClassVar[str] = "grounding"
    model_kind: ClassVar[str] = "retrieval"
    methods: ClassVar[tuple[str, ...]] = ("clean", "mat", "mat+")

    def __init__(self, rank: int = 0, world_size: int = 1, counterfactual_pairs: bool = True,
                 counterfactual_every: int = 2, **options: Any):
        super().__init__(rank, world_size, **options)
        self.counterfactual_pairs = bool(counterfactual_pairs)
        # every n-th row of a batch (rows come shuffled) gets counterfactual pairs: each costs two image encodings
        self.counterfactual_every = max(1, int(counterfactual_every))
        self.scenes: list | None = None  # the training rows' world scenes (prepare_training)
        # (row, text) -> the checker's verdict, and -> counterfactual_scenes: pairs recur across steps
        self._truth = FirstInFirstOut(TRUTH_CACHE_SIZE)
        self._counterfactuals = FirstInFirstOut(COUNTERFACTUAL_CACHE_SIZE)

    @classmethod
    def options_from_config(cls, config: Any) -> dict[str, Any]:
        return {"counterfactual_pairs": config.counterfactual_pairs}

    def check_model(self, model: Any) -> None:
        super().check_model(model)
        if not getattr(model, "has_grounding", False) or not getattr(model, "has_itm", False):
            raise ValueError(f"the grounding task needs a model with an ITM head and grounding_heatmap (ALBEF); "
                             f"'{model.name}' ({model.family}) has none")

    def train_transform(self, model):
        """The evaluation resize, no crop and no flip: a crop can cut the referred object out and a
        flip swaps the left and right that expressions name (ALBEF's grounding transform is a
        resize plus a flip: RefCOCO+ has no location words)."""
        return model.preprocess_eval

    def prepare_training(self, data: Any, method: str) -> None:
        """When every training row carries a sample-world scene: the scenes (`true_pairs` labels ITM)."""
        train = data.train
        metas = train["meta"] if "meta" in getattr(train, "column_names", ()) else [None] * len(train)
        self.scenes = scenes_of_rows(metas)
        if self.scenes and not any("objects" in json.loads(meta or "{}") for meta in metas):
            # a sample world made without --expressions: its captions describe whole scenes, and the model
            # trained on them as expressions was evaluated on per-object ones `train eval` made up
            from augment.errors import SourceError

            raise SourceError("--train-data is a sample world without "
                              "referring expressions (its captions describe whole scenes); make one for grounding "
                              "with `augment make-sample DIR --expressions N`")
        self._truth.clear()
        self._counterfactuals.clear()

    def true_pairs(self, keys: torch.Tensor, texts: Sequence[str] | None) -> torch.Tensor | None:
        """[B, B] float, image row x text row: 1 where the world's checker says the expression refers
        to some object of the image (`augment.world.truth.referents` not empty); None without scenes.

        In-batch ITM negatives are otherwise other images' expressions, and the most similar one
        (the one mined) is often true of this image too ('the star' of another scene, here a star
        as well): labelled a mismatch, ITM learns contradicting labels (README, "Grounding")."""
        scenes = self.scenes
        if not scenes or texts is None:
            return None
        from augment.world.truth import referents

        def true_of(key: int, text: str) -> bool:
            return self._truth.kept((key, text), lambda: bool(referents(text, scenes[key])))

        table = [[true_of(key, text) for text in texts] for key in keys.tolist()]
        return torch.tensor(table, dtype=torch.float32, device=keys.device)

    def counterfactual_pixels(self, model, keys: torch.Tensor, texts: Sequence[str] | None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(rows [R], pixels [R, 3, S, S], labels [R]): for each row whose expression singles out one
        object of its scene, one false edit (label 0) and one true edit (label 1) of the scene,
        rendered (`counterfactual_scenes`; the edit kind, then the edit, drawn uniformly); None
        without scenes, with the option off, or when no row has one."""
        if not self.counterfactual_pairs or not self.scenes or texts is None:
            return None
        from augment.world.render import render_scene

        transform = self.train_transform(model)
        rows, images, labels = [], [], []
        for row, (key, text) in enumerate(zip(keys.tolist(), texts)):
            if row % self.counterfactual_every:
                continue
            edits = self._counterfactuals.kept((key, text), lambda: counterfactual_scenes(text, self.scenes[key]))
            for label, groups in zip((0.0, 1.0), edits):
                if groups:
                    group = groups[int(torch.randint(len(groups), ()))]
                    rows.append(row)
                    labels.append(label)
                    images.append(transform(render_scene(group[int(torch.randint(len(group), ()))])))
        if not rows:
            return None
        device = keys.device
        return torch.tensor(rows, device=device), torch.stack(images).to(device), torch.tensor(labels, device=device)

    @property
    def gradient_scale(self) -> float:
        return 1.0  # the loss is this process's batch only (no gathering), a mean over processes

    def loss(self, model, pixels, tokens, keys, texts=None, inspect: bool = False) -> torch.Tensor:
        """ITC + ITM on this process's batch, rows with equal expressions positive too; a model's
        own ITC loss (ALBEF's momentum distillation, keyed by image) is kept when it declares one."""
        output = model(pixels, tokens, image_features=True)
        self.inspecting = inspect
        positives = expression_positives(keys.to(output.image_emb.device), texts)
        truth = self.true_pairs(keys.to(output.image_emb.device), texts)
        if truth is not None:
            positives = torch.maximum(positives, truth)
        if model.itc_loss in ITC_LOSSES:
            contrastive = itc_loss(model, output, keys, self)  # a local term of scale 1: the loss itself
        else:
            logits = output.logit_scale * output.image_emb.float() @ output.text_emb.float().T
            contrastive = softmax_itc_loss(logits, positives)
        if self.itm_weight <= 0:  # as retrieval: no ITM term, so no counterfactual scenes rendered for it either
            return contrastive
        return contrastive + self.itm_weight * grounding_itm_loss(
            model, output, tokens, positives, self.counterfactual_pixels(model, keys, texts))

    def image_attack_loss(self, model, tokens: TextTokens, keys: torch.Tensor, texts=None):
        """pixels -> minus the mean ITM match logit of each row with its expression."""
        def loss(pixels: torch.Tensor) -> torch.Tensor:
            return -model.itm_logits(model.image_features(pixels), tokens).float().mean()

        return loss

    def text_attack(self, model, config: Any):
        """MAT's word substitutions on the grounding objective; None with a zero word budget."""
        from train.attacks.grounding import build_grounding_attack

        if getattr(config, "word_budget", 1) == 0:
            return None
        name = "bert-attack" if getattr(config, "text_candidates", "mlm") == "mlm" else "synonym"
        options = {"top_k": getattr(config, "top_k", 10), "budget": getattr(config, "word_budget", 1)}
        if name == "bert-attack":  # the masked LM the config names, else the model's default (tiny-mlm for a
            # twin, as the trainer's config fills it; from Python it was bert-base-uncased, not cached offline)
            from train.config import default_mlm_of

            options["mlm"] = getattr(config, "mlm", None) or default_mlm_of(model)
        return build_grounding_attack(name, model, **options)
