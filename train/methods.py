"""Training methods: one batch in, one loss out, attacks included; written once over the task
interface (`tasks.base.Task`), so every method works for every task and model family that
supports it.

* clean: the task's loss on the clean pairs;
* tecoa: the task's loss of PGD images (maximising the task's attack loss) against clean captions;
* fare: squared L2 between the adversarial image embedding and the frozen original model's
  clean embedding, PGD maximising that distance (models with image embeddings only);
* mat / mat+: inner maximisation on the caption (the task's word-substitution attack) and on the
  image (PGD on the task's attack loss), in `inner_order`; outer loss on the adversarial pairs
  (+ `clean_weight` x clean loss). MAT+ differs only in its data (see `train.data`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from train.config import TrainConfig
from train.data import Batch
from train.losses import fare_loss

if TYPE_CHECKING:
    from models.base import ImageTextModel
    from tasks.base import Task


@dataclass
class StepOutput:
    loss: torch.Tensor  # what is back-propagated
    clean_loss: torch.Tensor  # detached
    robust_loss: torch.Tensor | None = None  # detached
    adv_pixels: torch.Tensor | None = None
    adv_texts: list[str] | None = None
    gradient_scale: float = 1.0  # see Task.gradient_scale


@dataclass
class StepContext:
    """What methods share: the DDP-wrapped task forward, the bare model for attacks, the task."""

    forward: nn.Module  # tasks.base.TaskForward, possibly DDP-wrapped: the one call with gradients
    model: "ImageTextModel"  # the bare model (attacks take input gradients only)
    task: "Task"
    config: TrainConfig
    pgd_generator: torch.Generator
    frozen: Any = None  # FARE's original model
    data: Any = None  # train.data.TrainData: its rows, for MAT's text attack filter


@contextmanager
def attacked_as_evaluated(model: nn.Module) -> Iterator[None]:
    """The model in eval mode while an inner attack runs, each module's mode restored after.

    Under training mode every PGD gradient and every candidate caption's score would see its own
    dropout draw (ALBEF's and BLIP's BERTs: 0.1), so the search would keep the candidate with the
    luckiest mask rather than the strongest one, and PGD would follow noise: a weaker attack than
    the one `train eval` runs (as TRADES and most adversarial training code, the attack runs in
    eval mode). A module that checkpoints its activations (`gradient_checkpointing`, transformers'
    layers, which checkpoint in training mode only) keeps training mode itself, so PGD's backward
    keeps `--grad-checkpointing`'s memory; its children, dropout included, are in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    for module, _ in modes:
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


