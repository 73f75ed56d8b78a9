"""Multimodal attacks: an image attack (PGD) and a word-substitution text attack combined.

* `SepAttack`: PGD and the text attack run independently, each against the clean other modality.
* `CoAttack` (Zhang et al. 2022): text first; then the image is pushed away both from its clean
  embedding and from the attacked captions: maximise
  `(1 - cos(adv image, clean image)) + alpha * loss(adv image, attacked captions)`
  (alpha = 3 for CLIP, the paper's setting), each image once against all its captions
  (`mode="per-image"`). `mode="per-pair"` is the Co-Attack code: every (image, caption) pair
  attacked on its own, both terms KL divergences between softmaxed embeddings, and each image's
  LAST copy kept (`embedding="raw"`: the first term over embeddings before normalisation, as that
  code reads ALBEF/TCL's [CLS] states, `co_attack_pair_objective`).
* `SGA` (Set-level Guidance Attack, Lu et al. 2023): (1) the text is attacked against the mean
  embedding of a set of resized copies of the clean image (scales 0.5, 0.75, 1.25, 1.5, each
  resized back to the model's resolution, plus the original; `first_guide="clean"`: the clean
  image only, as the SGA code does); (2) the image is attacked against
  the SET of attacked captions of that image (`image_of_text`), the loss summed over the
  resized copies of the adversarial image (Gaussian noise, std 0.05, added before resizing, as
  in the public code; `views="reference"`: bicubic without antialiasing and no clamp after resizing
  back, as the SGA code ran); (3) the ORIGINAL captions are attacked again against the adversarial
  image (so the word budget still holds).

The text part is guided as its `guide` says: "image" (default) scores captions against the
image embeddings each step hands it (clean images for Sep/Co-Attack, the view set or the
adversarial images for SGA); "text" / "text-kl" move the caption embedding the most (the
reference codes' BERT-Attack criterion is "text-kl"), ignoring them.

All three take their parts as objects, `Cls(victim, image_attack=PGD(...), text_attack=BertAttack(...))`,
and default to the papers' protocol (PGD eps 2/255, 10 steps of 0.5/255; BERT-Attack k 10,
budget 1). `train.attacks.build_attack` builds them from flat options.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from train.attacks.base import (EMBEDDINGS, Attack, AttackResult, attack_loss_fn, default_pairing, image_encoder,
                                 kl_to)
from train.attacks.draws import noise_like
from train.attacks.pgd import PGD
from train.attacks.resize import resize
from train.attacks.text import BertAttack, WordSubstitutionAttack, encode_images, encode_texts

SGA_SCALES = (0.5, 0.75, 1.25, 1.5)
SGA_NOISE_STD = 0.05
CO_ATTACK_ALPHA = 3.0


VIEW_MODES = ("clamped", "reference")


def resized_views(images: torch.Tensor, scales: Sequence[float], noise_std: float = 0.0,
                  generator: torch.Generator | None = None, mode: str = "clamped") -> list[torch.Tensor]:
    """One view per scale: (images + noise) resized by `scale`, clamped to [0, 1], resized back.

    `mode="clamped"` (project): torch bicubic interpolation, antialiased when shrinking, and the
    view clamped to [0, 1] again after resizing back (bicubic overshoots). `mode="reference"`
    (SGA code): bicubic without antialiasing both ways, no clamp after resizing back. The SGA code
    calls torchvision's `Resize(BICUBIC)` and pins torchvision 0.15, whose tensor default is no
    antialiasing (it became antialias=True in 0.17, so the same code run today antialiases).
    Differentiable in `images`, so PGD optimises through the views. Each resize is torch's
    operator as two matrix products (`train.attacks.resize`).
    """
    if mode not in VIEW_MODES:
        raise ValueError(f"unknown view mode {mode!r}; expected one of {VIEW_MODES}")
    size = tuple(images.shape[-2:])
    views = []
    for scale in scales:
        view = images
        if noise_std > 0:
            view = view + noise_std * noise_like(images, generator, normal=True)
        scaled_size = (max(1, int(scale * size[0])), max(1, int(scale * size[1])))
        if mode == "reference":
            view = resize(view, scaled_size, "bicubic").clamp(0, 1)
            views.append(resize(view, size, "bicubic"))
            continue
        view = resize(view, scaled_size, "bicubic-aa" if scale < 1 else "bicubic")
        view = resize(view.clamp(0, 1), size, "bicubic-aa" if scale > 1 else "bicubic")
        views.append(view.clamp(0, 1))
    return views


class MultimodalAttack(Attack):
    """Base of the attacks that change both modalities: holds the image and the text attack."""

    modality = "multimodal"

    def __init__(self, victim, image_attack: PGD | None = None, text_attack: WordSubstitutionAttack | None = None,
                 loss: str = "pair"):
        super().__init__(victim, loss)
        self.image_attack = image_attack if image_attack is not None else PGD(victim, loss=loss)
        self.text_attack = text_attack if text_attack is not None else BertAttack(victim, loss=loss)

    def params(self) -> dict:
        return {**super().params(), "image": self.image_attack.params(), "text": self.text_attack.params()}

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.victim, images)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.victim, texts, self.text_attack.text_batch)

    def run_pgd(self, images: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """PGD with the image attack's budget and schedule, on a custom loss."""
        return self.image_attack.run(images, loss_fn)

    def result(self, images: torch.Tensor, adversarial_images: torch.Tensor, texts: list[str], changes: list) -> AttackResult:
        linf = float((adversarial_images - images).abs().max()) if len(images) else 0.0
        return AttackResult(images=adversarial_images, texts=texts, info={"words_changed": changes, "linf": linf})


