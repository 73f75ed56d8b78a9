"""The one interface every vision-language model family implements, as every consumer sees it.

Consumers (the trainer, the training methods, the attacks, evaluation, pool scoring, the study)
talk to a `VisionLanguageModel` only; none of them imports open_clip or a transformers model
class. A family is one module in `models/` (a subclass of these classes) plus one entry in the
name -> family table of `models/__init__.py`.

Conventions every family keeps:

* Pixels are float tensors [B, 3, H, W] in [0, 1] BEFORE normalisation: attacks perturb them
  and the L-inf budget is defined on them. The family's own normalisation (mean/std) happens
  inside `encode_image` / `image_features` / `forward`.
* `preprocess_train` / `preprocess_eval` turn a PIL image into such a [0, 1] tensor at the
  model's resolution (`image_size`); they never normalise.
* Text goes through `tokenize` (captions -> `TextTokens` on the model's device) or, for
  convenience, `encode_text(list_of_str)`. Tokens are opaque to consumers: they only batch,
  index, concatenate and move them.
* ITC embeddings (`encode_image`, `encode_tokens`) are unit vectors by default; `similarity`
  turns them into logits with the family's scale and bias (CLIP: scale only; SigLIP: scale and
  bias; BLIP/ALBEF: 1 / temperature).
* Fusion families (`has_itm = True`: BLIP, ALBEF) also score (image, caption) pairs with their
  image-text matching head: `itm_logits(image_features(pixels), tokens)` -> [N] match logits of
  row-aligned pairs (the log-odds of "match").
* `forward(pixels, tokens)` is the single call with parameter gradients that a training step
  makes (DDP wraps a module that calls it); it returns `EncoderOutput`.
* Saving writes the family's native layout (open_clip `local-dir`, transformers
  `save_pretrained`, ...) plus `matplus_model.json` (family, name, pretrained, image_size), so
  `models.load_model(FOLDER)` finds the family again.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from augment.atomic import atomic_write_text, readable_as_umask
from models.multihead_attention import use_batch_first_attention, uses_batch_first_attention
from models.patch_embedding import use_patch_matmul, uses_patch_matmul
from models.pooled_block import use_class_token_transformer, uses_class_token_transformer

# written beside every saved model: which family reads the folder back
MODEL_INFO_NAME = "matplus_model.json"
# a model's `kind`, in words: "retrieval" names the image-text matching models (the grounding task
# uses them too), not the task of that name
KINDS = {"retrieval": "an image-text matching model (CLIP, SigLIP, BLIP, ALBEF/TCL)",
         "captioning": "a captioning model (an image-to-text generator)"}


@dataclass
class TextTokens:
    """Tokenised captions: ids [T, L] and, for BERT-style families, the attention mask [T, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: Any) -> "TextTokens":
        mask = self.attention_mask.to(device) if self.attention_mask is not None else None
        return TextTokens(self.input_ids.to(device), mask)

    def __getitem__(self, index: Any) -> "TextTokens":
        mask = self.attention_mask[index] if self.attention_mask is not None else None
        return TextTokens(self.input_ids[index], mask)

    @staticmethod
    def cat(parts: Sequence["TextTokens"]) -> "TextTokens":
        """Concatenate along the batch; pads to the longest when lengths differ (mask 0, id 0 or pad)."""
        length = max(p.input_ids.shape[1] for p in parts)
        ids, masks, any_mask = [], [], any(p.attention_mask is not None for p in parts)
        for p in parts:
            pad = length - p.input_ids.shape[1]
            ids.append(F.pad(p.input_ids, (0, pad), value=0))
            if any_mask:
                mask = p.attention_mask if p.attention_mask is not None else torch.ones_like(p.input_ids)
                masks.append(F.pad(mask, (0, pad), value=0))
        return TextTokens(torch.cat(ids), torch.cat(masks) if any_mask else None)


@dataclass
class EncoderOutput:
    """What `VisionLanguageModel.forward` returns (any field None when its input was None)."""

    image_emb: torch.Tensor | None  # [B, D] (unit unless normalize_image=False)
    text_emb: torch.Tensor | None  # [T, D] unit
    logit_scale: torch.Tensor  # scalar, with gradient when the scale is trained
    logit_bias: torch.Tensor | None = None  # scalar (SigLIP), else None
    image_features: torch.Tensor | None = None  # [B, N, W] vision hidden states (fusion families)
    extras: dict = field(default_factory=dict)  # family-specific (e.g. momentum embeddings)


