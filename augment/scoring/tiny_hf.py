"""A tiny transformers `CLIPModel` + `CLIPProcessor` with random weights, built offline.

For tests and the scoring benchmark only: it exercises the transformers scorer path (and
torchmetrics' CLIPScore) without any download. The tokenizer is open_clip's BPE vocabulary
written as vocab.json + merges.txt (augment.tiny.build_clip_tokenizer).
"""
from __future__ import annotations

import os
from pathlib import Path

TEXT_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "max_position_embeddings": 77, "vocab_size": 49408}
VISION_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "image_size": 64, "patch_size": 16}
PROJECTION_DIM = 32


def save_tiny_transformers_clip(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny CLIPModel and its processor to `out_dir` (loadable with from_pretrained)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from augment.tiny import OPENAI_MEAN, OPENAI_STD, build_clip_tokenizer, quiet_progress_bars

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(out_dir)
    size = VISION_CONFIG["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD),
    )
    config = CLIPConfig(text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG), projection_dim=PROJECTION_DIM)
    torch.manual_seed(seed)
    with quiet_progress_bars():
        CLIPModel(config).save_pretrained(str(out_dir))
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))
    return out_dir
