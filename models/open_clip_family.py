"""The open_clip family: CLIP and SigLIP models from open_clip, behind `VisionLanguageModel`.

Names: an open_clip architecture with a pretrained tag (`ViT-B-16` + `openai`), `hf-hub:org/repo`,
`local-dir:PATH` or a folder holding `open_clip_config.json` (what training writes), and the tiny
twins `tiny-clip` / `tiny-siglip`. SigLIP is any open_clip model with a logit bias: its retrieval
loss is the sigmoid loss (`itc_loss = "sigmoid"`, decided per instance).
Saved in open_clip's local-dir layout, so `open_clip.create_model("local-dir:FOLDER")` loads it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from augment import tiny
from augment.atomic import atomic_write_text, temporary_path
from augment.errors import ModelLoadError
from augment.registry import (
    ALIASES,
    DEFAULT_MODELS,
    _check_hub_id,
    _looks_like_path,
    _offline_message,
    _translated_errors,
    is_offline,
)
from models.base import TextTokens, VisionLanguageModel
from models.length_groups import in_input_order, pass_overhead, sorted_length_groups
from models.pooled_block import plain_block_stack, run_to_pooled

log = logging.getLogger(__name__)

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
# the transformers config of a Hugging Face text tower (text_cfg.hf_model_name), which open_clip builds it from
OPEN_CLIP_TEXT_CONFIG_NAME = "open_clip_text_config.json"
TINY_NAMES = (tiny.TINY_CLIP, tiny.TINY_SIGLIP)
WORD_CACHE_LIMIT = 1 << 20  # words whose token ids a model keeps (cleared when full)


class OpenClipModel(VisionLanguageModel):
    """An open_clip CLIP / CustomTextCLIP (SigLIP when it has a logit bias)."""

    family = "open_clip"
    # Text shortcuts, both exact (tests/test_model_contract.py checks them against open_clip): the
    # text tower runs each text up to its pooled token only (`_encode_trimmed`), and captions are
    # tokenised from per-word token ids (`_tokenize_by_word`). False = open_clip's tokenizer and
    # full-context `encode_text` (what `bench attacks` / `bench trainer` time as the code before them).
    fast_text = True

    def __init__(self, model, tokenizer, *, name: str, pretrained: str | None, preprocess_train, preprocess_eval,
                 model_cfg: dict, preprocess_cfg: dict):
        super().__init__()
        self.model = model  # the open_clip module (its state dict keys are open_clip's)
        self.tokenizer = tokenizer
        self.name, self.pretrained = name, pretrained
        self.model_cfg, self.preprocess_cfg = model_cfg, preprocess_cfg
        self.image_size = _square_size(preprocess_cfg["size"])
        self.mean = tuple(float(v) for v in preprocess_cfg["mean"])
        self.std = tuple(float(v) for v in preprocess_cfg["std"])
        self.preprocess_train, self.preprocess_eval = preprocess_train, preprocess_eval
        context = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", None)
        self.context_length = int(context)
        self._word_ids: dict[str, list[int]] = {}  # word -> its token ids (see `_tokenize_by_word`)

    @property
    def itc_loss(self) -> str:  # type: ignore[override]
        return "sigmoid" if getattr(self.model, "logit_bias", None) is not None else "softmax"

    def describe(self) -> dict:
        return {**super().describe(), "itc_loss": self.itc_loss}

    # text
    def tokenize(self, texts: Sequence[str]) -> TextTokens:
        texts = list(texts)
        ids = self._tokenize_by_word(texts) if self.fast_text else None
        return TextTokens((self.tokenizer(texts) if ids is None else ids).to(self.device))

    def _tokenize_by_word(self, texts: list[str]) -> torch.Tensor | None:
        """open_clip's `SimpleTokenizer(texts)`, from cached token ids per word; None for other tokenizers.

        The tokenizer cleans a text (ftfy, HTML unescaping, whitespace, case) and splits it with a
        regex whose pieces never span whitespace. For a printable-ASCII text without `&` the
        cleaning acts within words (ftfy changes no printable ASCII, there is nothing to unescape,
        and whitespace is only collapsed), so the text's ids are its words' ids in order. Other
        texts take the tokenizer's own path: ftfy unescapes HTML only in a text without `<` (a
        whole-text property), and drops control characters that `str.split` takes for spaces. Text
        attacks tokenise thousands of candidates that differ in one word: ftfy and the regex on
        each were a quarter of their time.
        """
        from open_clip.tokenizer import SimpleTokenizer, _clean_canonicalize, _clean_lower, _clean_whitespace

        tokenizer = self.tokenizer
        if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.reduction_fn is not None \
                or tokenizer.clean_fn not in (_clean_lower, _clean_whitespace, _clean_canonicalize):
            return None
        if len(self._word_ids) > WORD_CACHE_LIMIT:
            self._word_ids.clear()
        context, sot, eot = tokenizer.context_length, tokenizer.sot_token_id, tokenizer.eot_token_id
        word_ids = self._word_ids
        # 0 pads, as SimpleTokenizer; rows filled in place (half the time of padded lists to torch.tensor)
        out = np.zeros((len(texts), context), dtype=np.int64)
        for row, text in enumerate(texts):
            if text.isascii() and text.isprintable() and "&" not in text:
                ids = [sot]
                for word in text.split():
                    cached = word_ids.get(word)
                    if cached is None:
                        cached = word_ids[word] = tokenizer.encode(word)
                    ids += cached
                ids.append(eot)
            else:
                ids = [sot, *tokenizer.encode(text), eot]
            if len(ids) > context:  # as SimpleTokenizer: cut, and end on the end-of-text token
                ids = ids[:context]
                ids[-1] = eot
            out[row, :len(ids)] = ids
        return torch.from_numpy(out)

    # embeddings
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.model.encode_image(self.normalize(pixels.to(self.device)), normalize=normalize)

    def encode_tokens(self, tokens: TextTokens, normalize: bool = True) -> torch.Tensor:
        ids = tokens.input_ids.to(self.device)
        features = self._encode_trimmed(ids) if self.fast_text else None
        if features is None:
            return self.model.encode_text(ids, normalize=normalize)
        return torch.nn.functional.normalize(features, dim=-1) if normalize else features

    def _encode_trimmed(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """open_clip's `CLIP.encode_text` (unnormalised) on each text's tokens up to its pooled token only.

        CLIP's text transformer is causal and pools one token per text (the end-of-text token:
        the largest id, `argmax`, or `eos`), so the padding after it cannot change the embedding:
        cutting it is exact and makes the text tower several times cheaper for captions (~15 of
        77 tokens). Texts run in sub-batches of similar length (`length_groups`), each cut after
        its longest text. Text attacks encode thousands of candidates, so this is where their
        time goes. None where that does not hold: no causal mask (SigLIP-style towers), pooling
        at the first/last token or over all tokens, and other text towers (`CustomTextCLIP`).
        """
        if not self._causal_end_pooled() or tokens.dim() != 2 or len(tokens) == 0:  # no texts: open_clip's (0, D)
            return None
        pooled = self._pooled_positions(tokens)
        order, sorted_lengths, groups = sorted_length_groups(pooled + 1, overhead=pass_overhead(tokens.device))
        if len(groups) == 1:
            return self._text_tower(tokens[:, :sorted_lengths[-1]], pooled)
        parts = [self._text_tower(tokens[order[start:end], :sorted_lengths[end - 1]], pooled[order[start:end]])
                 for start, end in groups]
        return in_input_order(parts, order)

    def _causal_end_pooled(self) -> bool:
        """Whether the text tower is open_clip's causal one pooled at the end-of-text token (`argmax`
        or `eos`): then nothing after a text's pooled token changes its embedding."""
        model = self.model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_pool_type")
        if not all(hasattr(model, n) for n in needed) or model.attn_mask is None:
            return False
        return model.text_pool_type == "argmax" or (
            model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is not None)

    def _pooled_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N] each text's end-of-text position, where a `_causal_end_pooled` tower pools."""
        if self.model.text_pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.model.text_eos_id).int().argmax(dim=-1)  # as open_clip's text_global_pool

    def text_prefix_cache(self, references: Sequence[str], batch_size: int | None = None):
        """A `models.text_prefix.TextPrefixCache` of `references` (texts that later texts begin like), or
        None where it would not be exact: the text shortcuts off (`fast_text`), a tower `_encode_trimmed`
        does not cut, blocks other than plain `nn.MultiheadAttention` ones, dropout in effect; and for
        no references. `batch_size`: texts per forward pass (default: all). Inference only (no
        gradients flow through it)."""
        from models.text_prefix import TextPrefixCache

        if not references or not self.fast_text or not self._causal_end_pooled():
            return None
        transformer = self.model.transformer
        if not plain_block_stack(transformer) or (transformer.training and any(
                b.attn.dropout > 0 for b in transformer.resblocks)):
            return None
        if any(not b.attn._qkv_same_embed_dim or b.attn.bias_k is not None or b.attn.add_zero_attn
               for b in transformer.resblocks):
            return None
        return TextPrefixCache(self, self._causal_text_tower(), references, batch_size)

    def _causal_text_tower(self):
        """The text tower as `models.text_prefix.CausalTextTower` reads it (open_clip's module names)."""
        from models.text_prefix import CausalBlock, CausalTextTower

        model = self.model
        cast_dtype = model.transformer.get_cast_dtype()

        def embed(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return (model.token_embedding(tokens).to(cast_dtype)
                    + model.positional_embedding.index_select(0, positions).to(cast_dtype))

        def finish(x: torch.Tensor) -> torch.Tensor:
            return self._project_text(model.ln_final(x))

        blocks = [CausalBlock(ln_1=b.ln_1, qkv_weight=b.attn.in_proj_weight, qkv_bias=b.attn.in_proj_bias,
                              heads=b.attn.num_heads, out_weight=b.attn.out_proj.weight, out_bias=b.attn.out_proj.bias,
                              ln_2=b.ln_2, mlp=b.mlp, ls_1=b.ls_1, ls_2=b.ls_2)
                  for b in model.transformer.resblocks]
        return CausalTextTower(embed=embed, blocks=blocks, finish=finish)

    def _text_tower(self, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """`CLIP.encode_text`'s steps on `tokens` [N, L] (L <= the context), pooled at `pooled` [N].

        The last block runs for the pooled token only (`models.pooled_block.run_to_pooled`): nothing after it reads the
        other positions' outputs."""
        model = self.model
        length = tokens.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        mask = model.attn_mask[:length, :length]
        transformer = model.transformer
        if plain_block_stack(transformer):
            x = model.ln_final(run_to_pooled(transformer, x, pooled, attn_mask=mask))
        else:
            x = model.ln_final(transformer(x, attn_mask=mask))
            x = x[torch.arange(x.shape[0], device=x.device), pooled]
        return self._project_text(x)

    def _project_text(self, x: torch.Tensor) -> torch.Tensor:
        """The text projection of pooled, normed rows [N, width] (a Linear, a matrix, or none)."""
        projection = self.model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection

    def logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def logit_bias_param(self) -> torch.Tensor | None:
        return getattr(self.model, "logit_bias", None)

    # training hooks
    def tower_parameters(self, tower: str) -> list[torch.nn.Parameter]:
        if tower == "image":
            return list(self.model.visual.parameters())
        if tower == "text":  # everything outside the vision tower and the scale/bias (CLIP and CustomTextCLIP)
            return [p for n, p in self.model.named_parameters() if not n.startswith(("visual.", "logit_"))]
        raise ValueError(f"unknown tower {tower!r}; expected 'image' or 'text'")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)  # open_clip's own switch (both towers)

    def after_optimizer_step(self) -> None:
        if self.itc_loss == "sigmoid":
            # SigLIP: no clamp, as big_vision. Released SigLIPs learned scales above 100 (112 for
            # SO400M-14), which open_clip_train's clamp would cut at the first step, against the learnt bias
            return
        with torch.no_grad():  # as CLIP and open_clip: temperature no lower than 1/100
            self.model.logit_scale.clamp_(0, math.log(100))

    # saving
    def save_native(self, folder: Path) -> None:
        save_clip_local_dir(self.model, folder, self.model_cfg, preprocess_cfg=self.preprocess_cfg,
                            tokenizer=self.tokenizer)

    @classmethod
    def can_load(cls, folder: Path) -> bool:
        return (Path(folder) / OPEN_CLIP_CONFIG_NAME).is_file()


def load(name: str, pretrained: str | None = None, device: Any = "cpu", precision: str = "fp32", *,
         cache_dir: str | None = None, display_name: str | None = None) -> OpenClipModel:
    """Load an open_clip model by any accepted name (module docstring); eval mode on `device`.

    `pretrained` is an open_clip tag (or a checkpoint file) and only used with a bare
    architecture name; `None` there gives random weights (with a warning).
    """
    tiny.register_open_clip_configs()
    model_name, tag, force_quick_gelu = _resolve_clip(name, pretrained, cache_dir)
    import open_clip

    checkpoint_file = _checkpoint_file(model_name, tag)
    with _translated_errors("clip", name if not pretrained else f"{name} {pretrained}"), \
            _with_saved_text_tower(model_name) as buildable_name:
        try:
            model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
                buildable_name, pretrained=tag, device=device, precision=precision,
                force_quick_gelu=force_quick_gelu, cache_dir=cache_dir,
            )
        except pickle.UnpicklingError as exc:  # torch's text is many lines and advises weights_only=False
            from models.checkpoint_files import pickle_refusal_error

            # a folder's (local-dir:, the Hub layout) weights file is open_clip's pick: the folder names it
            raise pickle_refusal_error(checkpoint_file or f"CLIP '{name}'", exc) from None
        model_cfg = open_clip.get_model_config(model_name) or {}  # the folder's own (its text model's name)
        tokenizer = _tokenizer(buildable_name, model_cfg, cache_dir)
    if force_quick_gelu:
        model_cfg["quick_gelu"] = True
    wrapped = OpenClipModel(
        model, tokenizer, name=display_name or name, pretrained=tag,
        preprocess_train=_without_normalize(preprocess_train), preprocess_eval=_without_normalize(preprocess_eval),
        model_cfg=model_cfg, preprocess_cfg=dict(model.visual.preprocess_cfg),
    )
    return wrapped.eval()


