"""The BLIP family: transformers `BlipForImageTextRetrieval` behind `VisionLanguageModel`.

Names: the Hub ids `Salesforce/blip-itm-{base,large}-{coco,flickr}` (aliases without the
`Salesforce/` prefix), any folder a `BlipForImageTextRetrieval` was saved into with
`save_pretrained` (with its processor), and the tiny twin `tiny-blip`.

What it computes, following BLIP's retrieval model (salesforce/BLIP models/blip_retrieval.py):

* ITC: `vision_proj` / `text_proj` of the [CLS] states of the vision transformer and of the text
  encoder in text-only mode, unit-normalised; logits = cosine / temperature. The temperature is a
  parameter of this wrapper (transformers' class has none), clamped to [0.001, 0.5] after each
  optimizer step as BLIP does, and saved in config.json as `itc_temperature` (transformers
  ignores the key). A checkpoint without it starts at BLIP's 0.07 (= exp(-logit_scale_init_value)).
* ITM: the text encoder cross-attends to the vision hidden states (`image_features`); the
  first token is BLIP's [ENC] (see `enc_token_id`); `itm_head` on its state gives two logits and
  `itm_logits` returns their difference, the log-odds of "match".
* Text: the model's BertTokenizer, at most 35 tokens as BLIP's retrieval, padded to the longest.
* Pixels: mean/std and size of the BlipImageProcessor config; train = RandomResizedCrop (scale
  0.5..1) + horizontal flip as BLIP's retrieval fine-tuning (without its RandAugment); eval =
  bicubic resize to size x size.

Saved with `save_pretrained` (model + processor), so `BlipForImageTextRetrieval.from_pretrained`
and `BlipProcessor.from_pretrained` read the folder back.
"""
from __future__ import annotations

import hashlib
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
from models.half_precision import score_head

ARCHITECTURE = "BlipForImageTextRetrieval"
HUB_IDS = (
    "Salesforce/blip-itm-base-coco",
    "Salesforce/blip-itm-base-flickr",
    "Salesforce/blip-itm-large-coco",
    "Salesforce/blip-itm-large-flickr",
)
ALIASES = {hub_id.split("/", 1)[1]: hub_id for hub_id in HUB_IDS}
TINY_BLIP = "tiny-blip"
TINY_NAMES = (TINY_BLIP,)

MAX_TEXT_TOKENS = 35  # BLIP's retrieval tokenizes captions to at most 35 tokens
TEMPERATURE_RANGE = (0.001, 0.5)  # BLIP clamps its ITC temperature to this range
TEMPERATURE_CONFIG_KEY = "itc_temperature"
TRAIN_CROP_SCALE = (0.5, 1.0)  # BLIP's retrieval fine-tuning: RandomResizedCrop(scale=(0.5, 1))
ENC_TOKEN = "[ENC]"
DEC_TOKEN = "[DEC]"

# tiny-blip: same class, 64 px, 2 layers per tower, width 64 (fingerprinted by augment.tiny)
TINY_VISION_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 16,
    # transformers' BLIP vision default (1e-10) leaves the class and position embeddings ~0, so the
    # [CLS] state of random weights is nearly the same for every image; 0.02 as the other weights
    "initializer_range": 0.02,
}
TINY_TEXT_CONFIG = {
    "hidden_size": 64,
    "encoder_hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": tiny.WORD_MAX_LENGTH,
}
TINY_EMBED_DIM = 64


