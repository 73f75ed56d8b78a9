"""ALBEF (and TCL, the same architecture) behind `VisionLanguageModel`.

Modules carry ALBEF's attribute names (`visual_encoder`, `text_encoder.encoder.layer.N`,
`vision_proj`, `text_proj`, `temp`, `itm_head`, the momentum copies `*_m`), so the released
checkpoints map onto it by renaming almost nothing (see `checkpoint.py`).

* image encoder: timm's `VisionTransformer` (the same fused-qkv ViT-B/16 ALBEF copied from timm);
* text encoder: transformers' `BertEmbeddings` and `BertLayer`s; layers [0, fusion_layer) read
  text only (ITC), layers [fusion_layer, L) also cross-attend to the image (ITM, grounding).
  transformers' `BertModel` cannot run half its layers, so the split encoder is written here.
* momentum distillation (ALBEF's retrieval fine-tuning): `set_momentum_distillation(True)` builds
  the momentum encoders and queues; a training forward with both inputs then puts
  `extras["momentum"]` in its `EncoderOutput`, a callable giving the momentum embeddings and
  queues to `tasks.momentum_distillation.momentum_distilled_itc_loss`, and
  `after_optimizer_step` moves the momentum encoders and enqueues what the loss staged.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from augment.words import pre_caption
from models.albef.config import grounding_layer
from models.albef.text import tokenize_without_sep
from models.base import EncoderOutput, TextTokens, VisionLanguageModel
from models.half_precision import input_gradient, score_head

CONFIG_NAME = "albef_config.json"
WEIGHTS_NAME = "albef_model.safetensors"
MOMENTUM_PREFIXES = ("visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m.")
QUEUE_NAMES = ("image_queue", "text_queue", "idx_queue", "queue_ptr")


def build_vision_transformer(cfg: dict) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=int(cfg["image_res"]), patch_size=int(cfg["patch_size"]), embed_dim=int(cfg["vision_width"]),
        depth=int(cfg["vision_depth"]), num_heads=int(cfg["vision_heads"]), mlp_ratio=float(cfg["mlp_ratio"]),
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0, global_pool="",
    )


class AlbefTextEncoder(nn.Module):
    """ALBEF's BERT: `forward_text` runs layers [0, fusion_layer), `forward_fusion` the rest."""

    def __init__(self, bert: dict):
        super().__init__()
        import transformers
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

        if int(transformers.__version__.split(".")[0]) < 5:  # 4.x: other BertLayer signature and attention classes
            from augment.errors import MissingDependencyError

            raise MissingDependencyError(f"the ALBEF family needs transformers>=5 (found {transformers.__version__}); "
                                         "pip install -U transformers")

        self.fusion_layer = int(bert["fusion_layer"])
        encoder_width = int(bert["encoder_width"])
        text_config = BertConfig(**{k: v for k, v in bert.items() if k not in ("architectures", "model_type")})
        text_config._attn_implementation = "sdpa"
        fusion_config = copy.deepcopy(text_config)
        # transformers only builds cross-attention into decoder layers; the causal flag is undone below
        fusion_config.is_decoder, fusion_config.add_cross_attention = True, True
        self.text_config, self.fusion_config = text_config, fusion_config
        self.embeddings = BertEmbeddings(text_config)
        self.encoder = nn.Module()  # keeps ALBEF's key names: text_encoder.encoder.layer.N....
        layers = []
        for index in range(text_config.num_hidden_layers):
            fusion = index >= self.fusion_layer
            layer = BertLayer(fusion_config if fusion else text_config, layer_idx=index)
            if fusion:
                layer.attention.self.is_causal = False  # ALBEF's text self-attention is bidirectional
                cross = layer.crossattention.self
                if encoder_width != text_config.hidden_size:  # keys/values read the image width
                    cross.key = nn.Linear(encoder_width, cross.all_head_size)
                    cross.value = nn.Linear(encoder_width, cross.all_head_size)
            layers.append(layer)
        self.encoder.layer = nn.ModuleList(layers)
        self.apply(partial(_init_bert_weights, std=text_config.initializer_range))

    def _additive_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # ALBEF's 2021 transformers: -10000 on masked keys, broadcast over heads and queries
        return (1.0 - mask[:, None, None, :].to(dtype)) * -10000.0

    def forward_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)
        mask = self._additive_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer[: self.fusion_layer]:
            hidden = layer(hidden, attention_mask=mask)
        return hidden

    def forward_fusion(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor,
                       image_hidden: torch.Tensor) -> torch.Tensor:
        hidden = text_hidden
        mask = self._additive_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer[self.fusion_layer:]:  # every image token is attended (no image mask)
            hidden = layer(hidden, attention_mask=mask, encoder_hidden_states=image_hidden.to(hidden.dtype))
        return hidden

    @contextlib.contextmanager
    def eager_fusion_attention(self):
        """Eager attention in the fusion layers, so cross-attention returns its probabilities."""
        previous = self.fusion_config._attn_implementation
        self.fusion_config._attn_implementation = "eager"
        try:
            yield
        finally:
            self.fusion_config._attn_implementation = previous


