"""Image-text retrieval metrics and attack success rates, from one similarity matrix.

Conventions (the same as the attack papers' evaluation code):

* `sims` is [num_images, num_texts]; higher means more similar.
* `image_of_text[t]` is the index of the image caption `t` belongs to.
* TR@K (text retrieval, image query): image i is correct when ANY of its captions is among the K
  captions ranked highest for it.
* IR@K (image retrieval, caption query): caption t is correct when its image is among the K
  images ranked highest for it.
* RSUM: TR@1 + TR@5 + TR@10 + IR@1 + IR@5 + IR@10.
* ASR@K (attack success rate): among the queries that are correct at K on clean data, the share
  that are wrong under attack (`asr_tr@1` for image queries, `asr_ir@1` for caption queries).

All numbers are percentages in [0, 100]. Ties count against the query: a wrong candidate that
scores exactly as high as the best correct one ranks before it, so a collapsed model (all scores
equal) gets 0, never 100. NaN scores count against the query too (a NaN correct score loses, a
NaN wrong one wins): a model whose embeddings overflowed gets 0, not 100 (every comparison
with NaN is False, so a plain `>=` would count them as hits).
"""
from __future__ import annotations

import torch

KS = (1, 5, 10)


def _as_pairing(image_of_text, num_texts: int) -> torch.Tensor:
    pairing = torch.as_tensor(image_of_text, dtype=torch.long)
    if pairing.shape != (num_texts,):
        raise ValueError(f"image_of_text has shape {tuple(pairing.shape)}, expected ({num_texts},)")
    return pairing


def text_retrieval_ranks(sims: torch.Tensor, image_of_text) -> torch.Tensor:
    """[num_images] 0-based rank of each image's best-ranked caption (ties pessimistic).

    Not torchmetrics' RetrievalHitRate: it breaks score ties by sort order, so a collapsed model
    (every score equal) would score 50 there; ties count against the query here."""
    sims = sims.float()
    pairing = _as_pairing(image_of_text, sims.shape[1]).to(sims.device)
    positives = pairing.unsqueeze(0) == torch.arange(sims.shape[0], device=sims.device).unsqueeze(1)
    nan = sims.isnan()
    best_positive = sims.masked_fill(~positives | nan, float("-inf")).max(dim=1, keepdim=True).values
    # wrong captions scoring at least as high as the best right one (NaN ones do)
    return ((sims.masked_fill(nan, float("inf")) >= best_positive) & ~positives).sum(dim=1)


def image_retrieval_ranks(sims: torch.Tensor, image_of_text) -> torch.Tensor:
    """[num_texts] 0-based rank of each caption's image (ties pessimistic)."""
    sims = sims.float()
    pairing = _as_pairing(image_of_text, sims.shape[1]).to(sims.device)
    columns = sims.T  # [num_texts, num_images]
    own = columns.gather(1, pairing.unsqueeze(1))
    own = own.masked_fill(own.isnan(), float("-inf"))
    others = torch.ones_like(columns, dtype=torch.bool).scatter_(1, pairing.unsqueeze(1), False)
    return ((columns.masked_fill(columns.isnan(), float("inf")) >= own) & others).sum(dim=1)


def retrieval_hits(sims: torch.Tensor, image_of_text, ks=KS) -> dict[str, torch.Tensor]:
    """Per-query correctness: {"tr@K": bool[num_images], "ir@K": bool[num_texts]} for each K."""
    tr_ranks = text_retrieval_ranks(sims, image_of_text)
    ir_ranks = image_retrieval_ranks(sims, image_of_text)
    hits = {f"tr@{k}": (tr_ranks < k).cpu() for k in ks}
    hits.update({f"ir@{k}": (ir_ranks < k).cpu() for k in ks})
    return hits


def recall_from_hits(hits: dict[str, torch.Tensor]) -> dict[str, float]:
    """TR@K / IR@K in percent and RSUM (the sum of all six recalls)."""
    # counted in Python, not a float32 mean: 1 of 5 is 20.0, not 20.000000298023224
    recalls = {name: 100.0 * int(hit.sum()) / hit.numel() for name, hit in hits.items()}
    recalls["rsum"] = sum(recalls.values())
    return recalls


def retrieval_metrics(sims: torch.Tensor, image_of_text, ks=KS) -> dict[str, float]:
    """{"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "rsum"} in percent."""
    return recall_from_hits(retrieval_hits(sims, image_of_text, ks))


def attack_success_rates(clean_hits: dict[str, torch.Tensor], attacked_hits: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """{"asr_tr@K", "asr_ir@K"}: percent of clean-correct queries that the attack makes wrong.

    None when no query was correct on clean data (the rate is undefined).
    """
    rates: dict[str, float | None] = {}
    for name, clean in clean_hits.items():
        attacked = attacked_hits[name]
        correct = int(clean.sum())
        broken = int((clean & ~attacked).sum())
        rates[f"asr_{name}"] = 100.0 * broken / correct if correct else None
    return rates