class SepAttack(MultimodalAttack):
    """The image attack against the clean captions and the text attack against the clean images, independently."""

    name = "sep"

    def params(self) -> dict:
        params = super().params()
        params.pop("loss")  # each part runs with its own, reported in its entry
        return params

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        texts = list(texts)
        # the text attack's clean caption embeddings are the ones PGD needs: encoded once
        prepared = self.text_attack.prepare(texts) if self.text_attack.budget > 0 and texts else None
        clean_text_emb = None
        if self.image_attack.loss != "image-kl":
            unit = prepared is not None and prepared.normalize  # raw embeddings (the SGA code's text-KL) are not PGD's
            clean_text_emb = prepared.clean_emb if unit else self.encode_texts(texts)
        adversarial_images = self.image_attack.perturb(images, clean_text_emb, pairing)
        clean_image_emb = self.encode_images(images) if self.text_attack.needs_image else None
        adversarial_texts, changes = self.text_attack.perturb(texts, clean_image_emb, pairing, prepared=prepared)
        return self.result(images, adversarial_images, adversarial_texts, changes)


CO_ATTACK_MODES = ("per-image", "per-pair")


def last_copy_per_image(images: torch.Tensor, pairing: torch.Tensor, attacked_copies: torch.Tensor) -> torch.Tensor:
    """`images` with each one replaced by its LAST attacked copy (`attacked_copies[t]` is caption t's
    copy of image `pairing[t]`), as the Co-Attack code keeps it after attacking an image once per
    caption; images without a caption stay clean."""
    out = images.clone()
    last = torch.zeros(len(images), dtype=torch.long).scatter_reduce(
        0, pairing.cpu(), torch.arange(len(pairing)), "amax", include_self=False)
    has_caption = torch.bincount(pairing.cpu(), minlength=len(images)) > 0
    out[has_caption.to(images.device)] = attacked_copies[last[has_caption].to(images.device)]
    return out