@contextlib.contextmanager
def _with_saved_text_tower(model_name: str):
    """`model_name`, or for a saved folder holding its Hugging Face text tower's config
    (`OPEN_CLIP_TEXT_CONFIG_NAME`), a temporary local-dir of links to the folder's files whose
    open_clip_config.json names that config as `text_cfg.hf_model_name`: open_clip builds such a tower from
    `AutoConfig.from_pretrained(hf_model_name)`, the Hub's or the model's folder's, never the saved folder's,
    so a copied checkpoint needed the Hub or a warm cache (audit BG). The folder's weights still fill the tower."""
    folder = Path(model_name.removeprefix("local-dir:"))
    text_config = folder / OPEN_CLIP_TEXT_CONFIG_NAME
    if not model_name.startswith("local-dir:") or not text_config.is_file():
        yield model_name
        return
    config = json.loads((folder / OPEN_CLIP_CONFIG_NAME).read_text(encoding="utf-8"))
    if not config["model_cfg"]["text_cfg"].get("hf_model_name"):
        yield model_name
        return
    with tempfile.TemporaryDirectory(prefix="matplus-open-clip-") as staging:
        staging = Path(staging)
        for path in folder.iterdir():
            if path.is_file() and path.name != OPEN_CLIP_CONFIG_NAME:
                (staging / path.name).symlink_to(path.resolve())
        config["model_cfg"]["text_cfg"]["hf_model_name"] = str(text_config.resolve())
        (staging / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(config), encoding="utf-8")
        yield f"local-dir:{staging}"


