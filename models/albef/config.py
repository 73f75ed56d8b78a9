"""ALBEF configs: the released defaults, ALBEF's own config files, and the tiny twin's.

A config is one plain dict (saved as `albef_config.json`): the model's sizes and training
constants from ALBEF's retrieval YAML plus `bert`, the BERT config JSON ALBEF ships
(`configs/config_bert.json`, with `fusion_layer` and `encoder_width`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from augment.errors import ModelLoadError, first_line

# CLIP's pixel statistics: ALBEF normalises with these, not ImageNet's
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ALBEF configs/config_bert.json (bert-base-uncased; layers 0-5 text only, 6-11 cross-attend)
DEFAULT_BERT_CONFIG: dict[str, Any] = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "fusion_layer": 6,
    "encoder_width": 768,
}

# ALBEF configs/Retrieval_flickr.yaml (ViT-B/16 sizes are fixed in ALBEF's code: here they are keys)
DEFAULT_CONFIG: dict[str, Any] = {
    "image_res": 384,
    "patch_size": 16,
    "vision_width": 768,
    "vision_depth": 12,
    "vision_heads": 12,
    "mlp_ratio": 4.0,
    "embed_dim": 256,
    "temp": 0.07,
    "queue_size": 65536,
    "momentum": 0.995,
    "alpha": 0.4,
    "max_words": 30,  # pre_caption's word limit and the token limit (ALBEF: max_length=30)
    "context_length": 30,
    "pre_caption": True,
    "grounding_layer": None,  # None: fusion_layer + 2 (ALBEF's Grounding.py block_num 8), clipped
    "tokenizer": "bert-base-uncased",
    "mean": list(CLIP_MEAN),
    "std": list(CLIP_STD),
}

# keys of ALBEF's YAML (and our vision-size extensions) that change the model
YAML_KEYS = ("image_res", "vision_width", "embed_dim", "temp", "queue_size", "momentum", "alpha",
             "patch_size", "vision_depth", "vision_heads", "mlp_ratio", "max_words")

TINY_BERT_CONFIG: dict[str, Any] = {
    **DEFAULT_BERT_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "fusion_layer": 2,
    "max_position_embeddings": 64,
    "encoder_width": 48,  # differs from hidden_size on purpose: exercises ALBEF's encoder_width
    "vocab_size": None,  # the word tokenizer's size, filled in when built
    # at BERT's 0.02 a 32-wide random text encoder gives every caption the same [CLS] (cosine
    # 0.99999) and 150 steps learn nothing; 0.2 and no dropout let the twin learn the world in seconds
    "initializer_range": 0.2,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
TINY_CONFIG: dict[str, Any] = {
    **DEFAULT_CONFIG,
    "image_res": 64,
    "patch_size": 16,
    "vision_width": 48,
    "vision_depth": 2,
    "vision_heads": 4,
    "embed_dim": 16,
    "queue_size": 32,
    "grounding_layer": 2,  # not the last layer: there only the [CLS] row reaches the ITM score
    "tokenizer": None,  # saved in the twin's folder
}


def _read_json(path: str | Path, what: str) -> dict:
    from augment.json_records import DamagedRecord, read_json_object

    try:
        return read_json_object(Path(path).expanduser())
    except (OSError, DamagedRecord) as exc:
        raise ModelLoadError(f"cannot read ALBEF {what} {path}: {first_line(exc)}") from None


def read_bert_config(path: str | Path) -> dict:
    """ALBEF's BERT config JSON (must name `fusion_layer`)."""
    data = _read_json(path, "BERT config")
    if "fusion_layer" not in data:
        raise ModelLoadError(f"ALBEF BERT config {path} has no 'fusion_layer' (expected ALBEF's config_bert.json)")
    return data


def read_yaml_config(path: str | Path) -> dict:
    """The keys of ALBEF's YAML (e.g. configs/Retrieval_flickr.yaml) that size the model; others ignored."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read ALBEF config {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"ALBEF config {path} is not a YAML mapping")
    return {k: data[k] for k in YAML_KEYS if k in data}


def make_config(config: str | Path | dict | None = None, bert_config: str | Path | dict | None = None,
                image_size: int | None = None, base: dict | None = None) -> dict:
    """The released config updated by ALBEF's YAML (`config`) and BERT JSON (`bert_config`)."""
    cfg = copy.deepcopy(base or DEFAULT_CONFIG)
    cfg.setdefault("bert", copy.deepcopy(DEFAULT_BERT_CONFIG))
    if config is not None:
        cfg.update(config if isinstance(config, dict) else read_yaml_config(config))
    if bert_config is not None:
        bert = bert_config if isinstance(bert_config, dict) else read_bert_config(bert_config)
        cfg["bert"] = {**DEFAULT_BERT_CONFIG, **bert}
    if image_size is not None:
        cfg["image_res"] = int(image_size)
    return check_config(cfg)


def check_config(cfg: dict) -> dict:
    bert = cfg["bert"]
    layers, fusion = int(bert["num_hidden_layers"]), int(bert["fusion_layer"])
    if not 0 < fusion < layers:
        raise ModelLoadError(f"ALBEF fusion_layer {fusion} must lie between 1 and num_hidden_layers - 1 ({layers - 1})")
    if int(bert.get("encoder_width", cfg["vision_width"])) != int(cfg["vision_width"]):
        raise ModelLoadError(f"ALBEF encoder_width {bert['encoder_width']} differs from vision_width {cfg['vision_width']}")
    if int(cfg["image_res"]) % int(cfg["patch_size"]):
        raise ModelLoadError(f"ALBEF image_res {cfg['image_res']} is not a multiple of patch_size {cfg['patch_size']}")
    bert["encoder_width"] = int(cfg["vision_width"])
    return cfg


def grounding_layer(cfg: dict) -> int:
    """The fusion layer whose cross-attention Grad-CAM reads (ALBEF: layer 8 = fusion_layer + 2)."""
    bert = cfg["bert"]
    if cfg.get("grounding_layer") is not None:
        return int(cfg["grounding_layer"])
    return min(int(bert["fusion_layer"]) + 2, int(bert["num_hidden_layers"]) - 1)