def attack_pair_copies(image_attack: PGD, images: torch.Tensor, pairing: torch.Tensor,
                       loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One copy of its image per caption (`images[pairing]`), all attacked in one batch by
    `image_attack`'s budget and schedule on `loss_fn`, then each image's last copy
    (`last_copy_per_image`). The pairs are independent (each copy's loss depends on it alone), so
    one batch gives the copies the Co-Attack code attacks pair by pair."""
    if len(pairing) == 0:
        return images.clone()
    return last_copy_per_image(images, pairing, image_attack.run(images[pairing.to(images.device)], loss_fn))


def co_attack_pair_objective(adversarial_emb: torch.Tensor, clean_emb: torch.Tensor, attacked_text_emb: torch.Tensor,
                             alpha: float, embedding: str = "unit") -> torch.Tensor:
    """[N] the Co-Attack code's image objective for row-aligned pairs, to maximise:
    KL(clean image || adv) + alpha * KL(attacked caption || adv) over softmaxed embeddings.

    `embedding="unit"`: all unit embeddings (its CLIP wrapper normalises). `"raw"`: the image
    embeddings before normalisation in the first term and every embedding normalised in the
    second, as that code computes it on ALBEF/TCL's [CLS] states (`run_before_fusion`).
    """
    if embedding == "raw":
        return kl_to(clean_emb, adversarial_emb) + alpha * kl_to(F.normalize(attacked_text_emb, dim=-1),
                                                                 F.normalize(adversarial_emb, dim=-1))
    return kl_to(clean_emb, adversarial_emb) + alpha * kl_to(attacked_text_emb, adversarial_emb)


class CoAttack(MultimodalAttack):
    """Text first, then the image away from its clean embedding and from the attacked captions.

    `mode="per-image"` (project): each image once, against all its attacked captions,
    `(1 - cos(adv, clean image)) + alpha * loss(adv, attacked captions)`. `mode="per-pair"`
    (Co-Attack code): each (image, caption) pair attacked on its own with
    `KL(clean image || adv) + alpha * KL(attacked caption || adv)` over softmaxed embeddings; an
    image with several captions is attacked once per caption and its last copy is returned;
    `embedding` ("unit" or "raw"): see `co_attack_pair_objective`.
    """

    name = "co-attack"

    def __init__(self, victim, image_attack: PGD | None = None, text_attack: WordSubstitutionAttack | None = None,
                 alpha: float = CO_ATTACK_ALPHA, loss: str = "pair", mode: str = "per-image", embedding: str = "unit"):
        super().__init__(victim, image_attack, text_attack, loss)
        if mode not in CO_ATTACK_MODES:
            raise ValueError(f"unknown Co-Attack mode {mode!r}; expected one of {CO_ATTACK_MODES}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown Co-Attack embedding {embedding!r}; expected one of {EMBEDDINGS}")
        if embedding == "raw" and mode != "per-pair":
            raise ValueError("embedding='raw' goes with mode='per-pair' (the Co-Attack code's objective)")
        self.alpha, self.mode, self.embedding = alpha, mode, embedding

    def params(self) -> dict:
        params = {**super().params(), "alpha": self.alpha, "mode": self.mode}
        # the image step maximises its own objective (the PGD part lends budget and schedule): say which
        if self.mode == "per-pair" and self.embedding == "raw":
            objective = ("KL(clean image || adv) before normalisation + alpha * KL(unit attacked caption || unit adv)")
        elif self.mode == "per-pair":
            objective = "KL(clean image || adv) + alpha * KL(attacked caption || adv)"
        else:
            objective = f"1 - cos(adv, clean image) + alpha * {self.loss}(adv, attacked captions)"
        params.pop("loss")
        params["image"] = {**params["image"], "loss": objective}
        return params

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        # unit clean embeddings: the image guide's, and the first term's unless it reads them raw (_per_pair)
        needs_unit = self.text_attack.needs_image or self.embedding == "unit"
        clean_image_emb = self.encode_images(images) if needs_unit else None
        guide = clean_image_emb if self.text_attack.needs_image else None
        adversarial_texts, changes = self.text_attack.perturb(texts, guide, pairing)
        attacked_text_emb = self.encode_texts(adversarial_texts)
        if self.mode == "per-pair":
            return self.result(images, self._per_pair(images, pairing, clean_image_emb, attacked_text_emb),
                               adversarial_texts, changes)
        loss_fn = attack_loss_fn(self.loss, self.victim.logit_scale)

        # sums, not means, for "pair": an image's gradient is then the same in any batch (means
        # would weigh the two terms by 1/images and 1/captions, whose rounding flips near-zero signs)
        scale = len(pairing) if self.loss == "pair" else len(images)

        def loss(adversarial: torch.Tensor) -> torch.Tensor:
            embedding = self.victim.encode_image(adversarial)
            away_from_clean = (1 - (embedding * clean_image_emb).sum(-1)).sum()
            return away_from_clean + self.alpha * scale * loss_fn(embedding, attacked_text_emb, pairing)

        return self.result(images, self.run_pgd(images, loss), adversarial_texts, changes)

    def _per_pair(self, images: torch.Tensor, pairing: torch.Tensor, clean_image_emb: torch.Tensor | None,
                  attacked_text_emb: torch.Tensor) -> torch.Tensor:
        """One attacked copy of its image per caption (`attack_pair_copies`); each image's last copy."""
        encode = image_encoder(self.victim, self.embedding)
        if self.embedding != "unit":
            with torch.no_grad():
                clean_image_emb = encode(images)
        clean = clean_image_emb[pairing.to(images.device)]

        def loss(adversarial: torch.Tensor) -> torch.Tensor:
            return co_attack_pair_objective(encode(adversarial), clean, attacked_text_emb, self.alpha,
                                            self.embedding).mean()

        return attack_pair_copies(self.image_attack, images, pairing, loss)


class SGA(MultimodalAttack):
    """Set-level guidance: text against image views, image against the caption set, text again."""

    name = "sga"

    def __init__(self, victim, image_attack: PGD | None = None, text_attack: WordSubstitutionAttack | None = None,
                 scales: Sequence[float] = SGA_SCALES, noise_std: float = SGA_NOISE_STD, loss: str = "pair",
                 first_guide: str = "views", views: str = "clamped"):
        super().__init__(victim, image_attack, text_attack, loss)
        if first_guide not in ("views", "clean"):
            raise ValueError(f"unknown SGA first guide {first_guide!r}; expected views or clean")
        if views not in VIEW_MODES:
            raise ValueError(f"unknown view mode {views!r}; expected one of {VIEW_MODES}")
        self.scales, self.noise_std = tuple(float(s) for s in scales), noise_std
        self.first_guide, self.views = first_guide, views

    def params(self) -> dict:
        return {**super().params(), "scales": list(self.scales), "noise_std": self.noise_std,
                "first_guide": self.first_guide, "views": self.views}

    def image_set_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The first text step's guide: the clean image's embedding (`first_guide="clean"`) or the
        mean embedding of the image and its resized copies ("views").

        The mean of cosines to a set equals the cosine to the (unnormalised) mean embedding, so
        guiding by the mean scores every caption against the whole set.
        """
        if self.first_guide == "clean":
            return self.encode_images(images)
        views = [images, *resized_views(images, self.scales, mode=self.views)]
        return torch.stack([self.encode_images(view) for view in views]).mean(0)

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text: torch.Tensor | None = None) -> AttackResult:
        pairing = default_pairing(len(images), len(texts), image_of_text)
        texts = list(texts)
        # (1) captions against the image (or the set of its views)
        with torch.no_grad():
            guide = self.image_set_embedding(images)
        prepared = self.text_attack.prepare(texts) if self.text_attack.budget > 0 and texts else None
        first_texts, _ = self.text_attack.perturb(texts, guide, pairing, prepared=prepared)
        caption_set_emb = self.encode_texts(first_texts)
        # (2) image views against the set of attacked captions of each image
        loss_fn = attack_loss_fn(self.loss, self.victim.logit_scale)
        generator = self.image_attack.generator

        def loss(adversarial: torch.Tensor) -> torch.Tensor:
            views = [adversarial, *resized_views(adversarial, self.scales, self.noise_std, generator, self.views)]
            embeddings = self.victim.encode_image(torch.cat(views)).split(len(adversarial))
            return sum(loss_fn(embedding, caption_set_emb, pairing) for embedding in embeddings)

        adversarial_images = self.run_pgd(images, loss)
        # (3) the original captions against the adversarial images
        adversarial_texts, changes = self.text_attack.perturb(texts, self.encode_images(adversarial_images), pairing,
                                                              prepared=prepared)
        return self.result(images, adversarial_images, adversarial_texts, changes)