class ImageTextModel(nn.Module):
    """What every model family shares: identity, pixels, tokens, training hooks, saving.

    Retrieval-style families (embeddings, ITM) subclass `VisionLanguageModel`; captioners
    subclass `CaptioningModel`.
    """

    family: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "retrieval" (VisionLanguageModel) or "captioning" (CaptioningModel): see KINDS

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # what the user asked for (name, folder, tiny twin)
        self.pretrained: str | None = None  # a pretrained tag / checkpoint, when there is one
        self.tiny_twin: str | None = None  # the tiny twin this model is (or was trained from)
        self.image_size: int = 224
        self.mean: tuple[float, ...] = (0.0, 0.0, 0.0)
        self.std: tuple[float, ...] = (1.0, 1.0, 1.0)
        self.context_length: int = 77
        self.preprocess_train: Callable[[Any], torch.Tensor] = _missing_transform
        self.preprocess_eval: Callable[[Any], torch.Tensor] = _missing_transform

    # -- identity ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def describe(self) -> dict:
        """Identity for reports and caches: family, name, pretrained tag."""
        return {"family": self.family, "name": self.name, "pretrained": self.pretrained, "tiny_twin": self.tiny_twin}

    # -- pixels -----------------------------------------------------------------------------

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        return (pixels - mean) / std

    # -- text -------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        raise NotImplementedError

    @contextlib.contextmanager
    def captions_as_given(self):
        """Within this block captions are tokenised as given, where the family first cleans them its own
        way (ALBEF's `pre_caption`): for a caller whose captions are already cleaned so (an evaluation
        under a reference protocol), so the texts an attack makes of them are read as the reference
        codes read them, never cleaned a second time. Families that never clean captions: no change."""
        yield

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(texts), normalize=normalize)

    def text_prefix_cache(self, references: Sequence[str], batch_size: int | None = None):
        """An object whose `encode(texts, owners, normalize, batch_size)` encodes texts that begin like
        `references[owners[i]]` faster than `encode_text` and equal to it up to float rounding
        (`models.text_prefix`; `batch_size` texts per forward pass), or None where the text tower has
        no such shortcut."""
        return None

    # -- patch embedding ---------------------------------------------------------------------

    @property
    def patch_matmul(self) -> bool:
        """Whether the vision tower's patch-embedding conv runs as a matmul over patches where an input
        gradient is wanted on CPU (`models/patch_embedding.py`: exact up to float rounding, 2.7-6x
        faster input gradients). `models.load_model` switches it on for every family; False = the conv
        as the library builds it. Setting it swaps the conv's class only: parameters and checkpoints are the same."""
        return uses_patch_matmul(self)

    @patch_matmul.setter
    def patch_matmul(self, enabled: bool) -> None:
        use_patch_matmul(self, bool(enabled))

    @property
    def batch_first_attention(self) -> bool:
        """Whether the model's `nn.MultiheadAttention` layers (open_clip's towers) compute attention in
        the batch-first layout they are called with (`models/multihead_attention.py`: no sequence-first
        copies; outputs and input gradients bit-identical to the library's module, weight gradients up to
        float summation order; on CPU a tiny-clip image tower's forward and input
        gradient 1.15x, its text tower without gradients 1.1-1.3x; with frozen weights one in-projection
        matmul instead of one per sequence position, 1.31x a frozen ViT-B-16's PGD step). `models.load_model`
        switches it on; False = the library's module.
        Setting it swaps the modules' class only: parameters and checkpoints are the same."""
        return uses_batch_first_attention(self)

    @batch_first_attention.setter
    def batch_first_attention(self, enabled: bool) -> None:
        use_batch_first_attention(self, bool(enabled))

    @property
    def class_token_vision(self) -> bool:
        """Whether open_clip ViTs that pool their class token run their last block at that token only
        (`models/pooled_block.py`: every token's keys and values, the class token's query, attention
        output and MLP; equal within float rounding, ~40% of a 2-block tower, ~7% of ViT-B-16's, forward
        and backward). `models.load_model` switches it on; False = open_clip's `Transformer`. Setting it
        swaps the transformer's class only: parameters and checkpoints are the same."""
        return uses_class_token_transformer(self)

    @class_token_vision.setter
    def class_token_vision(self, enabled: bool) -> None:
        use_class_token_transformer(self, bool(enabled))

    @contextlib.contextmanager
    def library_layers(self):
        """Within the block the model runs its layers as the libraries build them (`patch_matmul`,
        `batch_first_attention` and `class_token_vision` off): the baseline the benchmarks measure those
        switches against."""
        previous = self.patch_matmul, self.batch_first_attention, self.class_token_vision
        self.patch_matmul = self.batch_first_attention = self.class_token_vision = False
        try:
            yield self
        finally:
            self.patch_matmul, self.batch_first_attention, self.class_token_vision = previous

    # -- training hooks ---------------------------------------------------------------------

    def tower_parameters(self, tower: str) -> list[nn.Parameter]:
        """Parameters of the "image" or "text" tower (freezing; FARE's image-only training)."""
        raise NotImplementedError

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: no decay on gains, biases, norms, embeddings of scale/temperature, position
        embeddings. open_clip_train's rule (1-d parameters and named ones, and what a module declares
        in `no_weight_decay()`, as open_clip's and timm's models do), written here because that rule
        lives in its training script, not its library, and must also cover BLIP's and ALBEF's names."""
        declared = {f"{prefix}.{name}" if prefix else name for prefix, module in self.named_modules()
                    if callable(getattr(module, "no_weight_decay", None)) for name in module.no_weight_decay()}
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            exclude = param.ndim < 2 or name in declared or any(word in name for word in _NO_DECAY_WORDS)
            (no_decay if exclude else decay).append(param)
        return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (clamp the temperature, update momentum encoders)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them (`--grad-checkpointing`):
        less memory for the same gradients. Families implement it with their library's switch."""
        raise NotImplementedError(f"the {self.family or type(self).__name__} family has no gradient checkpointing")

    def frozen_copy(self) -> "ImageTextModel":
        """A deep copy with no gradients, in eval mode (FARE's reference model)."""
        import copy

        return copy.deepcopy(self).eval().requires_grad_(False)

    # -- saving -----------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the model in its family's native layout plus `matplus_model.json`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_native(folder)
        readable_as_umask(folder)  # safetensors writes its weights owner-only
        info = {**self.describe(), "kind": self.kind, "image_size": self.image_size, "format": 1}
        atomic_write_text(folder / MODEL_INFO_NAME, json.dumps(info, indent=2) + "\n")
        return folder

    def save_native(self, folder: Path) -> None:
        """Write the family's own files into `folder` (`load_model` reads them back through the family's `load`).
        Weights go in files named `*.safetensors` (every built-in family; never a pickle), `*.bin`,
        `*.pt` or `*.pth`: `augment score` digests a scorer folder's files and refuses one with none
        of these (it would score with whatever the family builds without weights)."""
        raise NotImplementedError

    @classmethod
    def can_load(cls, folder: Path) -> bool:
        """Whether `folder` holds this family's native layout (used when there is no matplus_model.json)."""
        return False


