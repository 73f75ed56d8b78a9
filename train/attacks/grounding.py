"""Attacks on visual grounding: lower the ITM score (or the heat on the true box) of each
(image, referring expression) pair.

Same call signature as the retrieval attacks (`train.attacks.base.Attack`):
`attack(images, texts, image_of_text, boxes=None) -> AttackResult`, where `images` are the
distinct images [B, 3, S, S] in [0, 1] at the model's resolution, `texts` the expressions and
`image_of_text[t]` the image of expression t (an image is perturbed once, against all its
expressions, so SGA sees each image's expression set). `boxes` (true boxes, in the coordinates of
`sizes`) are needed by the "heat" objective only.

Objectives (`GroundingVictim.scores`, per expression; the attacks push them DOWN):

* "itm" (default): the ITM match logit of (image, expression): Grad-CAM grounding reads the
  gradient of exactly this score, so lowering it starves the heat map;
* "heat": the share of the Grad-CAM heat that falls inside the true box; needs a
  `grounding_heatmap` that is differentiable in the pixels for the image part (the text part
  needs no gradients).

The attacks (the retrieval ones rebuilt on these objectives; Co-Attack's grounding code attacks
ALBEF's unimodal embeddings before fusion, here every part aims at the grounding score itself):

* `GroundingPGD`: L-inf PGD on pixels.
* `GroundingTextAttack`: BERT-Attack's greedy word substitution (`train.attacks.text.greedy_search`;
  masked-LM or WordNet substitutes, importance = how much masking a word lowers the score),
  keeping the substitute that lowers the score most.
* `GroundingSepAttack`: both, independently, each against the clean other modality.
* `GroundingCoAttack`: text first; then PGD on `(1 - cos(adv, clean image embedding)) + alpha *
  (- score(adv image, attacked expressions))`.
* `GroundingSGA`: text against the image and its resized copies (mean score), image against
  the set of attacked expressions of each image over resized copies, then the original
  expressions again against the adversarial image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from train.attacks.base import AttackResult
from train.attacks.multimodal import CO_ATTACK_ALPHA, SGA_NOISE_STD, SGA_SCALES, resized_views
from train.attacks.pgd import pgd_linf
from train.attacks.settings import pgd_step_size
from train.attacks.substitutes import DEFAULT_MLM_BATCH, SubstituteSource
from train.attacks.text import DEFAULT_TEXT_BATCH, greedy_search, plan_search, round_fill

GROUNDING_ATTACKS = ("clean", "pgd", "bert-attack", "synonym", "sep", "co-attack", "sga")
GROUNDING_OBJECTIVES = ("itm", "heat")


def _pairing(num_images: int, num_texts: int, image_of_text) -> torch.Tensor:
    if image_of_text is None:
        if num_images != num_texts:
            raise ValueError(f"{num_images} images and {num_texts} expressions: pass image_of_text")
        return torch.arange(num_texts)
    return torch.as_tensor(image_of_text, dtype=torch.long)


class GroundingVictim:
    """A grounding model as the attacks see it: per-expression scores to lower."""

    def __init__(self, model, objective: str = "itm", text_batch: int = DEFAULT_TEXT_BATCH):
        if objective not in GROUNDING_OBJECTIVES:
            raise ValueError(f"unknown grounding objective {objective!r}; expected one of {GROUNDING_OBJECTIVES}")
        self.model, self.objective, self.text_batch = model, objective, text_batch

    @property
    def device(self) -> torch.device:
        return self.model.device

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device))

    def scores(self, pixels: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor,
               boxes: Sequence[Sequence[float]] | None = None, sizes: Sequence[tuple[int, int]] | None = None,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """[T] score of each expression with its image (differentiable in `pixels` for "itm").

        `features`: the images' `image_features`, when already computed (text attacks reuse them).
        """
        pairing = image_of_text.to(self.device)
        texts = list(texts)
        if self.objective == "itm":
            if features is None:
                features = self.model.image_features(pixels.to(self.device))
            parts = []
            for start in range(0, len(texts), self.text_batch):
                part = slice(start, start + self.text_batch)
                tokens = self.model.tokenize(texts[part])
                parts.append(self.model.itm_logits(features[pairing[part]], tokens))
            return torch.cat(parts) if parts else torch.zeros(0, device=self.device)
        if boxes is None or sizes is None:
            raise ValueError("the 'heat' objective needs the true boxes and the image sizes")
        return self._heat_share(pixels.to(self.device), texts, pairing, boxes, sizes)

    def _heat_share(self, pixels, texts, pairing, boxes, sizes) -> torch.Tensor:
        shares = []
        for start in range(0, len(texts), self.text_batch):
            part = slice(start, start + self.text_batch)
            tokens = self.model.tokenize(texts[part])
            with torch.enable_grad():  # Grad-CAM needs autograd even when the caller does not
                heat = self.model.grounding_heatmap(pixels[pairing[part]], tokens)  # [n, h, w]
            for k, row in enumerate(heat):
                height, width = sizes[start + k]
                x, y, w, h = boxes[start + k][:4]
                mask = torch.zeros(height, width, device=row.device)
                mask[int(y):int(y + h), int(x):int(x + w)] = 1
                mask = F.adaptive_avg_pool2d(mask[None, None], row.shape)[0, 0]  # box coverage per patch
                shares.append((row * mask).sum() / row.sum().clamp_min(1e-8))
        return torch.stack(shares) if shares else torch.zeros(0, device=self.device)


@dataclass
class _Target:
    """What the attacks need beside images and texts."""

    pairing: torch.Tensor
    boxes: Sequence[Sequence[float]] | None
    sizes: Sequence[tuple[int, int]] | None


class GroundingAttack:
    modality = ""
    name = ""

    def __init__(self, victim: GroundingVictim):
        self.victim = victim

    def params(self) -> dict:
        return {"objective": self.victim.objective}

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text=None, boxes=None,
                 sizes=None) -> AttackResult:
        target = _Target(_pairing(len(images), len(texts), image_of_text), boxes, sizes)
        return self.run(images, list(texts), target)

    def run(self, images: torch.Tensor, texts: list[str], target: _Target) -> AttackResult:
        raise NotImplementedError

    def score(self, images, texts, target: _Target, features=None) -> torch.Tensor:
        return self.victim.scores(images, texts, target.pairing, target.boxes, target.sizes, features)


class GroundingNoAttack(GroundingAttack):
    modality, name = "none", "clean"

    def run(self, images, texts, target):
        return AttackResult(images=images, texts=texts, info={})


class GroundingPGD(GroundingAttack):
    """PGD that lowers the mean score of every expression with its (perturbed) image."""

    modality, name = "image", "pgd"

    def __init__(self, victim: GroundingVictim, eps: float = 2 / 255, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, generator: torch.Generator | None = None):
        super().__init__(victim)
        self.eps, self.steps, self.random_start, self.generator = eps, steps, random_start, generator
        self.step_size = pgd_step_size(eps, step_size)

    def params(self) -> dict:
        return {**super().params(), "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start}

    def perturb(self, images: torch.Tensor, loss_fn) -> torch.Tensor:
        return pgd_linf(images, loss_fn, self.eps, self.steps, self.step_size, self.random_start, self.generator)

    def against(self, images: torch.Tensor, texts: list[str], target: _Target) -> torch.Tensor:
        return self.perturb(images, lambda adv: -self.score(adv, texts, target).mean())

    def run(self, images, texts, target):
        adversarial = self.against(images.to(self.victim.device), texts, target)
        return AttackResult(images=adversarial, texts=texts, info={"linf": _linf(adversarial, images)})


def _linf(adversarial: torch.Tensor, images: torch.Tensor) -> float:
    return float((adversarial - images.to(adversarial.device)).abs().max()) if len(images) else 0.0


class GroundingTextAttack(GroundingAttack):
    """Greedy word substitution (BERT-Attack) that lowers each expression's score with its image."""

    modality, name = "text", "bert-attack"

    def __init__(self, victim: GroundingVictim, substitutes: SubstituteSource, budget: int = 1):
        super().__init__(victim)
        if budget < 0:
            raise ValueError("budget must be >= 0")
        self.source, self.budget = substitutes, budget

    def params(self) -> dict:
        return {**super().params(), **self.source.params(), "budget": self.budget}

    @torch.no_grad()
    def _guided_scores(self, guides: list[torch.Tensor], texts: list[str], owners: list[int], target: _Target,
                       guide_features: list[torch.Tensor] | None) -> torch.Tensor:
        """Mean score over the guide images (the image, or SGA's views) of texts owned by expressions."""
        owner_ids = torch.tensor(owners, dtype=torch.long)
        sub = _Target(target.pairing[owner_ids],
                      [target.boxes[o] for o in owners] if target.boxes is not None else None,
                      [target.sizes[o] for o in owners] if target.sizes is not None else None)
        total = 0
        for k, guide in enumerate(guides):
            features = guide_features[k] if guide_features is not None else None
            total = total + self.score(guide, texts, sub, features).float()
        return (total / len(guides)).cpu()

    @torch.no_grad()
    def perturb(self, guides: list[torch.Tensor], texts: list[str], target: _Target) -> tuple[list[str], list[list[dict]]]:
        """(attacked texts, words changed per text) against fixed guide images (no pixel gradients).

        `train.attacks.text`'s greedy search maximising minus the score; importance = how far
        masking a word lowers the score.
        """
        if self.budget == 0 or not texts:
            return list(texts), [[] for _ in texts]
        features = None
        if self.victim.objective == "itm":
            features = [self.victim.model.image_features(g.to(self.victim.device)) for g in guides]

        def lowered(candidates: list[str], owners: list[int]) -> torch.Tensor:
            return -self._guided_scores(guides, candidates, owners, target, features)

        initial = lowered(texts, list(range(len(texts))))
        plan = plan_search(texts, self.source, lambda masked, owners: lowered(masked, owners) - initial[owners])
        return greedy_search(texts, plan, lowered, self.budget, initial=initial.tolist(),
                             fill=round_fill(self.victim.device, self.victim.text_batch))

    def run(self, images, texts, target):
        attacked, changes = self.perturb([images.to(self.victim.device)], texts, target)
        return AttackResult(images=images, texts=attacked, info={"words_changed": changes})


