"""The captioner family: transformers image-to-text models behind `CaptioningModel`.

Names: anything `augment.registry.load_captioner` takes whose architecture this module knows
(`SUPPORTED_ARCHITECTURES`): `Salesforce/blip-image-captioning-base` / `-large` (aliases
`blip`, `blip-large`), a folder holding such a model (what training writes), and the tiny twin
`tiny-captioner`. Saved with transformers' own `save_pretrained` (model and processor), so
`BlipForConditionalGeneration.from_pretrained(FOLDER)` reads a trained checkpoint back.

Conventions (as every family, see `models.base`): pixels are [0, 1] at `image_size`; the
processor's mean/std are applied inside. Captions are fed as the BLIP reference code feeds them
to its decoder: the first token ([CLS]) becomes the decoder's bos ([DEC]), padding and an
optional text prompt ("a picture of ") are excluded from the loss. Unlike BLIP's caption
datasets, captions are not passed through `pre_caption` first (lower-casing, dropping
`.!"()*#:;~`, 30 words at most): a trailing "." stays a target of the loss (the metrics drop it).
Generated captions are decoded with BLIP's clean-up of word-piece spaces ("man's", not "man ' s").

The loss is the plain token cross-entropy (BLIP fine-tunes with label smoothing 0.1; attacks and
evaluation want the model's actual likelihood, and one loss for training and attacking keeps
MAT's inner and outer problems the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from augment.errors import ModelLoadError
from models import transformers_io as tio
from models.base import CaptioningModel, TextTokens

# transformers architectures whose caption loss and generation this wrapper implements
SUPPORTED_ARCHITECTURES = ("BlipForConditionalGeneration",)
# BLIP's COCO captioning evaluation (configs/caption_coco.yaml): beam 3, 20 tokens at most, 5 at least
DEFAULT_GENERATION = {"num_beams": 3, "max_length": 20, "min_length": 5}
# BLIP's captioning code (BLIP_Decoder.forward) tokenizes prompt + caption to at most 40 tokens for
# the LM loss it trains with: the loss here (training, attacks, reference losses) reads the same
MAX_CAPTION_TOKENS = 40
# registry aliases that name captioners (`family_of` would otherwise hand them to open_clip)
CAPTIONER_ALIASES = ("blip", "blip-base", "blip-large")
# at least this share of a randomly cropped image is kept (open_clip's default); no flips: captions
# name left and right
TRAIN_CROP_SCALE = (0.9, 1.0)


@dataclass
class CaptionTokens(TextTokens):
    """Tokens of (prompt +) caption; `prompt_lengths` [T]: leading tokens (bos + prompt) left out of the loss."""

    prompt_lengths: torch.Tensor | None = None

    def to(self, device: Any) -> "CaptionTokens":
        moved = super().to(device)
        lengths = self.prompt_lengths.to(device) if self.prompt_lengths is not None else None
        return CaptionTokens(moved.input_ids, moved.attention_mask, lengths)

    def __getitem__(self, index: Any) -> "CaptionTokens":
        part = super().__getitem__(index)
        lengths = self.prompt_lengths[index] if self.prompt_lengths is not None else None
        return CaptionTokens(part.input_ids, part.attention_mask, lengths)

    @staticmethod
    def cat(parts: Sequence[TextTokens]) -> "CaptionTokens":
        joined = TextTokens.cat(parts)
        lengths = [p.prompt_lengths if isinstance(p, CaptionTokens) and p.prompt_lengths is not None
                   else torch.ones(len(p), dtype=torch.long, device=p.input_ids.device) for p in parts]
        return CaptionTokens(joined.input_ids, joined.attention_mask, torch.cat(lengths))


class HFCaptioner(tio.TransformersWrapped, CaptioningModel):
    """A transformers image-to-text model (BLIP captioning) and its processor."""

    family = "captioner"

    def __init__(self, model, processor, *, name: str, pretrained: str | None = None, prompt: str | None = None):
        super().__init__()
        architecture = type(model).__name__
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"cannot use '{name}' as a captioner: {architecture} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name, self.pretrained = name, pretrained
        self.prompt = prompt or None
        image_processor = processor.image_processor
        self.image_size = _square_size(image_processor.size)
        self.mean = tuple(float(v) for v in image_processor.image_mean)
        self.std = tuple(float(v) for v in image_processor.image_std)
        text_config = model.config.text_config
        self.bos_id = int(text_config.bos_token_id)
        self.pad_id = int(text_config.pad_token_id)
        self.context_length = int(min(text_config.max_position_embeddings, self.tokenizer.model_max_length or 512,
                                      MAX_CAPTION_TOKENS))
        self.preprocess_train, self.preprocess_eval = _transforms(self.image_size)

    def describe(self) -> dict:
        return {**super().describe(), "prompt": self.prompt, "architecture": type(self.model).__name__}

    # text -------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], prompts: Sequence[str] | str | None = None) -> CaptionTokens:
        """(prompt +) caption -> decoder tokens; `prompts` default to the model's prompt (or none)."""
        texts = [str(t) for t in texts]
        prompts = self._prompts_for(prompts, len(texts), "captions")
        full = [_join_prompt(p, t) for p, t in zip(prompts, texts)]
        encoded = self.tokenizer(full, padding="longest", truncation=True, max_length=self.context_length,
                                 return_tensors="pt")
        ids = encoded["input_ids"].clone()
        ids[:, 0] = self.bos_id  # BLIP: [CLS] -> [DEC]
        lengths = torch.tensor([self._prompt_length(p) for p in prompts], dtype=torch.long)
        return CaptionTokens(ids, encoded["attention_mask"], lengths).to(self.device)

    def _prompts_for(self, prompts: Sequence[str] | str | None, count: int, rows: str) -> list[str]:
        """One prompt ("" for none) per row of `count` `rows`: the model's prompt by default, one string for all;
        a list of another length is refused (paired with zip, it dropped the rows past the shorter one)."""
        if prompts is None or isinstance(prompts, str):
            prompts = [prompts if isinstance(prompts, str) else (self.prompt or "")] * count
        prompts = [p or "" for p in prompts]
        if len(prompts) != count:
            raise ValueError(f"{len(prompts)} prompts for {count} {rows}")
        return prompts

    def _prompt_length(self, prompt: str) -> int:
        """Tokens before the caption: bos plus the prompt's tokens (BLIP: len(tokenize(prompt)) - 1)."""
        if not prompt:
            return 1
        return len(self.tokenizer(prompt.strip(), truncation=True, max_length=self.context_length)["input_ids"]) - 1

    # the loss ---------------------------------------------------------------------------------

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's hidden states of [0, 1] pixels, which the decoder cross-attends to."""
        return self.model.vision_model(pixel_values=self.normalize(pixels.to(self.device, self._dtype))).last_hidden_state

    def caption_loss(self, pixels: torch.Tensor | None, tokens: TextTokens, reduction: str = "mean", *,
                     rows: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Mean token cross-entropy of each caption given its image; "none" -> [B].

        Row-aligned, or caption i given image `rows[i]` of `pixels` (or of `features`, the images'
        `image_features` computed once): the vision tower then runs once per image, not once per
        caption (an image's references, a text attack's candidates).
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'none'")
        tokens = tokens.to(self.device)
        mask = tokens.attention_mask if tokens.attention_mask is not None else torch.ones_like(tokens.input_ids)
        if features is None and rows is None:
            pixel_values = self.normalize(pixels.to(self.device, self._dtype))
            logits = self.model(pixel_values=pixel_values, input_ids=tokens.input_ids, attention_mask=mask).logits
        else:
            features = self.image_features(pixels) if features is None else features
            if rows is not None:
                features = features[torch.as_tensor(rows, device=features.device)]
            logits = self.model.text_decoder(input_ids=tokens.input_ids, attention_mask=mask,
                                             encoder_hidden_states=features).logits
        targets = tokens.input_ids[:, 1:]
        keep = mask[:, 1:].bool()
        lengths = getattr(tokens, "prompt_lengths", None)
        if lengths is None and self.prompt:  # plain TextTokens (e.g. joined by TextTokens.cat): the model's prompt
            lengths = torch.full((len(targets),), self._prompt_length(self.prompt), device=targets.device)
        if lengths is not None:  # the prompt is given, not predicted
            positions = torch.arange(1, tokens.input_ids.shape[1], device=targets.device)
            keep &= positions[None, :] >= lengths.to(targets.device)[:, None]
        per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
        per_caption = (per_token * keep).sum(1) / keep.sum(1).clamp(min=1)
        return per_caption.mean() if reduction == "mean" else per_caption

    def forward(self, pixels: torch.Tensor, tokens: TextTokens, reduction: str = "mean") -> torch.Tensor:
        return self.caption_loss(pixels, tokens, reduction)

    # generation -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, max_new_tokens: int | None = None, *,
                 prompts: Sequence[str] | str | None = None, **kwargs) -> list[str]:
        """Captions of [0, 1] pixels: beam search 3, at most 20 and at least 5 tokens (BLIP's COCO
        setting, prompt included) unless `kwargs` say otherwise (`max_new_tokens` replaces
        `max_length`). The prompt (default: the model's) is fed to the decoder and left out of the
        returned caption. Rows with different prompts are generated group by group."""
        settings = dict(DEFAULT_GENERATION)
        if max_new_tokens is not None:
            settings.pop("max_length")
            settings["max_new_tokens"] = int(max_new_tokens)
        settings.update(kwargs)
        count = len(pixels)
        prompts = self._prompts_for(prompts, count, "images")
        pixel_values = self.normalize(pixels.to(self.device, self._dtype))
        captions: list[str] = [""] * count
        for prompt in dict.fromkeys(prompts):
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            input_ids = None
            if prompt:
                input_ids = self.tokenizer([prompt.strip()] * len(rows), return_tensors="pt")["input_ids"].to(self.device)
            out = self.model.generate(pixel_values=pixel_values[rows], input_ids=input_ids, **settings)
            start = self._prompt_length(prompt)  # generated ids start with bos + the prompt
            texts = decode_captions(self.tokenizer, out[:, start:])
            for row, text in zip(rows, texts):
                captions[row] = " ".join(text.split())
        return captions

    # training hooks ---------------------------------------------------------------------------

    def tower_parameters(self, tower: str) -> list[torch.nn.Parameter]:
        if tower == "image":
            return list(self.model.vision_model.parameters())
        if tower == "text":
            return list(self.model.text_decoder.parameters())
        raise ValueError(f"unknown tower {tower!r}; expected 'image' or 'text'")

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # saving -----------------------------------------------------------------------------------

    def save_native(self, folder: Path) -> None:
        # as BLIP's and transformers CLIP's: all files or none, and no progress bar per checkpoint
        from models.transformers_io import save_pretrained_all_or_nothing

        save_pretrained_all_or_nothing(folder, self.model, self.processor)

    @classmethod
    def can_load(cls, folder: Path) -> bool:
        config = Path(folder) / "config.json"
        if not config.is_file():
            return False
        import json

        try:
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        except ValueError:
            return False
        return any(a in SUPPORTED_ARCHITECTURES for a in architectures)