# text config (JSON) -> open_clip's tokenizer for it, where that is its own BPE tokenizer (see `_tokenizer`)
_SHARED_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(model_name: str, model_cfg: dict, cache_dir: str | None):
    """open_clip's tokenizer for `model_name` (`open_clip.get_tokenizer`), whose config is `model_cfg`
    (`open_clip.get_model_config`). Where open_clip picks it from the text config alone (a local
    folder, a built-in name other than SigLIP's) and picks its own BPE tokenizer, that is built once
    per text config and shared: building one reads the 49k-merge vocabulary (~0.12 s, half of
    loading tiny-clip), and a study or an evaluation of many runs loads dozens of checkpoints.
    Hugging Face tokenizers (`hf_tokenizer_name`, possibly a path inside the model's folder) and
    Hub configs are built each time, as open_clip does."""
    import open_clip

    # a built-in SigLIP's name picks its tokenizer; a Hub config may name a fallback tokenizer
    by_config = model_name.startswith("local-dir:") or (":" not in model_name and "siglip" not in model_name.lower())
    text_cfg = model_cfg.get("text_cfg")
    if not by_config or not isinstance(text_cfg, dict) or text_cfg.get("hf_tokenizer_name"):
        return open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    key = json.dumps(text_cfg, sort_keys=True)
    if key not in _SHARED_TOKENIZERS:
        _SHARED_TOKENIZERS[key] = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    return _SHARED_TOKENIZERS[key]


