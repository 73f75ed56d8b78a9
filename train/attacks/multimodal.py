"""Multimodal attacks: an image attack (PGD) and a word-substitution text attack combined.

* `SepAttack`: PGD and the text attack run independently, each against the clean other modality.
* `CoAttack` (Zhang et al. 2022): text first; then the image is pushed away both from its clean
  embedding and from the attacked captions: maximise
  `(1 - cos(adv image, clean image)) + alpha * objective(adv image, attacked captions)`
  (alpha = 3 for CLIP, the paper's setting). The paper's code measures both terms as KL
  divergences between softmaxed embeddings; the cosine form here measures the same pushes in
  CLIP's own similarity.
* `SGA` (Set-level Guidance Attack, Lu et al. 2023): (1) the text is attacked against the mean
  embedding of a set of resized copies of the clean image (scales 0.5, 0.75, 1.25, 1.5, each
  resized back to the model's resolution, plus the original); (2) the image is attacked against
  the SET of attacked captions of that image (`image_of_text`), the objective summed over the
  resized copies of the adversarial image (Gaussian noise, std 0.05, added before resizing, as
  in the public code); (3) the ORIGINAL captions are attacked again against the adversarial
  image (so the word budget still holds).

The text part is guided as its `guide` says: "image" (default) scores captions against the
image embeddings each step hands it (clean images for Sep/Co-Attack, the view set or the
adversarial images for SGA); "text" is the original BERT-Attack criterion (move the caption
embedding the most), which ignores them.

All three take their parts as objects, `Cls(victim, image_attack=PGD(...), text_attack=BertAttack(...))`,
and default to the papers' protocol (PGD eps 2/255, 10 steps of 0.5/255; BERT-Attack k 10,
budget 1). `train.attacks.build_attack` builds them from flat options.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from train.attacks.base import Attack, AttackResult, ClipVictim, default_pairing, objective_fn
from train.attacks.pgd import PGD, pgd_linf
from train.attacks.text import BertAttack, WordSubstitutionAttack, encode_images, encode_texts

SGA_SCALES = (0.5, 0.75, 1.25, 1.5)
SGA_NOISE_STD = 0.05
CO_ATTACK_ALPHA = 3.0


def resized_views(images: torch.Tensor, scales: Sequence[float], noise_std: float = 0.0,
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One view per scale: (images + noise) resized by `scale`, clamped to [0, 1], resized back.

    Differentiable in `images` (bicubic interpolation), so PGD can optimise through the views.
    """
    size = images.shape[-2:]
    views = []
    for scale in scales:
        view = images
        if noise_std > 0:
            noise = torch.randn(images.shape, generator=generator,
                                device="cpu" if generator is None else generator.device)
            view = view + noise_std * noise.to(images.device, images.dtype)
        scaled_size = (max(1, int(scale * size[0])), max(1, int(scale * size[1])))
        view = F.interpolate(view, size=scaled_size, mode="bicubic", align_corners=False, antialias=scale < 1)
        view = F.interpolate(view.clamp(0, 1), size=size, mode="bicubic", align_corners=False, antialias=scale > 1)
        views.append(view.clamp(0, 1))
    return views


