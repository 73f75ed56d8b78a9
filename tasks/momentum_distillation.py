"""ALBEF's momentum-distilled ITC loss (retrieval fine-tuning, models/model_retrieval.py).

The image (text) embeddings of the batch are contrasted with the momentum text (image)
embeddings of the batch AND of a queue of earlier batches. Targets: rows with the same key
(the same source image) are positives, spread evenly, mixed with the momentum model's own
softmax over the same candidates:

    target = alpha * softmax(momentum similarities) + (1 - alpha) * positives / #positives
    loss   = (CE(image -> text) + CE(text -> image)) / 2

A model that does this (ALBEF after `set_momentum_distillation(True)`) reports
`itc_loss == "momentum-distilled"` and, in a training forward of (pixels, tokens), puts in
`EncoderOutput.extras["momentum"]` a callable (run only when a loss needs it) returning:
`image_emb_m`, `text_emb_m` [B, D] (momentum embeddings of the batch), `image_queue`,
`text_queue` [Q, D], `queue_keys` [Q] (-100 = empty), `alpha`, and `enqueue` (stages the batch
for the queue; the model enqueues staged batches in `after_optimizer_step`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.base import EncoderOutput

REQUIRED_EXTRAS = ("image_emb_m", "text_emb_m", "image_queue", "text_queue", "queue_keys")


def momentum_distilled_itc_loss(output: EncoderOutput, keys: torch.Tensor, alpha: float | None = None,
                                enqueue: bool = True) -> torch.Tensor:
    """Scalar ITC loss of row-aligned (image, caption) pairs with momentum distillation.

    `keys` [B]: source image of each row. `alpha`: weight of the momentum targets (default the
    model's, 0.4; ALBEF ramps it up from 0 over the first epoch). `enqueue=False` leaves the
    queue alone (e.g. for a loss that is only inspected).
    """
    provider = output.extras.get("momentum")
    if not callable(provider):
        raise ValueError("momentum-distilled ITC needs a training forward of (pixels, tokens) of a model with momentum "
                         "distillation on (model.set_momentum_distillation(True), model.train())")
    extras = provider()
    absent = [k for k in REQUIRED_EXTRAS if k not in extras]
    if absent:
        raise ValueError(f"the model's momentum features lack {', '.join(absent)}")
    if output.image_emb is None or output.text_emb is None or len(output.image_emb) != len(output.text_emb):
        raise ValueError("momentum-distilled ITC needs row-aligned image and text embeddings")
    alpha = float(extras.get("alpha", 0.4) if alpha is None else alpha)
    image, text, scale = output.image_emb, output.text_emb, output.logit_scale
    image_m, text_m = extras["image_emb_m"], extras["text_emb_m"]
    keys = keys.view(-1).to(image.device)
    with torch.no_grad():
        image_all = torch.cat([image_m, extras["image_queue"].to(image_m.dtype)])  # [B + Q, D]
        text_all = torch.cat([text_m, extras["text_queue"].to(text_m.dtype)])
        keys_all = torch.cat([keys, extras["queue_keys"].to(keys.device, keys.dtype)])
        positives = (keys[:, None] == keys_all[None, :]).to(image.dtype)
        targets = positives / positives.sum(1, keepdim=True)
        scale_m = scale.detach()
        targets_i2t = alpha * F.softmax(scale_m * image_m @ text_all.T, dim=1) + (1 - alpha) * targets
        targets_t2i = alpha * F.softmax(scale_m * text_m @ image_all.T, dim=1) + (1 - alpha) * targets
    logits_i2t = scale * image @ text_all.T
    logits_t2i = scale * text @ image_all.T
    loss_i2t = -(F.log_softmax(logits_i2t, dim=1) * targets_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(logits_t2i, dim=1) * targets_t2i).sum(1).mean()
    if enqueue and callable(extras.get("enqueue")):
        extras["enqueue"](image_m, text_m, keys)
    return (loss_i2t + loss_t2i) / 2