class VisionLanguageModel(ImageTextModel):
    """Retrieval-style families: ITC embeddings, and for fusion families ITM (and grounding)."""

    kind: ClassVar[str] = "retrieval"
    # capabilities consumers check instead of branching on the family
    has_itm: ClassVar[bool] = False  # image-text matching head (fusion encoder)
    itc_loss: ClassVar[str] = "softmax"  # "softmax" (CLIP InfoNCE) or "sigmoid" (SigLIP)
    has_grounding: ClassVar[bool] = False  # `grounding_heatmap` available (ALBEF)
    has_cls_states: ClassVar[bool] = False  # `image_cls_state` / `text_cls_state` available (ALBEF)

    # -- ITC embeddings ---------------------------------------------------------------------

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B, D] image embeddings of [0, 1] pixels (normalised inside)."""
        raise NotImplementedError

    def encode_tokens(self, tokens: TextTokens, normalize: bool = True) -> torch.Tensor:
        """[T, D] text embeddings."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        """The multiplier of cosine similarities (exp of the learnt log scale, or 1/temp), detached."""
        return self.logit_scale_param().detach()

    def logit_scale_param(self) -> torch.Tensor:
        """The same scale with its gradient (what losses use)."""
        raise NotImplementedError

    def logit_bias_param(self) -> torch.Tensor | None:
        return None

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """[B, T] logits: scale x cosine (+ bias)."""
        logits = self.logit_scale_param() * image_emb @ text_emb.T
        bias = self.logit_bias_param()
        return logits + bias if bias is not None else logits

    def forward(self, pixels: torch.Tensor | None = None, tokens: TextTokens | None = None,
                normalize_image: bool = True, image_features: bool = False) -> EncoderOutput:
        """The training forward: embeddings of whichever inputs are given.

        `image_features=True` also returns the vision hidden states (fusion families use them
        for the ITM loss inside the same forward).
        """
        image_emb = feats = None
        if pixels is not None:
            if image_features and self.has_itm:
                feats = self.image_features(pixels)
                image_emb = self.embed_image_features(feats, normalize=normalize_image)
            else:
                image_emb = self.encode_image(pixels, normalize=normalize_image)
        text_emb = self.encode_tokens(tokens) if tokens is not None else None
        return EncoderOutput(image_emb, text_emb, self.logit_scale_param(), self.logit_bias_param(), feats)

    def image_cls_state(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, W] the vision encoder's [CLS] output before the ITC projection (what the reference
        attack codes call `image_embed[:, 0]` on ALBEF/TCL)."""
        raise NotImplementedError(f"{self.family} does not expose its encoders' [CLS] states")

    def text_cls_state(self, tokens: TextTokens) -> torch.Tensor:
        """[T, W] the text encoder's [CLS] output before the ITC projection (`text_embed[:, 0]`)."""
        raise NotImplementedError(f"{self.family} does not expose its encoders' [CLS] states")

    def cls_state_widths(self) -> tuple[int, int]:
        """(image, text) widths of those [CLS] states."""
        raise NotImplementedError(f"{self.family} does not expose its encoders' [CLS] states")

    # -- fusion (ITM) -----------------------------------------------------------------------

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, N, W] vision hidden states of [0, 1] pixels (fusion families)."""
        raise NotImplementedError(f"{self.family} has no image-text matching head")

    def embed_image_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """ITC embedding from `image_features` output (projection of the [CLS] state)."""
        raise NotImplementedError(f"{self.family} has no image-text matching head")

    def itm_logits(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N] match logits (log-odds) of row-aligned (image, caption) pairs."""
        raise NotImplementedError(f"{self.family} has no image-text matching head")

    def itm_scores(self, pixels: torch.Tensor, texts: Sequence[str] | TextTokens) -> torch.Tensor:
        """[N] match probabilities of row-aligned pairs of [0, 1] pixels and captions."""
        tokens = texts if isinstance(texts, TextTokens) else self.tokenize(texts)
        return torch.sigmoid(self.itm_logits(self.image_features(pixels), tokens))

    # -- grounding (ALBEF) ------------------------------------------------------------------

    def grounding_heatmap(self, pixels: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[B, h, w] Grad-CAM heat of the ITM score over image patches (row-aligned pairs)."""
        raise NotImplementedError(f"{self.family} does not ground referring expressions")


class CaptioningModel(ImageTextModel):
    """Captioners (image -> text): a language-model loss of captions given pixels, and generation."""

    kind: ClassVar[str] = "captioning"

    def caption_loss(self, pixels: torch.Tensor, tokens: TextTokens, reduction: str = "mean") -> torch.Tensor:
        """LM loss (cross-entropy per token) of `tokens` given [0, 1] `pixels`, row-aligned.

        reduction "mean" -> scalar; "none" -> [B] per caption.
        """
        raise NotImplementedError

    def generate(self, pixels: torch.Tensor, max_new_tokens: int = 30, **kwargs) -> list[str]:
        """Captions of [0, 1] pixels (beam search by default; kwargs go to the generator)."""
        raise NotImplementedError


_NO_DECAY_WORDS = ("bn", "ln", "norm", "bias", "logit_scale", "logit_bias", "temp", "embeddings.position", "cls_token", "pos_embed",
                   "class_embedding")  # BLIP's ViT class token is [1, 1, D]: not caught by the 1-d rule


def _missing_transform(image: Any) -> torch.Tensor:
    raise NotImplementedError("this model has no image transform set")


# prefixes that only say how to read a name: `transformers:NAME` (models.hf_clip), `local-dir:FOLDER`
NAME_PREFIXES = ("transformers:", "local-dir:")


def bare_name(name: str) -> str:
    """`name` without the prefixes that only say how to read it: the tiny twin or folder it names."""
    for prefix in NAME_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def recorded_tiny_twin(folder: Path) -> str | None:
    """The tiny twin a model folder is, or was trained from: its `matplus_model.json`'s `tiny_twin`, else
    the twin whose `augment.tiny` manifest (`tiny.json`) it holds: `augment save-tiny DIR`'s folders and the
    tiny cache's, which have no matplus_model.json (tiny-albef's records none), were no twin (audit BG)."""
    from augment import tiny

    info = read_model_info(folder)
    if info and info.get("tiny_twin"):
        return info["tiny_twin"]
    name = (tiny.read_manifest(folder) or {}).get("name")
    return name if name in tiny.TINY_NAMES else None


def read_model_info(folder: Path) -> dict | None:
    """The folder's `matplus_model.json` (None without one); a damaged one is one line naming it."""
    from augment.errors import ModelLoadError
    from augment.json_records import DamagedRecord, read_json_object

    path = Path(folder) / MODEL_INFO_NAME
    if not path.is_file():
        return None
    try:
        info = read_json_object(path)
    except DamagedRecord as problem:
        raise ModelLoadError(f"{path}: damaged ({problem}); copy the model folder again or retrain it") from None
    family = info.get("family")
    if family is not None and not isinstance(family, str):  # a list was "TypeError: unhashable type" in load_model
        raise ModelLoadError(f"{path}: damaged ('family' must be a family name, got {json.dumps(family)[:40]}); "
                             "copy the model folder again or retrain it")
    return info

