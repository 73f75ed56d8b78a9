"""Training methods as objectives: one batch in, one loss out, attacks included.

* clean: CLIP's contrastive loss on the clean pairs;
* tecoa: contrastive loss of PGD images (maximising that loss) against the clean captions;
* fare: squared L2 between the adversarial image embedding and the frozen original model's
  clean embedding, PGD maximising that distance;
* mat / mat+: inner maximisation on the caption (word substitutions) and on the image (PGD), in
  `inner_order`, both maximising the contrastive loss; outer loss on the adversarial pairs
  (+ `clean_weight` x clean loss). MAT+ differs only in its data (see `train.data`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from train.config import TrainConfig
from train.data import Batch
from train.losses import ContrastiveLoss, fare_loss


@dataclass
class StepOutput:
    loss: torch.Tensor  # what is back-propagated
    clean_loss: torch.Tensor  # detached
    robust_loss: torch.Tensor | None = None  # detached
    adv_pixels: torch.Tensor | None = None
    adv_texts: list[str] | None = None
    gradient_scale: float = 1.0  # see ContrastiveLoss.gradient_scale


@dataclass
class StepContext:
    """What objectives share: the wrapped model, the bare model for attacks, the loss."""

    forward: nn.Module  # ClipForTraining, possibly DDP-wrapped: the one call with gradients
    victim: Any  # train.attacks.ClipVictim on the bare model (attacks take input gradients only)
    contrastive: ContrastiveLoss
    tokenize: Callable[[list[str]], torch.Tensor]
    config: TrainConfig
    pgd_generator: torch.Generator
    frozen: nn.Module | None = None  # FARE's original model


class Objective:
    """One training method: a batch in, a loss out (attacks included)."""

    def __init__(self, context: StepContext):
        self.ctx = context
        self.cfg = context.config

    def __call__(self, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError

    def _pgd(self):
        from train.attacks import PGD

        return PGD(self.ctx.victim, eps=self.cfg.eps, steps=self.cfg.pgd_steps, step_size=self.cfg.pgd_step_size,
                   random_start=self.cfg.random_start, loss="contrastive", generator=self.ctx.pgd_generator)

    def _contrastive_pair(self, adv_pixels: torch.Tensor, adv_tokens: torch.Tensor, clean_pixels: torch.Tensor,
                          clean_tokens: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(robust, clean) contrastive losses; one forward with gradients, the clean one only if trained."""
        ctx = self.ctx
        if self.cfg.clean_weight > 0:
            # one forward for both halves: DDP wants a single forward per backward
            images, texts, scale = ctx.forward(torch.cat([adv_pixels, clean_pixels]), torch.cat([adv_tokens, clean_tokens]))
            half = len(adv_pixels)
            robust = ctx.contrastive(images[:half], texts[:half], keys, scale)
            clean = ctx.contrastive(images[half:], texts[half:], keys, scale)
            return robust, clean
        images, texts, scale = ctx.forward(adv_pixels, adv_tokens)
        robust = ctx.contrastive(images, texts, keys, scale)
        with torch.no_grad():
            clean = ctx.contrastive(ctx.victim.encode_image(clean_pixels), ctx.victim.encode_tokens(clean_tokens),
                                    keys, ctx.victim.logit_scale)
        return robust, clean

    def _output(self, robust: torch.Tensor, clean: torch.Tensor, **extra) -> StepOutput:
        loss = robust + self.cfg.clean_weight * clean if self.cfg.clean_weight > 0 else robust
        return StepOutput(loss=loss, clean_loss=clean.detach(), robust_loss=robust.detach(),
                          gradient_scale=self.ctx.contrastive.gradient_scale, **extra)


class CleanObjective(Objective):
    def __call__(self, batch: Batch, step: int) -> StepOutput:
        images, texts, scale = self.ctx.forward(batch.pixels, self.ctx.tokenize(batch.texts))
        loss = self.ctx.contrastive(images, texts, batch.keys, scale)
        return StepOutput(loss=loss, clean_loss=loss.detach(), gradient_scale=self.ctx.contrastive.gradient_scale)


class TeCoAObjective(Objective):
    def __init__(self, context: StepContext):
        super().__init__(context)
        self.pgd = self._pgd()

    def __call__(self, batch: Batch, step: int) -> StepOutput:
        tokens = self.ctx.tokenize(batch.texts)
        with torch.no_grad():
            text_emb = self.ctx.victim.encode_tokens(tokens)
        adv = self.pgd.perturb(batch.pixels, text_emb, torch.arange(len(batch.texts)))
        robust, clean = self._contrastive_pair(adv, tokens, batch.pixels, tokens, batch.keys)
        return self._output(robust, clean, adv_pixels=adv)