class MultimodalAttack(Attack):
    """Base of the attacks that change both modalities: holds the image and the text attack."""

    modality = "multimodal"

    def __init__(self, victim: ClipVictim, image_attack: PGD | None = None, text_attack: WordSubstitutionAttack | None = None,
                 objective: str = "pair"):
        super().__init__(victim, objective)
        self.image_attack = image_attack if image_attack is not None else PGD(victim, objective=objective)
        self.text_attack = text_attack if text_attack is not None else BertAttack(victim, objective=objective)

    def params(self) -> dict:
        return {**super().params(), "image": self.image_attack.params(), "text": self.text_attack.params()}

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.victim, images)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.victim, texts, self.text_attack.text_batch)

    def run_pgd(self, images: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """PGD with the image attack's budget and schedule, on a custom loss."""
        pgd = self.image_attack
        return pgd_linf(images, loss_fn, pgd.eps, pgd.steps, pgd.step_size, pgd.random_start, pgd.generator)

    def result(self, images: torch.Tensor, adversarial_images: torch.Tensor, texts: list[str], changes: list) -> AttackResult:
        linf = float((adversarial_images - images).abs().max()) if len(images) else 0.0
        return AttackResult(images=adversarial_images, texts=texts, info={"words_changed": changes, "linf": linf})


class SepAttack(MultimodalAttack):
    """PGD against the clean captions and the text attack against the clean images, independently."""

    name = "sep"

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        clean_text_emb = self.encode_texts(list(texts))
        adversarial_images = self.image_attack.perturb(images, clean_text_emb, pairing)
        clean_image_emb = self.encode_images(images)
        adversarial_texts, changes = self.text_attack.perturb(texts, clean_image_emb, pairing)
        return self.result(images, adversarial_images, adversarial_texts, changes)


class CoAttack(MultimodalAttack):
    """Text first, then the image away from its clean embedding and from the attacked captions."""

    name = "co-attack"

    def __init__(self, victim: ClipVictim, image_attack: PGD | None = None, text_attack: WordSubstitutionAttack | None = None,
                 alpha: float = CO_ATTACK_ALPHA, objective: str = "pair"):
        super().__init__(victim, image_attack, text_attack, objective)
        self.alpha = alpha

    def params(self) -> dict:
        return {**super().params(), "alpha": self.alpha}

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        clean_image_emb = self.encode_images(images)
        adversarial_texts, changes = self.text_attack.perturb(texts, clean_image_emb, pairing)
        attacked_text_emb = self.encode_texts(adversarial_texts)
        objective = objective_fn(self.objective, self.victim.logit_scale)

        def loss(adversarial: torch.Tensor) -> torch.Tensor:
            embedding = self.victim.encode_image(adversarial)
            away_from_clean = (1 - (embedding * clean_image_emb).sum(-1)).mean()
            return away_from_clean + self.alpha * objective(embedding, attacked_text_emb, pairing)

        adversarial_images = self.run_pgd(images, loss)
        return self.result(images, adversarial_images, adversarial_texts, changes)


class SGA(MultimodalAttack):
    """Set-level guidance: text against image views, image against the caption set, text again."""

    name = "sga"

    def __init__(self, victim: ClipVictim, image_attack: PGD | None = None, text_attack: WordSubstitutionAttack | None = None,
                 scales: Sequence[float] = SGA_SCALES, noise_std: float = SGA_NOISE_STD, objective: str = "pair"):
        super().__init__(victim, image_attack, text_attack, objective)
        self.scales, self.noise_std = tuple(float(s) for s in scales), noise_std

    def params(self) -> dict:
        return {**super().params(), "scales": list(self.scales), "noise_std": self.noise_std}

    def image_set_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Mean embedding of the image and its resized copies: the text step's guide.

        The mean of cosines to a set equals the cosine to the (unnormalised) mean embedding, so
        guiding by the mean scores every caption against the whole set.
        """
        views = [images, *resized_views(images, self.scales)]
        return torch.stack([self.encode_images(view) for view in views]).mean(0)

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        texts = list(texts)
        # (1) captions against the set of image views
        with torch.no_grad():
            guide = self.image_set_embedding(images)
        first_texts, _ = self.text_attack.perturb(texts, guide, pairing)
        caption_set_emb = self.encode_texts(first_texts)
        # (2) image views against the set of attacked captions of each image
        objective = objective_fn(self.objective, self.victim.logit_scale)
        generator = self.image_attack.generator

        def loss(adversarial: torch.Tensor) -> torch.Tensor:
            views = [adversarial, *resized_views(adversarial, self.scales, self.noise_std, generator)]
            embeddings = self.victim.encode_image(torch.cat(views)).split(len(adversarial))
            return sum(objective(embedding, caption_set_emb, pairing) for embedding in embeddings)

        adversarial_images = self.run_pgd(images, loss)
        # (3) the original captions against the adversarial images
        adversarial_texts, changes = self.text_attack.perturb(texts, self.encode_images(adversarial_images), pairing)
        return self.result(images, adversarial_images, adversarial_texts, changes)