def decode_captions(tokenizer, ids) -> list[str]:
    """Generated ids as caption texts, special tokens left out. `tokenizer`: a tokenizer or a
    processor (anything with transformers' `batch_decode`). With the tokenization clean-up (BLIP's
    decode, transformers 4.x's default, off by default since 5): "man ' s" -> "man's", which the
    PTB tokenizer of the metrics splits as the references' "man 's"; without it it never matches.
    Shared with the `i2t-<model>` pool generator, so its captions read as this model's do."""
    return tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def _join_prompt(prompt: str, caption: str) -> str:
    if not prompt:
        return caption
    return prompt if not caption else f"{prompt.rstrip()} {caption.lstrip()}"


def _square_size(size) -> int:
    if hasattr(size, "height") or isinstance(size, dict):  # transformers' SizeDict or a plain dict
        get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
        values = {int(get(k)) for k in ("height", "width", "shortest_edge") if get(k) is not None}
    elif isinstance(size, (tuple, list)):
        values = {int(v) for v in size}
    else:
        values = {int(size)}
    if len(values) != 1:
        raise ModelLoadError(f"non-square captioner image size {size} is not supported")
    return values.pop()


def _transforms(size: int):
    """(train, eval) PIL -> [0, 1] tensors at `size`: BLIP's bicubic square resize at eval; a mild
    random-resized crop and no flip in training (captions name left and right)."""
    return (tio.train_transform(size, scale=TRAIN_CROP_SCALE, hflip=False),
            tio.square_resize_transform(size))


