"""The victim as the Co-Attack code reads ALBEF and TCL: the encoders' [CLS] outputs before the
ITC projection stand for the image and caption embeddings.

The Co-Attack code's attacks on ALBEF/TCL (its README's commands pass `--cls`) read
`image_embed[:, 0, :]` and `text_embed[:, 0, :]`, the unimodal encoders' last hidden states at
[CLS], never the ITC embeddings: its BertAttack scores candidates and word importance by the KL
between softmaxed text states, its `run_trades` (PGD, Sep's image part) pushes the image state
away from the clean one, and Co-Attack's image step adds the KL between the normalised image and
attacked-caption states (README "Protocols", item 11). `UnprojectedVictim` gives the attacks that
reading through the one seam they already use (`encode_image`, `encode_text`), so no attack
needs a second code path for it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

EMBEDDINGS_FROM = "encoder-cls"  # how reports name where this view's embeddings come from


class UnprojectedVictim:
    """`victim`'s `encode_image` / `encode_text` replaced by its encoders' [CLS] outputs before the
    ITC projection (unit vectors when `normalize`); every other attribute is the victim's own."""

    embeddings_from = EMBEDDINGS_FROM

    def __init__(self, victim):
        if not getattr(victim, "has_cls_states", False):
            raise ValueError(f"{getattr(victim, 'family', type(victim).__name__)} does not expose its encoders' "
                             "[CLS] states (the Co-Attack code's reading of ALBEF/TCL)")
        self.victim = victim

    def __getattr__(self, name: str):
        # only reached for attributes this view does not define: device, logit_scale, family, tokenize, ...
        try:
            victim = self.__dict__["victim"]
        except KeyError:  # copy and pickle look attributes up before __init__ has run
            raise AttributeError(name) from None
        return getattr(victim, name)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        state = self.victim.image_cls_state(pixels)
        return F.normalize(state, dim=-1) if normalize else state

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        state = self.victim.text_cls_state(self.victim.tokenize(list(texts)))
        return F.normalize(state, dim=-1) if normalize else state

    def text_prefix_cache(self, references: Sequence[str], batch_size: int | None = None):
        return None  # BERT's text encoder attends both ways: no prefix to share
