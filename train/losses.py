"""Losses the training methods share beyond a task's own: FARE's embedding loss, and gathering
the keys of the global batch (the retrieval task's contrastive losses live in tasks/retrieval.py).

Across processes, embeddings AND keys are gathered (open_clip's `gather_features`, local
embeddings kept with their gradient) so every process scores the global batch with the right
positives. Each process then holds the full loss but gradients only through its own embeddings;
DDP averages gradients over processes, so the task's `gradient_scale` (= world size) makes the
update equal to that of one process with the whole global batch.
"""
from __future__ import annotations

import torch


def gather_keys(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """All processes' keys, in process order (the order gather_features uses for embeddings)."""
    if world_size <= 1:
        return keys
    import torch.distributed as dist

    gathered = [torch.empty_like(keys) for _ in range(world_size)]
    dist.all_gather(gathered, keys.contiguous())
    return torch.cat(gathered)


def fare_loss(adversarial_emb: torch.Tensor, original_emb: torch.Tensor) -> torch.Tensor:
    """FARE: squared L2 distance between (unnormalised) image embeddings, mean over the batch."""
    return (adversarial_emb.float() - original_emb.float()).pow(2).sum(-1).mean()
