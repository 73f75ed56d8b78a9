"""Co-Attack's grounding scripts: `train eval --task grounding --protocol co-attack`.

Co-Attack's `GroundingEval.py` runs its retrieval attacks on visual grounding: every (image,
expression) pair of RefCOCO+ is a row of its data loader, so each expression gets its own copy of
the image, attacked against that expression alone (`run_before_fusion`: the encoders' unimodal
[CLS] states; `GroundingFusionEval.py`, here `--attacked-embedding`: the fusion encoder's output),
and is grounded (Grad-CAM) in its own attacked copy with its attacked text. Nothing of the
grounding head is attacked.

`PairCopiesAttack` wraps the retrieval attack `train.attacks.build_attack` makes under the protocol
and runs it on one copy of its image per expression, the copies paired one to one with the
expressions: each copy's loss depends on it and its expression only, so one batch attacks what the
reference attacks pair by pair. SGA has no grounding script in either reference code; it keeps its
set-level design (each image once against all its expressions, as its retrieval code) and every
expression of the image gets that image's attacked copy.

The result has one image per expression (`AttackResult.info["image_per_text"]`) for attacks that
change pixels; clean and text attacks return the images as given.
"""
from __future__ import annotations

from typing import Sequence

import torch

from train.attacks.base import AttackResult

# the protocols that have grounding code to reproduce (the SGA code evaluates retrieval only)
GROUNDING_PROTOCOLS = ("project", "co-attack")
# AttackResult.info key: result.images holds one image per expression, in the expressions' order
IMAGE_PER_TEXT = "image_per_text"


class PairCopiesAttack:
    """A retrieval attack run as Co-Attack's grounding script runs it: one attacked image copy per
    expression (SGA: one per image, shared by its expressions). Grounding's call signature
    (`train.attacks.grounding.GroundingAttack`); the boxes and sizes are not read."""

    def __init__(self, attack):
        self.wrapped = attack  # `train.attacks.base.attack_parts` finds its generators and substitute sources
        self.modality, self.name = attack.modality, attack.name
        self.copies = "per-image" if attack.name == "sga" else "per-expression"

    def params(self) -> dict:
        params = dict(self.wrapped.params())
        if self.modality in ("image", "multimodal"):
            params["image_copies"] = self.copies
        return params

    def __call__(self, images: torch.Tensor, texts: Sequence[str], image_of_text=None, boxes=None,
                 sizes=None) -> AttackResult:
        from train.attacks.grounding import _pairing

        texts = list(texts)
        pairing = _pairing(len(images), len(texts), image_of_text)
        if self.modality not in ("image", "multimodal"):  # the pixels stay the images as given
            return self.wrapped(images, texts, pairing)
        if self.copies == "per-image":
            result = self.wrapped(images, texts, pairing)
            copies = result.images[pairing.to(result.images.device)]
        else:
            result = self.wrapped(images[pairing.to(images.device)], texts, torch.arange(len(texts)))
            copies = result.images
        return AttackResult(images=copies, texts=result.texts, info={**result.info, IMAGE_PER_TEXT: True})


def build_reference_grounding_attack(name: str, model, **options) -> PairCopiesAttack:
    """Attack `name` as Co-Attack's grounding script runs it (`options["protocol"]` must be
    "co-attack"): the retrieval attack of that protocol on `model`, per expression."""
    from train.attacks.factory import build_attack

    protocol = options.get("protocol", "project")
    if protocol != "co-attack":
        raise ValueError(f"no reference grounding code for protocol {protocol!r}: grounding protocols are "
                         f"{', '.join(GROUNDING_PROTOCOLS)}")
    options = {key: value for key, value in options.items() if key != "objective"}  # the reference attacks embeddings
    return PairCopiesAttack(build_attack(name, model, **options))


__all__ = ["GROUNDING_PROTOCOLS", "IMAGE_PER_TEXT", "PairCopiesAttack", "build_reference_grounding_attack"]