def _without_normalize(transform):
    """The same torchvision Compose minus its Normalize step (pixels stay in [0, 1])."""
    from torchvision.transforms import Compose, Normalize

    if not isinstance(transform, Compose):
        raise ModelLoadError(f"unexpected open_clip transform {type(transform).__name__}; cannot drop Normalize")
    kept = [t for t in transform.transforms if not isinstance(t, Normalize)]
    if len(kept) != len(transform.transforms) - 1:
        raise ModelLoadError("open_clip transform does not end in exactly one Normalize step")
    return Compose(kept)


def _square_size(size) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ModelLoadError(f"non-square CLIP image size {tuple(size)} is not supported")
        return int(size[0])
    return int(size)


def _open_clip_arch(name: str) -> str | None:
    import open_clip

    cleaned = name.replace("/", "-")  # open_clip accepts "ViT-B/16" for "ViT-B-16"
    return cleaned if cleaned in open_clip.list_models() else None


def _check_pretrained_tag_cached(arch: str, tag: str, display: str, cache_dir: str | None) -> dict:
    """Pretrained config of (arch, tag); offline, fail now unless its weights are cached.

    open_clip downloads tags from the Hub or, for URL-only tags, with urllib (which ignores
    HF_HUB_OFFLINE and would wait on the network), hence the explicit check.
    """
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        if os.path.isfile(os.path.expanduser(tag)):
            return {}
        tags = ", ".join(list_pretrained_tags_by_model(arch)[:12]) or "none"
        raise ModelLoadError(
            f"cannot load CLIP '{display}': '{tag}' is neither a pretrained tag of {arch} nor a file (tags: {tags})"
        )
    if not is_offline() or "file" in cfg:
        return cfg
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # same split as open_clip.pretrained.download_pretrained: "org/repo/" or "org/repo/file"
        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        if any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str) for f in candidates):
            return cfg
    else:
        url_file = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg.get("url", "")))
        if cfg.get("url") and os.path.isfile(url_file):
            return cfg
    raise ModelLoadError(_offline_message("clip", display))