class _Multimodal(GroundingAttack):
    modality = "multimodal"

    def __init__(self, victim: GroundingVictim, image_attack: GroundingPGD, text_attack: GroundingTextAttack):
        super().__init__(victim)
        self.image_attack, self.text_attack = image_attack, text_attack

    def params(self) -> dict:
        return {**super().params(), "image": self.image_attack.params(), "text": self.text_attack.params()}

    def result(self, images, adversarial, texts, changes) -> AttackResult:
        return AttackResult(images=adversarial, texts=texts, info={"words_changed": changes, "linf": _linf(adversarial, images)})


class GroundingSepAttack(_Multimodal):
    name = "sep"

    def run(self, images, texts, target):
        images = images.to(self.victim.device)
        adversarial = self.image_attack.against(images, texts, target)
        attacked, changes = self.text_attack.perturb([images], texts, target)
        return self.result(images, adversarial, attacked, changes)


class GroundingCoAttack(_Multimodal):
    name = "co-attack"

    def __init__(self, victim, image_attack, text_attack, alpha: float = CO_ATTACK_ALPHA):
        super().__init__(victim, image_attack, text_attack)
        self.alpha = alpha

    def params(self) -> dict:
        return {**super().params(), "alpha": self.alpha}

    def run(self, images, texts, target):
        images = images.to(self.victim.device)
        attacked, changes = self.text_attack.perturb([images], texts, target)
        with torch.no_grad():
            clean_emb = F.normalize(self.victim.embed(images), dim=-1)

        def loss(adv: torch.Tensor) -> torch.Tensor:
            away = (1 - (F.normalize(self.victim.embed(adv), dim=-1) * clean_emb).sum(-1)).mean()
            return away - self.alpha * self.score(adv, attacked, target).mean()

        adversarial = self.image_attack.perturb(images, loss)
        return self.result(images, adversarial, attacked, changes)