class Method:
    """One training method: a batch in, a loss out (attacks included)."""

    def __init__(self, context: StepContext):
        self.ctx = context
        self.cfg = context.config

    def __call__(self, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError

    def _tokenize(self, texts: list[str]):
        return self.ctx.model.tokenize(texts)

    def _pgd(self, pixels: torch.Tensor, tokens, keys: torch.Tensor, texts: list[str]) -> torch.Tensor:
        from train.attacks import pgd_linf

        cfg, ctx = self.cfg, self.ctx
        if cfg.pgd_steps == 0 or cfg.attack_eps == 0:
            return pixels
        with attacked_as_evaluated(ctx.model):  # the captions' side of the loss is encoded here too
            loss = ctx.task.image_attack_loss(ctx.model, tokens, keys, texts)
            return pgd_linf(pixels, loss, cfg.attack_eps, cfg.pgd_steps, cfg.pgd_step_size, cfg.random_start,
                            ctx.pgd_generator)

    def _robust_and_clean(self, adv_pixels: torch.Tensor, adv_tokens, clean_pixels: torch.Tensor, clean_tokens,
                          batch: Batch, adv_texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(robust, clean) task losses; one forward with gradients, the clean one only if trained."""
        from models.base import TextTokens

        ctx, keys = self.ctx, batch.keys
        if self.cfg.clean_weight > 0:
            # one forward for both halves: DDP wants a single forward per backward
            robust, clean = ctx.forward(torch.cat([adv_pixels, clean_pixels]), TextTokens.cat([adv_tokens, clean_tokens]),
                                        torch.cat([keys, keys]), chunks=2, texts=list(adv_texts) + list(batch.texts))
            return robust, clean
        (robust,) = ctx.forward(adv_pixels, adv_tokens, keys, texts=adv_texts)
        with torch.no_grad():
            clean = ctx.task.loss(ctx.model, clean_pixels, clean_tokens, keys, batch.texts, inspect=True)
        return robust, clean

    def _output(self, robust: torch.Tensor, clean: torch.Tensor, **extra) -> StepOutput:
        loss = robust + self.cfg.clean_weight * clean if self.cfg.clean_weight > 0 else robust
        return StepOutput(loss=loss, clean_loss=clean.detach(), robust_loss=robust.detach(),
                          gradient_scale=self.ctx.task.gradient_scale, **extra)


class CleanMethod(Method):
    def __call__(self, batch: Batch, step: int) -> StepOutput:
        (loss,) = self.ctx.forward(batch.pixels, self._tokenize(batch.texts), batch.keys, texts=batch.texts)
        return StepOutput(loss=loss, clean_loss=loss.detach(), gradient_scale=self.ctx.task.gradient_scale)


class TeCoAMethod(Method):
    def __call__(self, batch: Batch, step: int) -> StepOutput:
        tokens = self._tokenize(batch.texts)
        adv = self._pgd(batch.pixels, tokens, batch.keys, batch.texts)
        robust, clean = self._robust_and_clean(adv, tokens, batch.pixels, tokens, batch, batch.texts)
        return self._output(robust, clean, adv_pixels=adv)


class FAREMethod(Method):
    def __call__(self, batch: Batch, step: int) -> StepOutput:
        from train.attacks import pgd_linf

        ctx, cfg, model = self.ctx, self.cfg, self.ctx.model
        with torch.no_grad():
            target = ctx.frozen.encode_image(batch.pixels, normalize=False)
        with attacked_as_evaluated(model):
            adv = pgd_linf(batch.pixels, lambda x: fare_loss(model.encode_image(x, normalize=False), target),
                           cfg.attack_eps, cfg.pgd_steps, cfg.pgd_step_size, cfg.random_start, ctx.pgd_generator)
        if cfg.clean_weight > 0:
            robust_emb, clean_emb = ctx.forward(torch.cat([adv, batch.pixels]), chunks=2, image_embeddings=True)
            robust, clean = fare_loss(robust_emb, target), fare_loss(clean_emb, target)
        else:
            (robust_emb,) = ctx.forward(adv, image_embeddings=True)
            robust = fare_loss(robust_emb, target)
            with torch.no_grad():
                clean = fare_loss(model.encode_image(batch.pixels, normalize=False), target)
        loss = robust + cfg.clean_weight * clean if cfg.clean_weight > 0 else robust
        # a per-process mean: DDP's gradient average is already the global mean
        return StepOutput(loss=loss, clean_loss=clean.detach(), robust_loss=robust.detach(), adv_pixels=adv)


class MATMethod(Method):
    """MAT (and MAT+, whose difference is the data): text and image inner maximisation.

    The inner text attack scores candidates on this process's batch paired 1:1 (the common attack
    signature maps each caption to one image); PGD and the outer loss know which rows share a
    source image (multi-positive by key).
    """

    def __init__(self, context: StepContext):
        super().__init__(context)
        self.text_attack = context.task.text_attack(context.model, self.cfg)
        self.accept, self._rows = None, None
        name = getattr(self.cfg, "text_attack_filter", None)
        if name and self.text_attack is not None:  # meaning-preserving inner attack: see train.text_filter
            from train.text_filter import FilteredSubstitutes, get_caption_filter, refuse_rows_it_cannot_judge

            if not hasattr(self.text_attack, "source"):
                from train.config import ConfigError

                raise ConfigError(f"--text-attack-filter needs a word-substitution text attack; the {type(context.task).__name__} task's has none")
            self.accept = get_caption_filter(name)
            if context.data is not None:
                refuse_rows_it_cannot_judge(name, context.data.train, self.cfg.train_data)
            self.text_attack.source = FilteredSubstitutes(self.text_attack.source, self.accept, name)

    def _batch_rows(self, keys: torch.Tensor) -> list[dict]:
        if self._rows is None:  # the train rows without pixels, read once
            train = self.ctx.data.train
            self._rows = train.select_columns([c for c in train.column_names if c != "image"]).to_list()
        return [self._rows[k] for k in keys.tolist()]  # one device sync, not one per row

    def _order(self, step: int) -> str:
        if self.cfg.inner_order == "alternate":
            return "text-image" if step % 2 == 0 else "image-text"
        return self.cfg.inner_order

    def _attack_text(self, pixels: torch.Tensor, texts: list[str], keys: torch.Tensor) -> list[str]:
        if self.text_attack is None:
            return list(texts)
        with attacked_as_evaluated(self.ctx.model):
            return self._searched_texts(pixels, texts, keys)

    def _searched_texts(self, pixels: torch.Tensor, texts: list[str], keys: torch.Tensor) -> list[str]:
        if self.accept is None:
            return self.text_attack(pixels, texts, None).texts
        from train.text_filter import accepted_prefix

        rows = self._batch_rows(keys)
        source = self.text_attack.source
        source.set_batch(texts, rows)
        result = self.text_attack(pixels, texts, None)
        # one word: every substitution passed the filter; more: check their combination
        return [adv if len(changes) < 2 else accepted_prefix(text, changes, row, self.accept, source.split)
                for text, adv, changes, row in zip(texts, result.texts, result.info["words_changed"], rows)]

    def __call__(self, batch: Batch, step: int) -> StepOutput:
        clean_tokens = self._tokenize(batch.texts)
        if self._order(step) == "text-image":
            adv_texts = self._attack_text(batch.pixels, batch.texts, batch.keys)
            adv_tokens = self._tokenize(adv_texts)
            adv = self._pgd(batch.pixels, adv_tokens, batch.keys, adv_texts)
        else:
            adv = self._pgd(batch.pixels, clean_tokens, batch.keys, batch.texts)
            adv_texts = self._attack_text(adv, batch.texts, batch.keys)
            adv_tokens = self._tokenize(adv_texts)
        robust, clean = self._robust_and_clean(adv, adv_tokens, batch.pixels, clean_tokens, batch, adv_texts)
        return self._output(robust, clean, adv_pixels=adv, adv_texts=adv_texts)


METHODS: dict[str, type[Method]] = {
    "clean": CleanMethod,
    "tecoa": TeCoAMethod,
    "fare": FAREMethod,
    "mat": MATMethod,
    "mat+": MATMethod,
}


def build_text_attack(victim, config: TrainConfig):
    """MAT's word-substitution attack on the contrastive loss; None with a zero word budget."""
    if config.word_budget == 0:
        return None
    from train.attacks.text import BertAttack, SynonymAttack

    if config.text_candidates == "mlm":
        return BertAttack(victim, mlm=config.mlm, top_k=config.top_k, budget=config.word_budget,
                          loss="contrastive")
    return SynonymAttack(victim, top_k=config.top_k, budget=config.word_budget, loss="contrastive")