def _refuse_a_tag(name: str, pretrained: str | None, why: str) -> None:
    """A pretrained tag names weights of an open_clip architecture; given with a model that has its
    own, it would be silently dropped."""
    if pretrained:
        raise ModelLoadError(f"'{name}' {why}: --pretrained {pretrained} applies to an open_clip architecture "
                             "name (ViT-B-16 --pretrained openai) only; leave it out")


def _checkpoint_file(arch: str, tag: str | None) -> Path | None:
    """The file `--pretrained` names (None for a tag), checked to be a checkpoint before open_clip
    reads it: a text or empty file otherwise fails deep in torch.load as KeyError or EOFError."""
    if not tag or not os.path.isfile(os.path.expanduser(tag)):
        return None
    from open_clip.pretrained import get_pretrained_cfg

    from models.checkpoint_files import check_checkpoint_file

    if get_pretrained_cfg(arch, tag):  # a tag open_clip knows wins over a file of that name (as open_clip does)
        return None

    path = Path(tag).expanduser()
    check_checkpoint_file(path, "CLIP checkpoint")
    return path


def resolve_name(name: str, pretrained: str | None = None) -> None:
    """Check that `name` (and `pretrained`) is something `load` accepts, without loading it: one
    `ModelLoadError` line otherwise (a config read long before its model is loaded)."""
    tiny.register_open_clip_configs()
    _resolve_clip(name, pretrained, None)


