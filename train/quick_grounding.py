"""A small deterministic clean grounding fine-tune (ITC + ITM on expressions) for fixtures and checks.

The end-to-end grounding tests need a grounder that has learned the sample world; this trains one
on the CPU: `GroundingTask.loss` (the task's own training loss), all images decoded once, each
batch = distinct images with one of their expressions each, drawn by a seeded generator. For real
fine-tuning use `train clean --task grounding`.
"""
from __future__ import annotations

from pathlib import Path

import torch


def train_quick_grounder(data, out_dir: str | Path, *, model: str = "tiny-albef", steps: int = 300,
                         batch_size: int = 32, lr: float = 1e-3, seed: int = 0, **model_options) -> Path:
    """Train `model` on the expressions of `data` (`augment.referring.GroundingData`) and save it."""
    from models import load_model
    from tasks.grounding import GroundingTask

    torch.manual_seed(seed)
    grounder = load_model(model, **model_options)
    task = GroundingTask()
    task.check_model(grounder)
    pixels = torch.stack([grounder.preprocess_eval(image.load()) for image in data.images])
    texts_of_image: list[list[str]] = [[] for _ in data.images]
    for expression in data.expressions:
        texts_of_image[expression.image].append(expression.text)
    generator = torch.Generator().manual_seed(seed)
    grounder.train()
    optimizer = torch.optim.AdamW(grounder.parameter_groups(0.02), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    batch_size = min(batch_size, len(data.images))
    for _ in range(steps):
        items = torch.randperm(len(data.images), generator=generator)[:batch_size]
        choice = torch.randint(0, 1 << 30, (batch_size,), generator=generator)
        texts = [texts_of_image[i][int(c) % len(texts_of_image[i])] for i, c in zip(items.tolist(), choice)]
        loss = task.loss(grounder, pixels[items], grounder.tokenize(texts), items)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        grounder.after_optimizer_step()
    grounder.eval()
    return grounder.save(out_dir)
