"""L-inf projected gradient descent on pixels before normalisation (Madry et al. 2018).

`pgd_linf` is the loop every image attack uses; its keyword options reproduce the two reference
image attackers (see `train.attacks.settings` and README "Protocols"):

* `start="symmetric"` (default; the project and the SGA code): uniform in [-eps, eps], clamped to
  [0, 1]. `start="positive"` (the Co-Attack code): uniform in [0, eps] and not clamped before the
  first step.
* `scale_by_mean_gradient=True` (SGA code with `--reference-bugs`): the gradient is divided by its
  mean absolute value before its sign is taken. That never changes a sign, except that an
  all-zero (or infinite) gradient becomes NaN, whose sign torch takes as 0: such an image does
  not move at that step, where the plain sign moves an infinite gradient. Without the bug the
  division is left out.

Written here, not torchattacks.PGD (the benchmark's baseline): that takes a classifier's logits
and labels, draws its random start from the global generator and has no loss-scaled fp16
input gradient; every attack here needs all three otherwise.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from models.half_precision import input_gradient
from train.attacks.base import (EMBEDDINGS, Attack, AttackResult, attack_loss_fn, default_pairing, image_encoder,
                                 kl_to)
from train.attacks.draws import noise_like
from train.attacks.settings import pgd_step_size

STARTS = ("symmetric", "positive")
# what a PGD attack maximises: a loss against the captions, or (Co-Attack code) the KL divergence
# from the clean image's embedding, which needs no caption ("unsupervised")
IMAGE_LOSSES = ("pair", "contrastive", "image-kl")


def pgd_linf(
    images: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    *,
    start: str = "symmetric",
    scale_by_mean_gradient: bool = False,
) -> torch.Tensor:
    """Maximise `loss_fn(adv_pixels)` within the L-inf ball of radius eps around `images` in [0,1].

    Gradients are taken with respect to the perturbation only (`torch.autograd.grad`, loss-scaled
    under fp16 autocast: `models.half_precision.input_gradient`), so the model's parameter
    gradients are left untouched, as training needs.
    """
    if start not in STARTS:
        raise ValueError(f"unknown PGD start {start!r}; expected one of {STARTS}")
    images = images.detach()
    if eps <= 0 or steps <= 0:
        return images.clone()
    delta = torch.zeros_like(images)
    if random_start:
        noise = noise_like(images, generator)
        if start == "symmetric":
            delta = (images + (noise * 2 - 1) * eps).clamp(0, 1) - images
        else:
            delta = noise * eps
    # the eps ball and the [0, 1] range in one clamp: delta in [max(-eps, -x), min(eps, 1 - x)]
    low, high = (-images).clamp(min=-eps), (1 - images).clamp(max=eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            grad = input_gradient(loss_fn(images + delta), delta)  # loss-scaled under fp16 autocast
        with torch.no_grad():
            if scale_by_mean_gradient:
                grad = grad / grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True)
            delta = torch.clamp(delta + step_size * grad.sign(), low, high)
    return (images + delta).clamp(0, 1).detach()  # the clamp only absorbs float rounding


class PGD(Attack):
    """Image-only attack: `PGD(victim, eps=2/255, steps=10, step_size=0.5/255)(images, texts)`.

    Defaults follow the attack papers' public protocol (eps 2/255, 10 steps, step eps / 4 =
    0.5/255). `loss`: "pair" / "contrastive" against the captions, or "image-kl" (away from the
    clean image embedding; captions unused). `embedding`: what "image-kl" reads, unit embeddings or
    ("raw") the victim's before normalisation (the Co-Attack code's `run_trades` on ALBEF/TCL reads
    the vision encoder's [CLS] state as it is). `start`, `scale_by_mean_gradient`: see `pgd_linf`.
    """

    modality = "image"
    name = "pgd"

    def __init__(self, victim, eps: float = 2 / 255, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, loss: str = "pair", generator: torch.Generator | None = None,
                 start: str = "symmetric", scale_by_mean_gradient: bool = False, embedding: str = "unit"):
        if loss not in IMAGE_LOSSES:
            raise ValueError(f"unknown PGD loss {loss!r}; expected one of {IMAGE_LOSSES}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown PGD embedding {embedding!r}; expected one of {EMBEDDINGS}")
        if embedding == "raw" and loss != "image-kl":
            raise ValueError("embedding='raw' goes with loss='image-kl' (the caption losses read unit embeddings)")
        super().__init__(victim, "pair" if loss == "image-kl" else loss)
        self.loss = loss
        self.eps, self.steps, self.random_start = eps, steps, random_start
        self.step_size = pgd_step_size(eps, step_size)
        self.generator, self.start, self.scale_by_mean_gradient = generator, start, scale_by_mean_gradient
        self.embedding = embedding

    def params(self) -> dict:
        params = {**super().params(), "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                  "random_start": self.random_start, "start": self.start,
                  "scale_by_mean_gradient": self.scale_by_mean_gradient}
        if self.embedding != "unit":
            params["embedding"] = self.embedding
        return params

    def run(self, images: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """This attack's budget and schedule on a custom loss (the multimodal attacks' image step)."""
        return pgd_linf(images, loss_fn, self.eps, self.steps, self.step_size, self.random_start, self.generator,
                        start=self.start, scale_by_mean_gradient=self.scale_by_mean_gradient)

    def perturb(self, images: torch.Tensor, text_emb: torch.Tensor | None, image_of_text: torch.Tensor | None) -> torch.Tensor:
        """Attack images against fixed caption embeddings (reused by the multimodal attacks)."""
        if self.loss == "image-kl":
            encode = image_encoder(self.victim, self.embedding)
            with torch.no_grad():
                clean = encode(images)
            return self.run(images, lambda adv: kl_to(clean, encode(adv)).mean())
        loss = attack_loss_fn(self.loss, self.victim.logit_scale)
        text_emb = text_emb.detach()
        return self.run(images, lambda adv: loss(self.victim.encode_image(adv), text_emb, image_of_text))

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        text_emb = None
        if self.loss != "image-kl":
            with torch.no_grad():
                text_emb = self.victim.encode_text(list(texts))
        adversarial = self.perturb(images, text_emb, pairing)
        return AttackResult(images=adversarial, texts=list(texts), info={"linf": float((adversarial - images).abs().max())})
