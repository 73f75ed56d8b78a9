"""A small deterministic clean captioner fine-tune for fixtures and quick checks.

Captioning tests need a captioner that has learned something of the sample world (random
weights caption nothing right, so no attack could make it worse). Images decoded once into one
tensor, seeded batches, no augmentation, plain LM loss. For real fine-tuning use
`train clean --task captioning`.
"""
from __future__ import annotations

from pathlib import Path

import torch


def train_quick_captioner(
    source: str,
    out_dir: str | Path,
    *,
    model: str = "tiny-captioner",
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    split: str = "train",
    caption_index: int | None = None,
    prompt: str | None = None,
) -> Path:
    """Train `model` on `split` of `source` for `steps` and save it (transformers layout).

    `caption_index`: train on that caption of every image only (e.g. 3, the sample world's
    low-detail caption); None: a random one. `prompt`: the decoder's prompt (kept in the saved
    folder, so the model reloads with it).
    """
    from augment.sources import load_source, select_split
    from models import load_model

    torch.manual_seed(seed)
    captioner = load_model(model, kind="captioning", prompt=prompt)
    dataset = select_split(load_source(source)[0], split)
    pixels = torch.stack([captioner.preprocess_eval(row["image"]) for row in dataset])
    captions = dataset["captions"]
    generator = torch.Generator().manual_seed(seed)
    captioner.train()
    # a constant rate: the decoder first learns the caption prior and only then to read the image;
    # a decaying schedule stops it in between (one caption for every image)
    optimizer = torch.optim.AdamW(captioner.parameters(), lr=lr, weight_decay=0.01)
    batch_size = min(batch_size, len(dataset))
    for _ in range(steps):
        items = torch.randperm(len(dataset), generator=generator)[:batch_size]
        choice = torch.randint(0, 1 << 30, (batch_size,), generator=generator)
        texts = [captions[i][caption_index if caption_index is not None else int(c) % len(captions[i])]
                 for i, c in zip(items.tolist(), choice)]
        loss = captioner.caption_loss(pixels[items], captioner.tokenize(texts))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    captioner.eval()
    return captioner.save(out_dir)
