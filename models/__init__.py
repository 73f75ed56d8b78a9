"""Vision-language models: every family behind one interface (`models.base`), one loader.

    from models import load_model
    model = load_model("tiny-clip")                       # open_clip twin
    model = load_model("ViT-B-16", pretrained="openai")   # open_clip architecture + tag
    model = load_model("Salesforce/blip-itm-base-coco")   # BLIP retrieval (transformers)
    model = load_model("runs/mat/ckpt")                   # any folder a family saved

`FAMILIES` maps a family name to the module that implements it ("models.blip", imported on
use; the module's `MODEL_CLASS` and `load` are the family); `family_of(name)` says which family a name belongs to. Every `--model`, `--scorer` and
`--attacker-model` goes through `load_model`. Adding a family = one module in `models/` with a
`VisionLanguageModel` (or `CaptioningModel`) subclass and a `load(name, pretrained, device)`
function, plus one entry in `FAMILIES` (and in `HF_ARCHITECTURES` / `TINY_FAMILY` for its names).
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from augment.errors import ModelLoadError
from augment.registry import _looks_like_path, is_offline
from models.base import (  # noqa: F401  (re-exported: the interface)
    KINDS,
    MODEL_INFO_NAME,
    CaptioningModel,
    EncoderOutput,
    ImageTextModel,
    TextTokens,
    VisionLanguageModel,
    bare_name,
    read_model_info,
    recorded_tiny_twin,
)
from models.sdpa import leave_out_cudnn

# family -> the module implementing it (`load(...)`, the model class, `build_tiny`, `tiny_config`)
FAMILIES: dict[str, str] = {
    "open_clip": "models.open_clip_family",
    "blip": "models.blip",
    "hf_clip": "models.hf_clip",
    "albef": "models.albef",
    "captioner": "models.captioner",
}

# tiny twin -> family
TINY_FAMILY: dict[str, str] = {
    "tiny-clip": "open_clip",
    "tiny-siglip": "open_clip",
    "tiny-blip": "blip",
    "tiny-hf-clip": "hf_clip",
    "tiny-albef": "albef",
    "tiny-captioner": "captioner",  # built by augment.tiny (the registry's captioner role uses it too)
}

# transformers `architectures[0]` of a Hub id or folder (config.json) -> family
HF_ARCHITECTURES: dict[str, str] = {
    "BlipForImageTextRetrieval": "blip",
    "CLIPModel": "hf_clip",
    "BlipForConditionalGeneration": "captioner",
}


def family_module(family: str):
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family '{family}'; known: {', '.join(FAMILIES)}")
    try:
        return importlib.import_module(FAMILIES[family])
    except ModuleNotFoundError as exc:
        if exc.name != FAMILIES[family]:
            raise
        # every family is asked whether a name is its own: a mistyped entry broke every model's loading
        raise ModelLoadError(f"model family '{family}': its module {FAMILIES[family]!r} (models.FAMILIES) does "
                             "not exist") from None


def _folder_family(folder: Path) -> str | None:
    info = read_model_info(folder)
    if info and info.get("family") in FAMILIES:
        return info["family"]
    for family in FAMILIES:
        module = family_module(family)
        model_class = getattr(module, "MODEL_CLASS", None)
        if model_class is not None and model_class.can_load(folder):
            return family
    config = folder / "config.json"
    if config.is_file():
        return _architecture_family(config, str(folder))
    return None


def _architecture_family(config_path: Path, name: str) -> str:
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model '{name}': unreadable config.json ({exc})") from None
    for architecture in config.get("architectures") or []:
        if architecture in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[architecture]
    found = ", ".join(config.get("architectures") or []) or config.get("model_type", "unknown")
    raise ModelLoadError(
        f"cannot load model '{name}': transformers architecture {found} is not a supported family "
        f"(supported: {', '.join(sorted(HF_ARCHITECTURES)) or 'none'})")


def _hub_family(repo_id: str, revision: str | None) -> str | None:
    """Family of a Hub id from its cached/downloaded config.json; None when it has none."""
    from augment.registry import _translated_errors

    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if is_offline():
        try:
            cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        except HFValidationError:  # not a Hub id's spelling: not a Hub model
            return None
        if not isinstance(cached, str):
            return None
        return _architecture_family(Path(cached), repo_id)
    with _translated_errors("vlm", repo_id):
        path = hf_hub_download(repo_id, "config.json", revision=revision)
    return _architecture_family(Path(path), repo_id)


def family_of(name: str, pretrained: str | None = None, revision: str | None = None) -> str:
    """The family a model name belongs to (see the module docstring for accepted names)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("no model name given")
    name = name.strip()
    if name in TINY_FAMILY:
        return TINY_FAMILY[name]
    path = Path(name.removeprefix("local-dir:")).expanduser()
    if name.startswith("local-dir:") or path.is_dir():
        if not path.is_dir():
            raise ModelLoadError(f"cannot load model '{name}': folder {path} does not exist")
        family = _folder_family(path)
        if family is None:
            hint = f"; a training run's weights are in {path / 'ckpt'}" if (path / "ckpt").is_dir() else ""
            raise ModelLoadError(
                f"cannot load model '{name}': {path} holds no model of a known family "
                f"(no {MODEL_INFO_NAME}, open_clip_config.json or config.json){hint}")
        return family
    for family in FAMILIES:  # families that claim names of their own (checkpoint files, prefixes)
        claims = getattr(family_module(family), "claims_name", None)
        if claims is not None and claims(name, pretrained):
            return family
    if _looks_like_path(name) and not os.path.exists(path):  # not a Hub id's spelling: say it is missing
        raise ModelLoadError(f"cannot load model '{name}': folder {path} does not exist")
    if "/" in name and not name.startswith("hf-hub:") and not os.path.exists(path):
        family = _hub_family(name, revision)
        if family is not None:
            return family
        if is_offline():  # neither a folder here nor a cached Hub model: say both, not "unknown CLIP model"
            raise ModelLoadError(f"cannot load model '{name}': no folder {path} here, and no Hub model '{name}' "
                                 "in the local cache (offline mode)")
    return "open_clip"  # architectures, tags, hf-hub: ids, aliases: open_clip decides and explains