class FAREObjective(Objective):
    def __call__(self, batch: Batch, step: int) -> StepOutput:
        from train.attacks import pgd_linf

        ctx, cfg = self.ctx, self.cfg
        victim = ctx.victim
        with torch.no_grad():
            target = ctx.frozen.encode_image(victim.normalize(batch.pixels), normalize=False)
        adv = pgd_linf(
            batch.pixels,
            lambda x: fare_loss(victim.model.encode_image(victim.normalize(x), normalize=False), target),
            cfg.eps, cfg.pgd_steps, cfg.pgd_step_size, cfg.random_start, ctx.pgd_generator,
        )
        if cfg.clean_weight > 0:
            images, _, _ = ctx.forward(torch.cat([adv, batch.pixels]), None, normalize_image=False)
            robust, clean = fare_loss(images[:len(adv)], target), fare_loss(images[len(adv):], target)
        else:
            images, _, _ = ctx.forward(adv, None, normalize_image=False)
            robust = fare_loss(images, target)
            with torch.no_grad():
                clean = fare_loss(victim.model.encode_image(victim.normalize(batch.pixels), normalize=False), target)
        loss = robust + cfg.clean_weight * clean if cfg.clean_weight > 0 else robust
        # a per-process mean: DDP's gradient average is already the global mean
        return StepOutput(loss=loss, clean_loss=clean.detach(), robust_loss=robust.detach(), adv_pixels=adv)


class MATObjective(Objective):
    """MAT (and MAT+, whose difference is the data): text and image inner maximisation.

    The inner attacks use the shared attack classes with the "contrastive" objective on this
    process's batch paired 1:1; unlike the outer loss, they do not know which positions share a
    source image (the common attack signature maps each caption to one image).
    """

    def __init__(self, context: StepContext):
        super().__init__(context)
        self.pgd = self._pgd()
        self.text_attack = build_text_attack(context.victim, self.cfg)

    def _order(self, step: int) -> str:
        if self.cfg.inner_order == "alternate":
            return "text-image" if step % 2 == 0 else "image-text"
        return self.cfg.inner_order

    def _attack_text(self, pixels: torch.Tensor, texts: list[str]) -> list[str]:
        if self.text_attack is None:
            return list(texts)
        return self.text_attack(pixels, texts, None).texts

    def __call__(self, batch: Batch, step: int) -> StepOutput:
        victim, pairs = self.ctx.victim, torch.arange(len(batch.texts))
        if self._order(step) == "text-image":
            adv_texts = self._attack_text(batch.pixels, batch.texts)
            adv_tokens = self.ctx.tokenize(adv_texts)
            with torch.no_grad():
                adv_text_emb = victim.encode_tokens(adv_tokens)
            adv = self.pgd.perturb(batch.pixels, adv_text_emb, pairs)
        else:
            with torch.no_grad():
                text_emb = victim.encode_tokens(self.ctx.tokenize(batch.texts))
            adv = self.pgd.perturb(batch.pixels, text_emb, pairs)
            adv_texts = self._attack_text(adv, batch.texts)
            adv_tokens = self.ctx.tokenize(adv_texts)
        robust, clean = self._contrastive_pair(adv, adv_tokens, batch.pixels, self.ctx.tokenize(batch.texts), batch.keys)
        return self._output(robust, clean, adv_pixels=adv, adv_texts=adv_texts)


OBJECTIVES: dict[str, type[Objective]] = {
    "clean": CleanObjective,
    "tecoa": TeCoAObjective,
    "fare": FAREObjective,
    "mat": MATObjective,
    "mat+": MATObjective,
}


def build_text_attack(victim, config: TrainConfig):
    """MAT's word-substitution attack on the contrastive objective; None with a zero word budget."""
    if config.word_budget == 0:
        return None
    from train.attacks.text import BertAttack, SynonymAttack

    if config.text_attack == "mlm":
        return BertAttack(victim, mlm=config.mlm, top_k=config.mlm_top_k, budget=config.word_budget,
                          loss="contrastive")
    return SynonymAttack(victim, top_k=config.mlm_top_k, budget=config.word_budget, loss="contrastive")