class BlipRetrievalModel(tio.TransformersEncoderWrapped, VisionLanguageModel):
    """A transformers `BlipForImageTextRetrieval` with its processor and BLIP's ITC temperature."""

    family = "blip"
    has_itm = True
    itc_loss = "softmax"

    def __init__(self, model, processor, *, name: str, temperature: float, hflip: bool = True):
        super().__init__()
        self.model = model  # transformers' module (its state dict keys are transformers')
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name, self.pretrained = name, None
        low, high = TEMPERATURE_RANGE
        self.temp = nn.Parameter(torch.tensor(min(max(float(temperature), low), high), device=self.device))
        image_processor = processor.image_processor
        size = tio.processor_size(image_processor.size, "height", "shortest_edge")
        self.image_size = int(size or model.config.vision_config.image_size)
        self.mean = tuple(float(v) for v in image_processor.image_mean)
        self.std = tuple(float(v) for v in image_processor.image_std)
        self.context_length = min(MAX_TEXT_TOKENS, int(model.config.text_config.max_position_embeddings))
        self.enc_token_id = enc_token_id(self.tokenizer, model.config.text_config)
        self.preprocess_train = tio.train_transform(self.image_size, TRAIN_CROP_SCALE, hflip=hflip)
        self.preprocess_eval = tio.square_resize_transform(self.image_size)

    def _text_states(self, tokens: TextTokens, **cross) -> torch.Tensor:
        tokens = tokens.to(self.device)
        return self.model.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       **cross).last_hidden_state

    # ITC
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        pixels = self.normalize(pixels.to(self.device)).to(vision.embeddings.patch_embedding.weight.dtype)
        return vision(pixel_values=pixels).last_hidden_state

    def embed_image_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        embedding = self.model.vision_proj(features[:, 0, :])
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.embed_image_features(self.image_features(pixels), normalize=normalize)

    def encode_tokens(self, tokens: TextTokens, normalize: bool = True) -> torch.Tensor:
        embedding = self.model.text_proj(self._text_states(tokens)[:, 0, :])
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def logit_scale_param(self) -> torch.Tensor:
        return 1.0 / self.temp

    # ITM
    def itm_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The ids the ITM pass reads: the first ([CLS]) replaced by [ENC] when the model has one."""
        if self.enc_token_id is None:
            return input_ids
        ids = input_ids.clone()
        ids[:, 0] = self.enc_token_id
        return ids

    def itm_pair_logits(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N, 2] the ITM head's (no match, match) logits of row-aligned pairs, in float32 under autocast too
        (`score_head`)."""
        if image_features.shape[0] != len(tokens):
            raise ValueError(f"ITM takes row-aligned pairs: {image_features.shape[0]} images, "
                             f"{len(tokens)} captions")
        tokens = tokens.to(self.device)
        ids = TextTokens(self.itm_input_ids(tokens.input_ids), tokens.attention_mask)
        image_mask = torch.ones(image_features.shape[:-1], dtype=torch.long, device=image_features.device)
        states = self._text_states(ids, encoder_hidden_states=image_features, encoder_attention_mask=image_mask)
        return score_head(self.model.itm_head, states[:, 0, :])

    def itm_logits(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        logits = self.itm_pair_logits(image_features, tokens)
        return logits[:, 1] - logits[:, 0]  # log-odds: sigmoid of it = softmax(logits)[:, 1]

    # BLIP's (and LAVIS's) retrieval evaluation re-ranks its top k by the raw "match" logit plus
    # the ITC similarity (`score + topk_sim`): `tasks.retrieval.rerank_scores` adds the latter
    rerank_adds_itc = True

    def itm_rerank_scores(self, image_features: torch.Tensor, tokens: TextTokens) -> torch.Tensor:
        """[N] the raw "match" logit BLIP re-ranks by (the caller adds the ITC similarity)."""
        return self.itm_pair_logits(image_features, tokens)[:, 1]

    # training hooks
    def tower_parameters(self, tower: str) -> list[nn.Parameter]:
        if tower == "image":
            return [*self.model.vision_model.parameters(), *self.model.vision_proj.parameters()]
        if tower == "text":  # the text encoder holds the cross-attention (fusion) layers too
            return [p for n, p in self.model.named_parameters() if not n.startswith(("vision_model.", "vision_proj."))]
        raise ValueError(f"unknown tower {tower!r}; expected 'image' or 'text'")

    def after_optimizer_step(self) -> None:
        with torch.no_grad():
            self.temp.clamp_(*TEMPERATURE_RANGE)

    # saving
    def save_native(self, folder: Path) -> None:
        setattr(self.model.config, TEMPERATURE_CONFIG_KEY, float(self.temp.detach()))
        tio.save_pretrained_all_or_nothing(folder, self.model, self.processor)

    @classmethod
    def can_load(cls, folder: Path) -> bool:
        return ARCHITECTURE in tio.folder_architectures(folder)


def enc_token_id(tokenizer, text_config) -> int | None:
    """BLIP's [ENC] id, which starts the text of every ITM pass in BLIP (salesforce/BLIP).

    BLIP's tokenizer is bert-base-uncased plus [DEC] (= the text config's bos_token_id) and then
    [ENC]. A tokenizer that knows [ENC] gives it; the Hub's converted tokenizers may lack it, but
    their embedding table keeps BLIP's layout (vocab_size = [DEC] + 2), so [ENC] = [DEC] + 1.
    None otherwise: the ITM pass keeps [CLS] as transformers' own forward does.
    """
    found = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    if isinstance(found, int) and found != tokenizer.unk_token_id and found < text_config.vocab_size:
        return found
    dec = getattr(text_config, "bos_token_id", None)
    if isinstance(dec, int) and dec >= len(tokenizer) - 1 and text_config.vocab_size == dec + 2:
        return dec + 1
    return None


def claims_name(name: str, pretrained: str | None = None) -> bool:
    """BLIP's Hub ids and aliases are BLIP's even offline and uncached (so the message says so)."""
    return name in HUB_IDS or name in ALIASES


def load(name: str, pretrained: str | None = None, device: Any = "cpu", precision: str = "fp32", *,
         revision: str | None = None, hflip: bool = True, display_name: str | None = None) -> BlipRetrievalModel:
    """Load a BLIP retrieval model by any accepted name (module docstring); eval mode on `device`.

    `hflip=False` drops the horizontal flip from the train transform (captions naming left and right).
    """
    if pretrained:
        raise ModelLoadError(f"BLIP model '{name}' takes no pretrained tag (got '{pretrained}'); "
                             f"name a Hub id or a folder")
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    model, processor = tio.load_pretrained(name, BlipForImageTextRetrieval, BlipProcessor, family="BLIP",
                                           architecture=ARCHITECTURE, tiny_names=TINY_NAMES, aliases=ALIASES,
                                           precision=precision, revision=revision)
    model = model.to(device)
    temperature = getattr(model.config, TEMPERATURE_CONFIG_KEY, None)
    if temperature is None:  # a checkpoint we did not save: BLIP's initial temperature
        temperature = math.exp(-float(model.config.logit_scale_init_value))
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        temperature = math.nan
    if not math.isfinite(temperature) or temperature <= 0:  # a hand edit, or a diverged run saved it: NaN scores
        raise ModelLoadError(f"cannot load BLIP '{display_name or name}': its config.json's {TEMPERATURE_CONFIG_KEY} "
                             f"is {getattr(model.config, TEMPERATURE_CONFIG_KEY)!r}, not a positive number")
    wrapped = BlipRetrievalModel(model, processor, name=display_name or name, temperature=temperature,
                                 hflip=hflip)
    return wrapped.eval()


# ---------------------------------------------------------------------------------------------
# tiny-blip
# ---------------------------------------------------------------------------------------------


def build_tiny(name: str, out_dir: Path) -> None:
    """Write tiny-blip with save_pretrained (seeded by the caller): BLIP's layout of the tiny word
    vocabulary ([DEC] then [ENC] appended, as BLIP's tokenizer), random weights."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    if name not in TINY_NAMES:
        raise ModelLoadError(f"'{name}' is not a BLIP twin ({', '.join(TINY_NAMES)})")
    tokenizer = tiny.build_word_tokenizer(out_dir)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN, "additional_special_tokens": [ENC_TOKEN]})
    text_config = dict(TINY_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       pad_token_id=tiny.PAD_ID, sep_token_id=tiny.SEP_ID, eos_token_id=tiny.SEP_ID)
    config = BlipConfig(text_config=text_config, vision_config=dict(TINY_VISION_CONFIG),
                        image_text_hidden_size=TINY_EMBED_DIM, projection_dim=TINY_EMBED_DIM)
    model = BlipForImageTextRetrieval(config)
    size = TINY_VISION_CONFIG["image_size"]
    image_processor = BlipImageProcessor(size={"height": size, "width": size},
                                         image_mean=list(tiny.OPENAI_MEAN), image_std=list(tiny.OPENAI_STD))
    model.save_pretrained(str(out_dir))
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))


def tiny_config(name: str) -> dict:
    """What tiny-blip's fingerprint hashes."""
    return {"vision": TINY_VISION_CONFIG, "text": TINY_TEXT_CONFIG, "embed_dim": TINY_EMBED_DIM,
            "special_tokens": [DEC_TOKEN, ENC_TOKEN],
            "word_vocabulary_sha256": hashlib.sha256("\n".join(tiny.word_vocabulary()).encode("utf-8")).hexdigest()}


MODEL_CLASS = BlipRetrievalModel