def _local_config_problem(path: Path) -> str | None:
    """What of a folder's open_clip_config.json open_clip reads has the wrong shape (None: nothing). Checked
    here because open_clip's own failure names none of it ("'int' object is not subscriptable", "'list' object
    has no attribute 'timm_model_name'", a randn() TypeError for an embed_dim of "x")."""
    from augment.json_records import DamagedRecord, json_kind, read_json_object

    try:
        config = read_json_object(path)
    except DamagedRecord as damage:
        return str(damage)
    if Path(path).read_bytes().startswith(b"\xef\xbb\xbf"):  # read_json_object allows one; open_clip's json.load does not
        return "a byte-order mark before its JSON, which open_clip does not read; save the file without one"
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        return f"'model_cfg' must be an object, got {json_kind(model_cfg)}"
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(key), dict):
            return f"'model_cfg.{key}' must be an object, got {json_kind(model_cfg.get(key))}"
    embed_dim = model_cfg.get("embed_dim")
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
        return f"'model_cfg.embed_dim' must be a positive whole number, got {json.dumps(embed_dim)[:40]}"
    if "preprocess_cfg" in config and not isinstance(config["preprocess_cfg"], dict):
        return f"'preprocess_cfg' must be an object, got {json_kind(config['preprocess_cfg'])}"
    return None


def _text_tower_source_missing(folder: Path, cache_dir: str | None) -> str | None:
    """Why a saved folder's Hugging Face text tower cannot be built here (None: it can, or it has none).

    open_clip builds a text tower named by `text_cfg.hf_model_name` (roberta-ViT-B-32, xlm-roberta-*,
    mt5-*, nllb-clip-*) from that model's config.json, read from the Hub or the folder the name is, never
    from the saved folder: offline without it in the cache, the load failed with the Hub's "not in the
    local cache ...; pass a local folder" of the folder that was passed (audit BG)."""
    config = json.loads((folder / OPEN_CLIP_CONFIG_NAME).read_text(encoding="utf-8"))  # its shape was checked
    text_model = config["model_cfg"]["text_cfg"].get("hf_model_name")
    if not text_model or not isinstance(text_model, str) or (folder / OPEN_CLIP_TEXT_CONFIG_NAME).is_file():
        return None  # none, or saved with its config (`_with_saved_text_tower`)
    where = (f"({OPEN_CLIP_CONFIG_NAME} text_cfg.hf_model_name), whose config.json open_clip reads from there, "
             "not from the saved folder")
    if os.path.isdir(os.path.expanduser(text_model)):  # transformers reads a folder of that name first
        return None
    if _looks_like_path(text_model):
        return (f"its text tower is the Hugging Face model in {text_model}, a folder that does not exist here "
                f"{where}; copy that folder to the same path")
    if not is_offline():
        return None  # transformers fetches it
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(text_model, "config.json", cache_dir=cache_dir)
    except HFValidationError:
        cached = None
    if isinstance(cached, str):
        return None
    return (f"its text tower is the Hugging Face model '{text_model}' {where}: not in the local cache and "
            "HF_HUB_OFFLINE=1 is set; load it once online on this machine (or copy its Hub cache here)")


