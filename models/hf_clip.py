"""The transformers CLIP family: `CLIPModel` (+ its CLIPProcessor) behind `VisionLanguageModel`.

Names: Hub ids of CLIPModel checkpoints (`openai/clip-vit-base-patch16`,
`openai/clip-vit-base-patch32`, ...), any folder a CLIPModel was saved into with
`save_pretrained` (with its processor), either prefixed with `transformers:` to be explicit, and
the tiny twin `tiny-hf-clip`. The same CLIP weights as open_clip's `ViT-B-16` + `openai`, read
through transformers: ITC only (no ITM head), softmax InfoNCE, learnt logit scale clamped to 100.

Pixels: size, mean and std of the CLIPImageProcessor config; eval = the processor's resize
(shortest side, or squashed to height x width) with its filter and its centre crop, as its flags
say (`models.transformers_io.processor_eval_transform`); train = RandomResizedCrop (scale 0.9..1,
open_clip's default train transform). Saved with `save_pretrained` (model + processor).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augment import tiny
from augment.errors import ModelLoadError
from models import transformers_io as tio
from models.base import TextTokens, VisionLanguageModel

ARCHITECTURE = "CLIPModel"
PREFIX = "transformers:"
TINY_HF_CLIP = "tiny-hf-clip"
TINY_NAMES = (TINY_HF_CLIP,)
TRAIN_CROP_SCALE = (0.9, 1.0)  # open_clip's default RandomResizedCrop scale for CLIP training
MAX_LOGIT_SCALE = 100.0  # CLIP: temperature no lower than 1/100

# tiny-hf-clip: same class, 64 px, 2 layers per tower, width 32, CLIP's BPE vocabulary
TINY_TEXT_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 77, "vocab_size": 49408}
TINY_VISION_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 16}
TINY_EMBED_DIM = 32


class HFClipModel(tio.TransformersEncoderWrapped, VisionLanguageModel):
    """A transformers `CLIPModel` with its processor."""

    family = "hf_clip"
    itc_loss = "softmax"

    def __init__(self, model, processor, *, name: str):
        super().__init__()
        self.model = model  # transformers' module (its state dict keys are transformers')
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name, self.pretrained = name, None
        image_processor = processor.image_processor
        native = int(model.config.vision_config.image_size)
        try:
            self.image_size, self.preprocess_eval = tio.processor_eval_transform(image_processor, native)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{name}: {exc}") from None
        if self.image_size != native:  # the position table is the model's: other sizes fail mid-run
            raise ModelLoadError(f"{name}: its image processor makes {self.image_size} px images, its vision "
                                 f"model reads {native} px; fix the processor's size / crop_size")
        self.mean = tuple(float(v) for v in image_processor.image_mean)
        self.std = tuple(float(v) for v in image_processor.image_std)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.preprocess_train = tio.train_transform(self.image_size, TRAIN_CROP_SCALE, hflip=False)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        vision = self.model.vision_model
        pixels = self.normalize(pixels.to(self.device)).to(vision.embeddings.patch_embedding.weight.dtype)
        embedding = self.model.visual_projection(vision(pixel_values=pixels).pooler_output)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def encode_tokens(self, tokens: TextTokens, normalize: bool = True) -> torch.Tensor:
        tokens = tokens.to(self.device)
        pooled = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
        embedding = self.model.text_projection(pooled)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    # the text prefix cache (`models.text_prefix`): CLIP's text tower is causal and pools one token
    fast_text = True  # False: no prefix cache, texts encoded whole (the benches' "as before")

    def _pooled_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N] the position `CLIPTextTransformer` pools: the highest id (its legacy `eos_token_id` 2),
        else the first end-of-text token."""
        eos = self.model.text_model.eos_token_id
        if eos == 2:
            return tokens.argmax(dim=-1)
        return (tokens == eos).int().argmax(dim=-1)

    def text_prefix_cache(self, references, batch_size: int | None = None):
        """A `models.text_prefix.TextPrefixCache` of `references`, or None: `fast_text` off, dropout in
        effect, or no references. Inference only."""
        from models.text_prefix import TextPrefixCache

        text = self.model.text_model
        if not references or not self.fast_text or (text.training and text.config.attention_dropout > 0):
            return None
        return TextPrefixCache(self, self._causal_text_tower(), references, batch_size)

    @torch.no_grad()  # the packed in-projection is a copy of the weights, not a node of a graph
    def _causal_text_tower(self):
        """The text tower as `models.text_prefix.CausalTextTower` reads it: transformers' separate q, k, v
        projections packed into one [q; k; v] matrix (`CLIPAttention` scales q by head width^-0.5, as the
        cache's attention does)."""
        from models.text_prefix import CausalBlock, CausalTextTower

        text, projection = self.model.text_model, self.model.text_projection
        embeddings = text.embeddings

        def embed(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return embeddings.token_embedding(tokens) + embeddings.position_embedding(positions)

        blocks = []
        for layer in text.encoder.layers:
            attn = layer.self_attn
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            biases = None if attn.q_proj.bias is None else torch.cat([p.bias for p in projections])
            blocks.append(CausalBlock(ln_1=layer.layer_norm1, qkv_weight=torch.cat([p.weight for p in projections]),
                                      qkv_bias=biases, heads=attn.num_heads, out_weight=attn.out_proj.weight,
                                      out_bias=attn.out_proj.bias, ln_2=layer.layer_norm2, mlp=layer.mlp))
        return CausalTextTower(embed=embed, blocks=blocks, finish=lambda x: projection(text.final_layer_norm(x)))

    def tower_parameters(self, tower: str) -> list[nn.Parameter]:
        if tower == "image":
            return [*self.model.vision_model.parameters(), *self.model.visual_projection.parameters()]
        if tower == "text":
            return [*self.model.text_model.parameters(), *self.model.text_projection.parameters()]
        raise ValueError(f"unknown tower {tower!r}; expected 'image' or 'text'")

    def after_optimizer_step(self) -> None:
        with torch.no_grad():  # as CLIP: temperature no lower than 1/100
            self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))

    def save_native(self, folder: Path) -> None:
        tio.save_pretrained_all_or_nothing(folder, self.model, self.processor)

    @classmethod
    def can_load(cls, folder: Path) -> bool:
        return ARCHITECTURE in tio.folder_architectures(folder)