def _init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation (normal(0, 0.02), zero bias, unit LayerNorm) for random-weight builds."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()


def _to_rgb(image):
    from models.transformers_io import to_rgb  # one conversion for every family (16-bit greyscale scaled)

    return to_rgb(image)


def albef_transforms(image_size: int):
    """(train, eval) transforms to [0, 1] tensors: ALBEF's crops and resizes, no normalisation.

    Train: RandomResizedCrop(scale 0.5-1, bicubic) + horizontal flip (ALBEF's RandAugment is left
    out: the project's augmentation pools replace it). Eval: bicubic resize to a square.
    """
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    train = T.Compose([_to_rgb, T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=bicubic),
                       T.RandomHorizontalFlip(), T.ToTensor()])
    evaluate = T.Compose([_to_rgb, T.Resize((image_size, image_size), interpolation=bicubic), T.ToTensor()])
    return train, evaluate


class AlbefModel(VisionLanguageModel):
    """ALBEF / TCL: ViT-B/16 + BERT with a fusion half; ITC (1 / temp), ITM, Grad-CAM grounding."""

    family = "albef"
    has_itm = True
    has_grounding = True
    has_cls_states = True
    supports_momentum_distillation = True

    def __init__(self, config: dict, tokenizer, *, name: str = "", pretrained: str | None = None):
        super().__init__()
        self.config = copy.deepcopy(config)
        cfg, bert = self.config, self.config["bert"]
        self.name, self.pretrained = name, pretrained
        self.tokenizer = tokenizer
        self.image_size = int(cfg["image_res"])
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.context_length = int(cfg["context_length"])
        self.preprocess_train, self.preprocess_eval = albef_transforms(self.image_size)
        self.grounding_layer = grounding_layer(cfg)
        if not int(bert["fusion_layer"]) <= self.grounding_layer < int(bert["num_hidden_layers"]):
            raise ValueError(f"grounding_layer {self.grounding_layer} is not a fusion layer")

        self.visual_encoder = build_vision_transformer(cfg)
        self.text_encoder = AlbefTextEncoder(bert)
        text_width, embed_dim = int(bert["hidden_size"]), int(cfg["embed_dim"])
        self.vision_proj = nn.Linear(int(cfg["vision_width"]), embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.temp = nn.Parameter(torch.ones([]) * float(cfg["temp"]))
        self.itm_head = nn.Linear(text_width, 2)
        self.momentum = float(cfg["momentum"])
        self.alpha = float(cfg["alpha"])
        self.momentum_distillation = False
        self._staged: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- identity ---------------------------------------------------------------------------

    @property
    def itc_loss(self) -> str:  # type: ignore[override]
        return "momentum-distilled" if self.momentum_distillation else "softmax"

    def describe(self) -> dict:
        """Identity; the tokenizer is named too (`--albef-tokenizer`: the same weights tokenised
        otherwise are another model for reports and resume tags)."""
        return {**super().describe(), "itc_loss": self.itc_loss, "tokenizer": self.config.get("tokenizer")}

    @property
    def _dtype(self) -> torch.dtype:
        return self.temp.dtype

    # -- text -------------------------------------------------------------------------------

    def clean_captions(self, texts: Sequence[str]) -> list[str]:
        if not self.config.get("pre_caption", True):
            return [str(t) for t in texts]
        cleaned = [pre_caption(t, int(self.config["max_words"])) for t in texts]
        # pre_caption lower-cases the text attacks' mask word "[UNK]", which BERT's tokenizer would then split
        # into "[ un ##k ]": it stays the one [UNK] token, as the reference codes feed it (they never run
        # pre_caption inside an attack)
        unk = self.tokenizer.unk_token
        return [text.replace(unk.lower(), unk) for text in cleaned] if unk else cleaned

    @contextlib.contextmanager
    def captions_as_given(self):
        # the reference codes run pre_caption once, in their datasets: an attack's substitute ("#", or
        # "[MASK]" with their bugs) reaches the tokenizer as it is, never lower-cased or deleted
        before = self.config.get("pre_caption", True)
        self.config["pre_caption"] = False
        try:
            yield
        finally:
            self.config["pre_caption"] = before

    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        tokens = tokenize_without_sep(self.tokenizer, self.clean_captions(texts), self.context_length)
        return tokens.to(self.device)

    def _text_hidden(self, tokens: TextTokens) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device) if tokens.attention_mask is not None else torch.ones_like(ids)
        return self.text_encoder.forward_text(ids, mask), mask

    # -- ITC --------------------------------------------------------------------------------

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = self.normalize(pixels.to(self.device, self._dtype))
        return self.visual_encoder.forward_features(pixels)

    def embed_image_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.vision_proj(features[:, 0, :])
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.embed_image_features(self.image_features(pixels), normalize=normalize)

    def encode_tokens(self, tokens: TextTokens, normalize: bool = True) -> torch.Tensor:
        emb = self.text_proj(self.text_cls_state(tokens))
        return F.normalize(emb, dim=-1) if normalize else emb

    def image_cls_state(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_features(pixels)[:, 0, :]

    def text_cls_state(self, tokens: TextTokens) -> torch.Tensor:
        hidden, _ = self._text_hidden(tokens)
        return hidden[:, 0, :]

    def cls_state_widths(self) -> tuple[int, int]:
        return int(self.config["vision_width"]), int(self.config["bert"]["hidden_size"])

    def logit_scale_param(self) -> torch.Tensor:
        return 1.0 / self.temp

    def forward(self, pixels: torch.Tensor | None = None, tokens: TextTokens | None = None,
                normalize_image: bool = True, image_features: bool = False) -> EncoderOutput:
        output = super().forward(pixels, tokens, normalize_image=normalize_image, image_features=image_features)
        # a training forward of pairs: what momentum distillation needs, computed only when the
        # loss asks (an attack's forward passes never pay for the momentum encoders)
        if self.momentum_distillation and self.training and pixels is not None and tokens is not None:
            output.extras["momentum"] = self._momentum_provider(pixels.detach(), tokens)
        return output

    def _momentum_provider(self, pixels: torch.Tensor, tokens: TextTokens):
        """A callable computing the momentum features of this batch once (later calls: the same)."""
        computed: dict[str, Any] = {}

        def momentum_features() -> dict[str, Any]:
            if not computed:
                computed.update(self._momentum_extras(pixels, tokens))
            return computed

        return momentum_features

    # -- ITM and the fused embedding --------------------------------------------------------

    def fusion_states(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N, L, H] fusion-encoder states of row-aligned (image, caption) pairs."""
        if len(image_features) != len(tokens):
            raise ValueError(f"ITM pairs are row-aligned: {len(image_features)} images, {len(tokens)} captions")
        hidden, mask = self._text_hidden(tokens)
        return self.text_encoder.forward_fusion(hidden, mask, image_features.to(self.device))

    def fusion_embedding(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N, H] multimodal embedding (fusion [CLS] state): Co-Attack's fused-embedding target."""
        return self.fusion_states(image_features, tokens)[:, 0, :]

    def itm_pair_logits(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N, 2] ITM head logits (no match, match), in float32 under autocast too (`score_head`)."""
        return score_head(self.itm_head, self.fusion_embedding(image_features, tokens))

    def itm_logits(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        logits = self.itm_pair_logits(image_features, tokens)
        return logits[:, 1] - logits[:, 0]

    def itm_rerank_scores(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N] the score ALBEF/SGA/TCL re-rank the top k by: the raw "match" logit (not the log-odds)."""
        return self.itm_pair_logits(image_features, tokens)[:, 1]

    # -- grounding --------------------------------------------------------------------------

    def grounding_heatmap(self, pixels: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[B, h, w] Grad-CAM of the ITM match logit on one fusion layer's cross-attention (ALBEF's
        Grounding.py, gradcam_mode 'itm'): attention x positive gradient, masked to real tokens,
        averaged over heads and real tokens. Parameter gradients are left untouched.

        When `pixels` require a gradient (and grad mode is on) the heat is differentiable in them
        (second order through the fusion layers: attacks on the heat map); otherwise it is
        detached. Not under torch.inference_mode (it needs a graph)."""
        differentiable = pixels.requires_grad and torch.is_grad_enabled()
        cross = self.text_encoder.encoder.layer[self.grounding_layer].crossattention.self
        captured: dict[str, torch.Tensor] = {}
        handle = cross.register_forward_hook(lambda module, args, out: captured.__setitem__("attention", out[1]))
        try:
            with torch.enable_grad(), self.text_encoder.eager_fusion_attention():
                if differentiable:
                    features = self.image_features(pixels)
                else:  # no ViT graph that no backward pass would use (GBs at 384 px and 64 captions);
                    # a leaf with a gradient: the attention has one even in a frozen model
                    with torch.no_grad():
                        features = self.image_features(pixels)
                    features.requires_grad_(True)
                hidden, mask = self._text_hidden(tokens)
                states = self.text_encoder.forward_fusion(hidden, mask, features)
                score = self.itm_head(states[:, 0, :])[:, 1].sum()
                attention = captured["attention"]  # [B, heads, L, 1 + patches]
                gradient = input_gradient(score, attention, create_graph=differentiable)  # fp16: loss-scaled
        finally:
            handle.remove()
        if not differentiable:
            attention, gradient = attention.detach(), gradient.detach()
        side = self.image_size // int(self.config["patch_size"])
        text_mask = mask.view(mask.shape[0], 1, -1, 1).to(attention.dtype)
        cam = attention[:, :, :, 1:] * text_mask
        grad = gradient[:, :, :, 1:].clamp(min=0) * text_mask
        # mean over heads and the caption's real tokens (ALBEF divides by the padded length, a
        # per-row factor that depends on the batch; the ranking of patches is the same)
        heat = (cam * grad).mean(1).sum(1) / mask.sum(1, keepdim=True).to(cam.dtype)
        return heat.reshape(heat.shape[0], side, side).float()

    # -- momentum distillation --------------------------------------------------------------

    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.visual_encoder, self.visual_encoder_m), (self.vision_proj, self.vision_proj_m),
                (self.text_encoder, self.text_encoder_m), (self.text_proj, self.text_proj_m)]

    def set_momentum_distillation(self, enabled: bool = True, alpha: float | None = None) -> None:
        """Build (or drop) the momentum encoders and queues of ALBEF's fine-tuning.

        Call before the optimizer and DDP are made. A model loaded from a released checkpoint
        (`pretrained`: its file) takes the file's momentum encoders and queues, as ALBEF's fine-tuning
        loads them; otherwise the momentum copies start equal to the main weights and the queues as
        ALBEF's (random unit vectors, keys -100 = no positive).
        """
        if alpha is not None:
            self.alpha = float(alpha)
        if enabled == self.momentum_distillation:
            return
        if not enabled:
            for prefix in MOMENTUM_PREFIXES:
                delattr(self, prefix[:-1])
            for name in QUEUE_NAMES:
                delattr(self, name)
            self.momentum_distillation = False
            self._staged.clear()
            return
        for main_name in ("visual_encoder", "vision_proj", "text_encoder", "text_proj"):
            copy_m = copy.deepcopy(getattr(self, main_name)).requires_grad_(False)
            setattr(self, main_name + "_m", copy_m)
        size, dim, device = int(self.config["queue_size"]), int(self.config["embed_dim"]), self.device
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("image_queue", F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device))
        self.register_buffer("text_queue", F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device))
        self.register_buffer("idx_queue", torch.full((size,), -100, dtype=torch.long, device=device))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long, device=device))
        self.momentum_distillation = True
        if self.pretrained:  # read again rather than held: evaluation never needs the copies (half the file)
            from models.albef.checkpoint import load_released_momentum, read_checkpoint

            load_released_momentum(self, read_checkpoint(self.pretrained), f"checkpoint {self.pretrained}")

    @torch.no_grad()
    def reset_momentum(self) -> None:
        """Momentum copies := main weights (after loading weights)."""
        if self.momentum_distillation:
            for main, momentum in self._momentum_pairs():
                for p, p_m in zip(main.parameters(), momentum.parameters()):
                    p_m.copy_(p)

    @torch.no_grad()
    def _momentum_extras(self, pixels: torch.Tensor, tokens: TextTokens) -> dict[str, Any]:
        features_m = self.visual_encoder_m.forward_features(self.normalize(pixels.to(self.device, self._dtype)))
        image_m = F.normalize(self.vision_proj_m(features_m[:, 0, :]), dim=-1)
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device) if tokens.attention_mask is not None else torch.ones_like(ids)
        text_m = F.normalize(self.text_proj_m(self.text_encoder_m.forward_text(ids, mask)[:, 0, :]), dim=-1)
        return {
            "image_emb_m": image_m,  # [B, D] momentum ITC embeddings of this batch
            "text_emb_m": text_m,  # [T, D]
            "image_queue": self.image_queue.clone(),  # [Q, D] momentum embeddings of earlier batches
            "text_queue": self.text_queue.clone(),
            "queue_keys": self.idx_queue.clone(),  # [Q] their keys (-100: empty slot)
            "alpha": self.alpha,
            "enqueue": self.stage_for_queue,  # the loss stages (image_m, text_m, keys) here
        }

    def stage_for_queue(self, image_m: torch.Tensor, text_m: torch.Tensor, keys: torch.Tensor) -> None:
        """Keep a batch's momentum embeddings for the queue; enqueued after the optimizer step."""
        self._staged.append((image_m.detach(), text_m.detach(), keys.detach().view(-1).to(image_m.device)))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.temp.clamp_(0.001, 0.5)  # ALBEF's pre-training bound on the temperature
        if not self.momentum_distillation:
            return
        m = self.momentum
        # ALBEF: p_m = m * p_m + (1 - m) * p, parameters only; by hand, not timm's ModelEma, because the
        # momentum copies live inside the model under the names ALBEF's checkpoints give them
        for main, momentum in self._momentum_pairs():
            for p, p_m in zip(main.parameters(), momentum.parameters()):
                p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)
        staged, self._staged = self._staged, []
        for image_m, text_m, keys in staged:
            self._enqueue(*(_gather(t) for t in (image_m, text_m, keys)))

    def _enqueue(self, image_m: torch.Tensor, text_m: torch.Tensor, keys: torch.Tensor) -> None:
        size = self.image_queue.shape[0]
        rows = min(len(keys), size)
        slots = (int(self.queue_ptr) + torch.arange(rows, device=self.image_queue.device)) % size
        self.image_queue[slots] = image_m[-rows:].to(self.image_queue.dtype)
        self.text_queue[slots] = text_m[-rows:].to(self.text_queue.dtype)
        self.idx_queue[slots] = keys[-rows:].to(self.idx_queue.dtype)
        self.queue_ptr[0] = (int(self.queue_ptr) + rows) % size

    # -- training hooks ---------------------------------------------------------------------

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for the ViT; transformers' per-layer switch for the BERT layers (text and fusion)."""
        from functools import partial

        from torch.utils.checkpoint import checkpoint

        self.visual_encoder.set_grad_checkpointing(enable)
        for layer in self.text_encoder.encoder.layer:
            layer.gradient_checkpointing = enable
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    def tower_parameters(self, tower: str) -> list[nn.Parameter]:
        if tower == "image":
            return [*self.visual_encoder.parameters(), *self.vision_proj.parameters()]
        if tower == "text":  # the text encoder (fusion half included), its projection and the ITM head
            return [*self.text_encoder.parameters(), *self.text_proj.parameters(), *self.itm_head.parameters()]
        raise ValueError(f"unknown tower {tower!r}; expected 'image' or 'text'")

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        groups = super().parameter_groups(weight_decay)
        momentum = {id(p) for n, p in self.named_parameters() if n.startswith(MOMENTUM_PREFIXES)}
        return [{**g, "params": [p for p in g["params"] if id(p) not in momentum]} for g in groups]

    # -- saving -----------------------------------------------------------------------------

    def main_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights without the momentum copies and queues (what a released checkpoint gives)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(MOMENTUM_PREFIXES) and k not in QUEUE_NAMES}

    def save_native(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from augment.atomic import atomic_write_text, temporary_path

        folder = Path(folder)
        # everything, momentum encoders and queues included when on (a resumed run continues them)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        weights_tmp = temporary_path(folder / WEIGHTS_NAME)
        try:
            save_file(state, str(weights_tmp), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(str(folder))
            os.replace(weights_tmp, folder / WEIGHTS_NAME)
        finally:
            weights_tmp.unlink(missing_ok=True)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.config, indent=2) + "\n")  # last: marks it complete

    @classmethod
    def can_load(cls, folder: Path) -> bool:
        return (Path(folder) / CONFIG_NAME).is_file() and (Path(folder) / WEIGHTS_NAME).is_file()


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (ALBEF gathers before enqueueing, so every rank keeps the same queue)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)

