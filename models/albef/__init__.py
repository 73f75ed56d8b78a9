"""The ALBEF family: ALBEF and TCL (one architecture) from their released checkpoints.

Names:
* a checkpoint file `*.pth` / `*.pt` (ALBEF.pth, flickr30k.pth, SGA's albef_retrieval_flickr.pth,
  TCL's tcl_retrieval_flickr.pth, ...), or `albef` / `tcl` with `pretrained=` such a file;
* a folder this family saved (`albef_config.json`, `albef_model.safetensors`, tokenizer files);
* the tiny twin `tiny-albef`.

Options (`models.load_model(name, **options)`): `config=` ALBEF's YAML (image_res, vision_width,
embed_dim, temp, queue_size, momentum, alpha; vision_depth / vision_heads / patch_size for other
ViTs), `bert_config=` ALBEF's BERT config JSON (with fusion_layer), `tokenizer=` a Hub id or
folder (default bert-base-uncased), `image_size=`, `pre_caption=` (default True),
`momentum_distillation=` (build the momentum encoders and queues now).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from augment import tiny
from augment.errors import ModelLoadError, first_line
from models.albef.config import TINY_BERT_CONFIG, TINY_CONFIG, check_config, make_config
from models.albef.model import CONFIG_NAME, WEIGHTS_NAME, AlbefModel

TINY_ALBEF = "tiny-albef"
TINY_NAMES = (TINY_ALBEF,)
CHECKPOINT_SUFFIXES = (".pth", ".pt")
ARCHITECTURE_NAMES = ("albef", "tcl")

__all__ = ["AlbefModel", "MODEL_CLASS", "build_tiny", "claims_name", "load", "tiny_config"]


def claims_name(name: str, pretrained: str | None = None) -> bool:
    """A checkpoint file, or `albef` / `tcl` (whose checkpoint file `load` asks for as `pretrained`)."""
    lower = name.strip().lower()
    return lower.endswith(CHECKPOINT_SUFFIXES) or lower in ARCHITECTURE_NAMES


def load(name: str, pretrained: str | None = None, device: Any = "cpu", precision: str = "fp32", *,
         config: str | dict | None = None, bert_config: str | dict | None = None, tokenizer: str | None = None,
         image_size: int | None = None, pre_caption: bool | None = None, momentum_distillation: bool | None = None,
         display_name: str | None = None) -> AlbefModel:
    """Load an ALBEF / TCL model by any accepted name (module docstring); eval mode on `device`.

    `momentum_distillation`: None keeps what a saved folder holds (a training checkpoint saves its
    momentum encoders and queues; a released checkpoint's are read only when they are turned on), True
    builds them (from the released file's where it has them), False drops them.
    """
    name = name.strip()
    if tiny.is_tiny_name(name):
        tiny.check_tiny_name(name)
        if name not in TINY_NAMES:
            raise ModelLoadError(f"'{name}' is not an ALBEF model (ALBEF twins: {', '.join(TINY_NAMES)})")
        if pretrained:
            raise ModelLoadError(f"{name} has random weights of its own; it takes no pretrained checkpoint")
        folder, display_name = tiny.tiny_dir(name), display_name or name
    else:
        folder = Path(name.removeprefix("local-dir:")).expanduser()
    if (not folder.is_dir() and name.lower() in ARCHITECTURE_NAMES
            and not str(pretrained or "").lower().endswith(CHECKPOINT_SUFFIXES)):
        given = f", not {pretrained!r}" if pretrained else ""
        raise ModelLoadError(f"'{name}' names an architecture, not weights: give its checkpoint file as --pretrained "
                             f"FILE.pth{given} (README: ALBEF and TCL)")
    if folder.is_dir():
        given = [flag for flag, value in (("--albef-config", config), ("--albef-bert-config", bert_config),
                                          ("--albef-tokenizer", tokenizer)) if value is not None]
        if given:  # they shape a released .pth; a folder carries its own, which would silently win
            raise ModelLoadError(f"{display_name or name} is a saved ALBEF/TCL folder with its own config and tokenizer: "
                                 f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a .pth checkpoint only; "
                                 "leave them out")
        model = _load_saved_folder(folder, display_name or name, image_size, pre_caption)
    else:
        checkpoint = pretrained if name.lower() in ARCHITECTURE_NAMES and pretrained else name
        model = _load_checkpoint(checkpoint, config, bert_config, tokenizer, image_size, pre_caption,
                                 display_name or name)
    if momentum_distillation is not None:
        model.set_momentum_distillation(bool(momentum_distillation))
    return model.to(device=device, dtype=_dtype(precision)).eval()


def _dtype(precision: str):
    from augment.registry import as_torch_dtype

    precision = (precision or "fp32").lower()
    if precision in ("no", "fp32") or precision.startswith("amp"):  # mixed precision keeps fp32 weights
        return as_torch_dtype("fp32")
    return as_torch_dtype(precision.removeprefix("pure_"))


def _load_tokenizer(source: str, display: str, *, saved_folder: bool = False):
    """The BERT tokenizer of `source` (a Hub id or folder), refused when it has no vocabulary:
    BertTokenizer then loads silently with its special tokens only and every word becomes [UNK]."""
    from transformers import BertTokenizer

    from augment.registry import _check_tokenizer, _translated_errors

    with _translated_errors("ALBEF tokenizer", f"{source} (for {display})"):
        tokenizer = BertTokenizer.from_pretrained(source)
    if saved_folder:  # the folder's own tokenizer files: the same line as every other saved folder's
        _check_tokenizer("ALBEF", display, tokenizer, source)
    elif len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        where = f"folder {source}" if Path(source).expanduser().is_dir() else source
        raise ModelLoadError(f"cannot load ALBEF '{display}': no tokenizer files for {where} (only "
                             f"{len(tokenizer)} special tokens): run once online or pass --albef-tokenizer FOLDER")
    return tokenizer


def _load_saved_folder(folder: Path, display: str, image_size: int | None, pre_caption: bool | None) -> AlbefModel:
    from safetensors.torch import load_file

    from models.albef.checkpoint import resample_pos_embeds

    if not AlbefModel.can_load(folder):
        raise ModelLoadError(f"cannot load ALBEF '{display}': folder {folder} has no {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        state = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load ALBEF '{display}': {folder} is unreadable ({first_line(exc)})") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"cannot load ALBEF '{display}': {folder / CONFIG_NAME} is not a JSON object")
    if image_size is not None:
        cfg["image_res"] = int(image_size)
    if pre_caption is not None:
        cfg["pre_caption"] = bool(pre_caption)
    try:  # a hand-edited config: a key missing or a value of the wrong type, in one line
        cfg = check_config(cfg)
        model = AlbefModel(cfg, _load_tokenizer(str(folder), display, saved_folder=True), name=display, pretrained=None)
    except KeyError as exc:
        raise ModelLoadError(f"cannot load ALBEF '{display}': {folder / CONFIG_NAME} lacks the key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load ALBEF '{display}': {folder / CONFIG_NAME} has a bad value "
                             f"({first_line(exc)})") from None
    resample_pos_embeds(model, state)
    if "image_queue" in state:  # saved during training with momentum distillation: continue it
        model.set_momentum_distillation(True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"cannot load ALBEF '{display}': {folder / WEIGHTS_NAME} does not match its "
                             f"{CONFIG_NAME} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def _load_checkpoint(path: str, config, bert_config, tokenizer: str | None, image_size: int | None,
                     pre_caption: bool | None, display: str) -> AlbefModel:
    from models.albef.checkpoint import load_official_state, read_checkpoint

    state = read_checkpoint(path)  # first: a bad file fails before any tokenizer download
    try:  # a hand-written --albef-config / --albef-bert-config: a value of the wrong type, in one line
        cfg = make_config(config, bert_config, image_size)
        if pre_caption is not None:
            cfg["pre_caption"] = bool(pre_caption)
        cfg["tokenizer"] = tokenizer or cfg["tokenizer"]
        model = AlbefModel(cfg, None, name=display, pretrained=str(path))
    except KeyError as exc:
        raise ModelLoadError(f"cannot load ALBEF '{display}': {_config_names(config, bert_config)} lacks the key "
                             f"{exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load ALBEF '{display}': {_config_names(config, bert_config)} has a bad value "
                             f"({first_line(exc)})") from None
    load_official_state(model, state, source=f"checkpoint {path}")  # before the tokenizer: size errors first
    model.tokenizer = _load_tokenizer(cfg["tokenizer"], display)
    if len(model.tokenizer) > int(cfg["bert"]["vocab_size"]):
        raise ModelLoadError(f"ALBEF tokenizer {cfg['tokenizer']} has {len(model.tokenizer)} tokens, more than "
                             f"the BERT config's vocab_size {cfg['bert']['vocab_size']}")
    return model


def _config_names(config, bert_config) -> str:
    """The config files given (their paths), for an error about a value in one of them."""
    given = [str(c) for c in (config, bert_config) if isinstance(c, (str, Path))]
    return " / ".join(given) if given else "the ALBEF config"


# -- the tiny twin -------------------------------------------------------------------------


def _tiny_cfg(vocab_size: int) -> dict:
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["bert"] = {**copy.deepcopy(TINY_BERT_CONFIG), "vocab_size": int(vocab_size)}
    return check_config(cfg)


def build_tiny(name: str, out_dir: Path) -> None:
    """Write tiny-albef (seeded by the caller) as a saved folder of this family."""
    if name not in TINY_NAMES:
        raise ModelLoadError(f"'{name}' is not an ALBEF twin")
    tokenizer = tiny.build_word_tokenizer(Path(out_dir))
    model = AlbefModel(_tiny_cfg(len(tokenizer)), tokenizer, name=name, pretrained=None)
    model.save(out_dir)


def tiny_config(name: str) -> dict:
    """What tiny-albef's fingerprint hashes: its config and the word vocabulary."""
    vocabulary = tiny.word_vocabulary()
    return {"albef": _tiny_cfg(len(vocabulary)),
            "word_vocabulary_sha256": hashlib.sha256("\n".join(vocabulary).encode("utf-8")).hexdigest()}


MODEL_CLASS = AlbefModel