def claims_name(name: str, pretrained: str | None = None) -> bool:
    """`transformers:NAME` says "read NAME with transformers' CLIPModel"."""
    return name.startswith(PREFIX)


def load(name: str, pretrained: str | None = None, device: Any = "cpu", precision: str = "fp32", *,
         revision: str | None = None, display_name: str | None = None) -> HFClipModel:
    """Load a transformers CLIP by any accepted name (module docstring); eval mode on `device`."""
    if pretrained:
        raise ModelLoadError(f"--pretrained is an open_clip tag; transformers CLIP '{name}' takes none")
    from transformers import CLIPModel, CLIPProcessor

    source_name = name.removeprefix(PREFIX)
    model, processor = tio.load_pretrained(source_name, CLIPModel, CLIPProcessor, family="transformers CLIP",
                                           architecture=ARCHITECTURE, tiny_names=TINY_NAMES, aliases={},
                                           precision=precision, revision=revision)
    return HFClipModel(model.to(device), processor, name=display_name or name).eval()


def build_tiny(name: str, out_dir: Path) -> None:
    """Write tiny-hf-clip with save_pretrained (seeded by the caller): CLIP's BPE tokenizer, random weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    if name not in TINY_NAMES:
        raise ModelLoadError(f"'{name}' is not a transformers CLIP twin ({', '.join(TINY_NAMES)})")
    tokenizer = tiny.build_clip_tokenizer(out_dir)
    size = TINY_VISION_CONFIG["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=list(tiny.OPENAI_MEAN), image_std=list(tiny.OPENAI_STD))
    config = CLIPConfig(text_config=dict(TINY_TEXT_CONFIG), vision_config=dict(TINY_VISION_CONFIG),
                        projection_dim=TINY_EMBED_DIM)
    model = CLIPModel(config)
    model.save_pretrained(str(out_dir))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))


def tiny_config(name: str) -> dict:
    """What tiny-hf-clip's fingerprint hashes."""
    return {"vision": TINY_VISION_CONFIG, "text": TINY_TEXT_CONFIG, "embed_dim": TINY_EMBED_DIM,
            "bpe_sha256": _sha256(tiny.open_clip_bpe_path())}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


MODEL_CLASS = HFClipModel
