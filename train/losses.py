"""Training losses: CLIP's contrastive loss with multi-positive targets, and FARE's embedding loss.

Multi-positive targets: image i and caption t are positives when their keys (the train image
index) are equal, so two views of one source image in a batch never push each other apart. The
target of each row is uniform over its positives (soft cross-entropy); with all keys distinct this
is exactly CLIP's InfoNCE, and open_clip's `ClipLoss` computes it.

Across processes, embeddings AND keys are gathered (open_clip's `gather_features`, local
embeddings kept with their gradient) so every process scores the global batch with the right
positives. Each process then holds the full loss but gradients only through its own embeddings;
DDP averages gradients over processes, so `ContrastiveLoss.gradient_scale` (= world size) makes the
update equal to that of one process with the whole global batch.
"""
from __future__ import annotations

import torch


def multi_positive_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, image_keys: torch.Tensor,
                                    text_keys: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE where every (image, caption) pair with equal keys is a positive.

    `image_emb` [N, D], `text_emb` [M, D] unit vectors; keys [N] and [M]. Rows without any
    positive contribute nothing.
    """
    logits = logit_scale * image_emb.float() @ text_emb.float().T
    positives = (image_keys.view(-1, 1) == text_keys.view(1, -1)).float()
    image_targets = positives / positives.sum(1, keepdim=True).clamp(min=1)
    text_targets = positives.T / positives.T.sum(1, keepdim=True).clamp(min=1)
    image_loss = -(image_targets * logits.log_softmax(dim=1)).sum(1).mean()
    text_loss = -(text_targets * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (image_loss + text_loss) / 2


def gather_keys(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """All processes' keys, in process order (the order gather_features uses for embeddings)."""
    if world_size <= 1:
        return keys
    import torch.distributed as dist

    gathered = [torch.empty_like(keys) for _ in range(world_size)]
    dist.all_gather(gathered, keys.contiguous())
    return torch.cat(gathered)


class ContrastiveLoss:
    """CLIP's image-text loss over the global batch with multi-positive targets by key."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        from open_clip.loss import ClipLoss

        self.rank, self.world_size = rank, world_size
        self.clip_loss = ClipLoss(rank=rank, world_size=world_size)

    @property
    def gradient_scale(self) -> float:
        return float(self.world_size)

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor, keys: torch.Tensor,
                 logit_scale: torch.Tensor) -> torch.Tensor:
        """Loss of local unit embeddings [B, D] paired 1:1, `keys` [B] (gathered inside)."""
        all_keys = gather_keys(keys.to(image_emb.device), self.world_size)
        image_emb, text_emb = image_emb.float(), text_emb.float()
        if all_keys.unique().numel() == all_keys.numel():
            # the plain 1:1 case: open_clip's own loss (same value as the multi-positive one)
            return self.clip_loss(image_emb, text_emb, logit_scale)
        if self.world_size > 1:
            from open_clip.loss import gather_features

            image_emb, text_emb = gather_features(image_emb, text_emb, rank=self.rank, world_size=self.world_size)
        return multi_positive_contrastive_loss(image_emb, text_emb, all_keys, all_keys, logit_scale)


def fare_loss(adversarial_emb: torch.Tensor, original_emb: torch.Tensor) -> torch.Tensor:
    """FARE: squared L2 distance between (unnormalised) image embeddings, mean over the batch."""
    return (adversarial_emb.float() - original_emb.float()).pow(2).sum(-1).mean()
