"""L-inf projected gradient descent on pixels before normalisation (Madry et al. 2018)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from train.attacks.base import Attack, AttackResult, ClipVictim, default_pairing, objective_fn


def pgd_linf(
    images: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximise `loss_fn(adv_pixels)` within the L-inf ball of radius eps around `images` in [0,1].

    Gradients are taken with respect to the perturbation only (`torch.autograd.grad`), so the
    model's parameter gradients are left untouched, as training needs.
    """
    images = images.detach()
    if eps <= 0 or steps <= 0:
        return images.clone()
    delta = torch.zeros_like(images)
    if random_start:
        noise = torch.rand(images.shape, generator=generator, device="cpu" if generator is None else generator.device)
        delta = (noise.to(images.device, images.dtype) * 2 - 1) * eps
        delta = (images + delta).clamp(0, 1) - images
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(images + delta)
            (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + step_size * grad.sign()
            delta = delta.clamp(-eps, eps)
            delta = (images + delta).clamp(0, 1) - images
    return (images + delta).detach()


class PGD(Attack):
    """Image-only attack: `PGD(victim, eps=2/255, steps=10, step_size=0.5/255)(images, texts)`.

    Defaults follow the attack papers' public protocol (eps 2/255, 10 steps, step 0.5/255).
    """

    modality = "image"
    name = "pgd"

    def __init__(self, victim: ClipVictim, eps: float = 2 / 255, steps: int = 10, step_size: float = 0.5 / 255,
                 random_start: bool = True, objective: str = "pair", generator: torch.Generator | None = None):
        super().__init__(victim, objective)
        self.eps, self.steps, self.step_size, self.random_start = eps, steps, step_size, random_start
        self.generator = generator

    def params(self) -> dict:
        return {**super().params(), "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start}

    def perturb(self, images: torch.Tensor, text_emb: torch.Tensor, image_of_text: torch.Tensor) -> torch.Tensor:
        """Attack images against fixed caption embeddings (reused by the multimodal attacks)."""
        objective = objective_fn(self.objective, self.victim.logit_scale)
        text_emb = text_emb.detach()
        return pgd_linf(
            images, lambda adv: objective(self.victim.encode_image(adv), text_emb, image_of_text),
            self.eps, self.steps, self.step_size, self.random_start, self.generator,
        )

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        with torch.no_grad():
            text_emb = self.victim.encode_text(texts)
        adversarial = self.perturb(images, text_emb, pairing)
        return AttackResult(images=adversarial, texts=list(texts), info={"linf": float((adversarial - images).abs().max())})