def _resolve_clip(name: str, pretrained: str | None, cache_dir: str | None) -> tuple[str, str | None, bool]:
    """(open_clip model name, pretrained, force_quick_gelu) for any accepted CLIP name."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("no CLIP model name given")
    name = name.strip()
    if name == "default" or (name in ALIASES and not isinstance(ALIASES[name], str)):
        arch, tag = DEFAULT_MODELS["clip"] if name == "default" else ALIASES[name]
        name, pretrained = arch, pretrained or tag
    if tiny.is_tiny_name(name):
        tiny.check_tiny_name(name)
        if name not in TINY_NAMES:
            raise ModelLoadError(f"'{name}' is not an open_clip model (open_clip twins: {', '.join(TINY_NAMES)})")
        _refuse_a_tag(name, pretrained, "has random weights of its own")
        return f"local-dir:{tiny.tiny_dir(name)}", None, False
    if name.startswith("local-dir:") or os.path.isdir(os.path.expanduser(name)) or _looks_like_path(name):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if folder.is_file():
            raise ModelLoadError(f"cannot load CLIP '{name}': {folder} is a file: give the folder that holds it "
                                 f"and its {OPEN_CLIP_CONFIG_NAME}")
        if not (folder / OPEN_CLIP_CONFIG_NAME).is_file():
            what = "does not exist" if not folder.exists() else f"has no {OPEN_CLIP_CONFIG_NAME}"
            raise ModelLoadError(f"cannot load CLIP '{name}': folder {folder} {what}")
        _refuse_a_tag(name, pretrained, "is a saved model with its own weights")
        if not any((folder / weights).is_file() for weights in (OPEN_CLIP_WEIGHTS_NAME, "open_clip_pytorch_model.bin")):
            # open_clip would build the architecture with random weights: a partial copy must not pass for the model
            raise ModelLoadError(f"cannot load CLIP '{name}': folder {folder} has no weights file "
                                 f"({OPEN_CLIP_WEIGHTS_NAME}); copy it again")
        problem = _local_config_problem(folder / OPEN_CLIP_CONFIG_NAME)
        if problem:
            raise ModelLoadError(f"{folder / OPEN_CLIP_CONFIG_NAME}: damaged ({problem}); copy the model folder "
                                 "again or retrain it")
        missing = _text_tower_source_missing(folder, cache_dir)
        if missing:
            raise ModelLoadError(f"cannot load CLIP '{name}': {missing}")
        return f"local-dir:{folder}", None, False
    if name.startswith("hf-hub:"):
        _refuse_a_tag(name, pretrained, "names its weights already")
        repo_id = name.removeprefix("hf-hub:")
        _check_hub_id(repo_id, "clip", name, OPEN_CLIP_CONFIG_NAME, None)
        return name, None, False
    arch = _open_clip_arch(name)
    if arch is None:
        raise ModelLoadError(
            f"unknown CLIP model '{name}': not an open_clip architecture, 'hf-hub:org/repo', "
            f"'local-dir:PATH', a folder with {OPEN_CLIP_CONFIG_NAME}, or tiny-clip"
        )
    if not pretrained:
        log.warning("CLIP %s without a pretrained tag: random weights", arch)
        return arch, None, False
    tag_cfg = _check_pretrained_tag_cached(arch, pretrained, f"{name} {pretrained}", cache_dir)
    # open_clip 3.x only warns when a tag was trained with QuickGELU (e.g. all 'openai' tags) but
    # the architecture config uses GELU; force it so the weights compute what they were trained for
    import open_clip

    arch_quick_gelu = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    return arch, pretrained, bool(tag_cfg.get("quick_gelu", False)) and not arch_quick_gelu


def _uses_quick_gelu(model) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def save_clip_local_dir(
    model,
    out_dir: str | os.PathLike,
    model_name_or_cfg: str | dict,
    *,
    preprocess_cfg: dict | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write `model` in open_clip's `local-dir:` layout; returns the folder.

    Files: `open_clip_config.json` = {"model_cfg": architecture config, "preprocess_cfg": size,
    mean, std, interpolation, resize_mode, fill_color} and `open_clip_model.safetensors` (the
    state dict), so `open_clip.create_model("local-dir:DIR")` and `load(DIR)` load the same
    weights. `model_name_or_cfg`: an architecture config dict (e.g. `ClipBundle.model_cfg`) or a
    name open_clip resolves (built-in, `hf-hub:`, `local-dir:`). `preprocess_cfg` defaults to the
    one open_clip attached to `model.visual`. `tokenizer`: the model's; saved in the folder (its
    `save_pretrained`) when the config names a Hugging Face tokenizer (`text_cfg.hf_tokenizer_name`:
    SigLIP, SigLIP2, CLIPA, ...), which open_clip then loads from the folder itself, whatever the
    name says. Without it such a folder loaded nowhere (`save_native` passed none until audit BG).
    A Hugging Face text tower's transformers config (`text_cfg.hf_model_name`: roberta-ViT-B-32,
    xlm-roberta-*, mt5-*, nllb-clip-*) is written as `OPEN_CLIP_TEXT_CONFIG_NAME`, which `load` builds
    the tower from (open_clip's own `create_model("local-dir:DIR")` still reads the Hub's).
    """
    import open_clip
    from safetensors.torch import save_file

    if isinstance(model_name_or_cfg, dict):
        model_cfg = json.loads(json.dumps(_jsonable(model_name_or_cfg)))
    else:
        found = open_clip.get_model_config(model_name_or_cfg)
        if found is None:
            raise ModelLoadError(f"cannot save CLIP: no open_clip config for '{model_name_or_cfg}'")
        model_cfg = _jsonable(found)
    if _uses_quick_gelu(model):
        model_cfg["quick_gelu"] = True  # e.g. OpenAI weights loaded with force_quick_gelu
    visual_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    visual_cfg.update(preprocess_cfg or {})
    config = {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(visual_cfg)}

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    # open_clip keeps no tied tensors, so a plain state dict saves; contiguous copies on CPU
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # write to temporary names, then rename: a crash never leaves a half-written checkpoint
    weights_tmp = temporary_path(out_dir / OPEN_CLIP_WEIGHTS_NAME)
    save_file(state, str(weights_tmp), metadata={"format": "pt"})
    os.replace(weights_tmp, out_dir / OPEN_CLIP_WEIGHTS_NAME)
    text_cfg = model_cfg.get("text_cfg")
    if isinstance(text_cfg, dict) and text_cfg.get("hf_tokenizer_name"):
        if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
            raise ModelLoadError(f"cannot save CLIP in {out_dir}: its config names the Hugging Face tokenizer "
                                 f"{text_cfg['hf_tokenizer_name']!r}, which the folder must hold, and no tokenizer "
                                 "was given")
        tokenizer.save_pretrained(str(out_dir))  # before the config: a folder with a config is complete
    if isinstance(text_cfg, dict) and text_cfg.get("hf_model_name"):
        text_config = getattr(getattr(model, "text", None), "config", None)
        if not hasattr(text_config, "to_json_string"):
            raise ModelLoadError(f"cannot save CLIP in {out_dir}: its config names the Hugging Face text model "
                                 f"{text_cfg['hf_model_name']!r} and its text tower has no transformers config")
        atomic_write_text(out_dir / OPEN_CLIP_TEXT_CONFIG_NAME, text_config.to_json_string(use_diff=False))
    atomic_write_text(out_dir / OPEN_CLIP_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return out_dir


def build_tiny(name: str, out_dir: Path) -> None:
    """Write tiny twin `name` (tiny-clip, tiny-siglip) in open_clip's local-dir layout (seeded by the caller)."""
    import open_clip

    tiny.register_open_clip_configs()
    previous_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": that is the point
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(previous_disable)
    preprocess_cfg = {"size": 64, "mean": tiny.OPENAI_MEAN, "std": tiny.OPENAI_STD}
    save_clip_local_dir(model, out_dir, tiny.open_clip_config(name), preprocess_cfg=preprocess_cfg)


def tiny_config(name: str) -> dict:
    """What tiny twin `name`'s fingerprint hashes (its open_clip architecture config)."""
    return {"clip": tiny.open_clip_config(name)}


MODEL_CLASS = OpenClipModel