class GroundingSGA(_Multimodal):
    name = "sga"

    def __init__(self, victim, image_attack, text_attack, scales: Sequence[float] = SGA_SCALES,
                 noise_std: float = SGA_NOISE_STD):
        super().__init__(victim, image_attack, text_attack)
        self.scales, self.noise_std = tuple(float(s) for s in scales), noise_std

    def params(self) -> dict:
        return {**super().params(), "scales": list(self.scales), "noise_std": self.noise_std}

    def run(self, images, texts, target):
        images = images.to(self.victim.device)
        with torch.no_grad():
            views = [images, *resized_views(images, self.scales)]
        first, _ = self.text_attack.perturb(views, texts, target)  # (1) text against the view set
        generator = self.image_attack.generator

        def loss(adv: torch.Tensor) -> torch.Tensor:  # (2) views against the attacked expression set
            adv_views = [adv, *resized_views(adv, self.scales, self.noise_std, generator)]
            return -sum(self.score(view, first, target).mean() for view in adv_views)

        adversarial = self.image_attack.perturb(images, loss)
        attacked, changes = self.text_attack.perturb([adversarial], texts, target)  # (3) original text again
        return self.result(images, adversarial, attacked, changes)


def build_grounding_attack(name: str, model, *, objective: str = "itm", eps: float = 2 / 255, steps: int = 10,
                           step_size: float | None = None, random_start: bool = True, seed: int | None = None,
                           candidates: str = "mlm", mlm: Any = "default", top_k: int = 10, budget: int = 1,
                           max_length: int = 30, mlm_batch: int = DEFAULT_MLM_BATCH, text_batch: int = DEFAULT_TEXT_BATCH,
                           scales: Sequence[float] = SGA_SCALES, noise_std: float = SGA_NOISE_STD,
                           alpha: float = CO_ATTACK_ALPHA, **_ignored) -> GroundingAttack:
    """A grounding attack by name (`GROUNDING_ATTACKS`) on a model with ITM (and grounding);
    defaults = the retrieval attacks' protocol (eps 2/255, 10 steps of eps / 4 = 0.5/255; k 10, budget 1)."""
    from train.attacks.settings import refuse_unknown_options

    refuse_unknown_options(_ignored, "grounding")  # retrieval's own options are ignored here, not misspelt ones
    if name not in GROUNDING_ATTACKS:
        raise ValueError(f"unknown grounding attack {name!r}; expected one of {', '.join(GROUNDING_ATTACKS)}")
    victim = GroundingVictim(model, objective, text_batch)
    if name == "clean":
        return GroundingNoAttack(victim)

    def image_attack() -> GroundingPGD:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return GroundingPGD(victim, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                            generator=generator)

    def text_attack(source_name: str) -> GroundingTextAttack:
        from train.attacks.substitutes import MaskedLMSubstitutes, NoSubstitutes, WordNetSubstitutes, load_masked_lm

        if budget == 0:  # no word changes: no masked LM or WordNet is read, so none is loaded
            source = NoSubstitutes()
        elif source_name == "wordnet":
            source = WordNetSubstitutes(top_k=top_k, max_length=max_length)
        else:
            mlm_model, tokenizer, model_id = load_masked_lm(mlm, victim.device, model)
            source = MaskedLMSubstitutes(mlm_model, tokenizer, top_k=top_k, max_length=max_length,
                                         batch_size=mlm_batch, model_id=model_id)
        attack = GroundingTextAttack(victim, source, budget=budget)
        attack.name = "synonym" if source_name == "wordnet" else "bert-attack"
        return attack

    if name == "pgd":
        return image_attack()
    if name in ("bert-attack", "synonym"):
        return text_attack("wordnet" if name == "synonym" else candidates)
    image, text = image_attack(), text_attack(candidates)
    if name == "sep":
        return GroundingSepAttack(victim, image, text)
    if name == "co-attack":
        return GroundingCoAttack(victim, image, text, alpha=alpha)
    return GroundingSGA(victim, image, text, scales=scales, noise_std=noise_std)


__all__ = ["GROUNDING_ATTACKS", "GROUNDING_OBJECTIVES", "GroundingAttack", "GroundingCoAttack", "GroundingNoAttack",
           "GroundingPGD", "GroundingSGA", "GroundingSepAttack", "GroundingTextAttack", "GroundingVictim",
           "build_grounding_attack"]
