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
# openai/clip-vit-base-patch16's config.json (the sizes only): for benchmarks at a real scorer's size
VIT_B16_TEXT_CONFIG = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                       "num_attention_heads": 8, "max_position_embeddings": 77, "vocab_size": 49408}
VIT_B16_VISION_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "image_size": 224, "patch_size": 16}
VIT_B16_PROJECTION_DIM = 512


def save_tiny_transformers_clip(out_dir: str | os.PathLike, seed: int = 0, text_config: dict | None = None,
                                vision_config: dict | None = None, projection_dim: int | None = None) -> Path:
    """Write the tiny CLIPModel and its processor to `out_dir` (loadable with from_pretrained);
    other sizes with the configs given (`VIT_B16_*`: ViT-B/16's, still random weights)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from augment.progress import quiet_progress_bars
    from augment.tiny import OPENAI_MEAN, OPENAI_STD, build_clip_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer(out_dir)
    text_config = dict(text_config or TEXT_CONFIG)
    vision_config = dict(vision_config or VISION_CONFIG)
    size = vision_config["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD),
    )
    config = CLIPConfig(text_config=text_config, vision_config=vision_config,
                        projection_dim=projection_dim or PROJECTION_DIM)
    torch.manual_seed(seed)
    with quiet_progress_bars():
        CLIPModel(config).save_pretrained(str(out_dir))
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))
    return out_dir