def load(name: str, pretrained: str | None = None, device: Any = "cpu", precision: str = "fp32", *,
         prompt: str | None = None, revision: str | None = None, display_name: str | None = None,
         **_: Any) -> HFCaptioner:
    """Load a captioner by any name `registry.load_captioner` takes; eval mode on `device`.

    `prompt`: text the decoder starts from (BLIP's COCO setting is "a picture of "); a folder
    that training saved keeps the prompt it was trained with unless one is given.
    """
    from augment.registry import load_captioner
    from models.base import read_model_info

    if pretrained:  # an open_clip tag: it was accepted, recorded (summary.json, eval.json) and never read
        raise ModelLoadError(f"captioner '{name}' takes no pretrained tag (got '{pretrained}'); "
                             "name a Hub id or a folder")
    folder = Path(str(name).removeprefix("local-dir:")).expanduser()
    info = read_model_info(folder) if folder.is_dir() else None
    if prompt is None and info:
        prompt = info.get("prompt")
    source = str(folder) if folder.is_dir() else name
    model, processor = load_captioner(source, device=device, dtype=precision, revision=revision)
    return HFCaptioner(model, processor, name=display_name or name, pretrained=pretrained, prompt=prompt).eval()


def claims_name(name: str, pretrained: str | None = None) -> bool:
    """Registry aliases of captioners (`blip`, `blip-large`)."""
    return name in CAPTIONER_ALIASES


MODEL_CLASS = HFCaptioner