def load_model(name: str, pretrained: str | None = None, device: Any = "cpu", precision: str = "fp32", *,
               kind: str | None = None, **options: Any) -> ImageTextModel:
    """Load any model by name into its family's class, in eval mode on `device`.

    `kind`: "retrieval" or "captioning" to refuse a model of the other kind with one line.
    Extra `options` go to the family's loader (e.g. ALBEF's `config=`).
    """
    family = family_of(name, pretrained, options.get("revision"))  # the family of that revision, not of main
    module = family_module(family)
    model_class = getattr(module, "MODEL_CLASS", None)
    if kind is not None and kind not in KINDS:  # e.g. a task's name: grounding uses retrieval models
        raise ModelLoadError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    if kind is not None and model_class is not None and model_class.kind != kind:  # before loading: its options differ
        raise ModelLoadError(f"'{name}' is a {model_class.kind} model ({family}), not a {kind} model")
    taken = inspect.signature(module.load).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in taken.values())
    unknown = [] if takes_any else sorted(option for option in options if option not in taken)
    if unknown:  # a TypeError traceback otherwise, e.g. train clean --model tiny-clip --albef-config ...
        raise ModelLoadError(f"model '{name}' ({family}) has no loading option {', '.join(unknown)} "
                             "(the --albef-* options are for ALBEF/TCL checkpoints)")
    from safetensors import SafetensorError

    try:
        model = module.load(name, pretrained, device=device, precision=precision, **options)
    except SafetensorError as exc:  # a damaged weights file (every family saves safetensors): one line naming it
        raise ModelLoadError(f"{name}: its weights file is unreadable ({exc}); save or copy the checkpoint again") from None
    model.patch_matmul = True  # every family: the ViT patch embedding's input gradient as a matmul on CPU
    model.batch_first_attention = True  # every nn.MultiheadAttention: attention without sequence-first copies
    model.class_token_vision = True  # open_clip ViTs: the last block at the class token only
    leave_out_cudnn(model)  # transformers' attention layers: no cuDNN attention on a GPU (models/sdpa.py)
    if bare_name(name) in TINY_FAMILY:  # `transformers:tiny-hf-clip` too
        model.tiny_twin = bare_name(name)
    else:
        model.tiny_twin = recorded_tiny_twin(Path(bare_name(name)).expanduser()) if _is_folder(name) else None
    if kind is not None and model.kind != kind:
        raise ModelLoadError(f"'{name}' is a {model.kind} model ({family}), not a {kind} model")
    return model


def _is_folder(name: str) -> bool:
    return Path(bare_name(name)).expanduser().is_dir()


def save_model(model: ImageTextModel, folder: str | os.PathLike) -> Path:
    """Write `model` in its family's native layout plus matplus_model.json."""
    return model.save(folder)


__all__ = [
    "FAMILIES", "HF_ARCHITECTURES", "TINY_FAMILY", "CaptioningModel", "EncoderOutput", "ImageTextModel", "TextTokens",
    "VisionLanguageModel", "family_module", "family_of", "load_model", "read_model_info", "save_model",
]
