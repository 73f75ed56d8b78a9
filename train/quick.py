"""A small deterministic clean CLIP fine-tune for fixtures and quick checks.

Scoring, evaluation and study tests need a scorer/victim that has learned the sample world
(random weights cannot tell a right caption from a shuffled one). This routine trains one in
seconds to a minute on the CPU: plain contrastive loss (open_clip's `ClipLoss`), all images
decoded once into one tensor, batches drawn by a seeded generator, no augmentation. For real
fine-tuning use `train clean`.
"""
from __future__ import annotations

from pathlib import Path

import torch


def load_pixels(bundle, dataset) -> torch.Tensor:
    """Every image of `dataset` through the bundle's eval transform: [N, 3, S, S] in [0, 1]."""
    return torch.stack([bundle.preprocess_eval(row["image"]) for row in dataset])


def train_quick_clip(
    source: str,
    out_dir: str | Path,
    *,
    model: str = "tiny-clip",
    steps: int = 150,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    split: str = "train",
) -> Path:
    """Train `model` on `split` of `source` for `steps` and save it in open_clip's local-dir layout."""
    from open_clip.loss import ClipLoss

    from augment.registry import load_clip, save_clip_local_dir
    from augment.sources import load_source, select_split

    torch.manual_seed(seed)
    bundle = load_clip(model)
    dataset = select_split(load_source(source)[0], split)
    pixels = load_pixels(bundle, dataset)
    captions = dataset["captions"]
    generator = torch.Generator().manual_seed(seed)
    clip_model = bundle.model.train()
    optimizer = torch.optim.AdamW(clip_model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = ClipLoss()
    batch_size = min(batch_size, len(dataset))
    for _ in range(steps):
        items = torch.randperm(len(dataset), generator=generator)[:batch_size]
        choice = torch.randint(0, 1 << 30, (batch_size,), generator=generator)
        texts = [captions[i][int(c) % len(captions[i])] for i, c in zip(items.tolist(), choice)]
        image_features = clip_model.encode_image(bundle.normalize(pixels[items]), normalize=True)
        text_features = clip_model.encode_text(bundle.tokenizer(texts), normalize=True)
        loss = loss_fn(image_features, text_features, clip_model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    clip_model.eval()
    return save_clip_local_dir(clip_model, out_dir, bundle.model_cfg, preprocess_cfg=bundle.preprocess_cfg)
