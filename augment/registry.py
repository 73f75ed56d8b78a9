"""One place that turns a model name into a loaded model, for every role mat-plus uses.

Roles and loaders:

* CLIP (`load_clip`): open_clip models -> `ClipBundle` (model, tokenizer, UNNORMALISED transforms,
  `normalize`). Checkpoints are written with `save_clip_local_dir` in open_clip's `local-dir:` layout.
* Stable Diffusion (`load_sd_pipeline`): diffusers text-to-image / image-to-image pipelines.
* Captioner (`load_captioner`): BLIP or any transformers image-text-to-text model + processor.
* Paraphraser (`load_paraphraser`): a seq2seq or causal LM + tokenizer.
* Masked LM (`load_mlm`): any transformers masked LM + tokenizer.

Names each loader accepts: a `tiny-*` name (see `augment.tiny`), a short alias (`ALIASES`), a local
folder (plain path or `local-dir:PATH`), or a Hugging Face Hub id; `load_clip` also takes open_clip
architectures with a pretrained tag and `hf-hub:org/repo`.

Every failure to resolve or load raises `ModelLoadError` with one line that says what to do;
Hub ids that are not cached fail at once when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set.
`trust_remote_code` is an explicit parameter, False unless the caller passes True. Tokens are
never read, printed or stored here (huggingface_hub finds its own login).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from augment import tiny
from augment.errors import MissingDependencyError, ModelLoadError

log = logging.getLogger(__name__)

# Default real model per role; generators and trainers look them up here.
DEFAULT_MODELS: dict[str, Any] = {
    "clip": ("ViT-B-16", "openai"),
    "captioner": "Salesforce/blip-image-captioning-base",
    "paraphraser": "humarin/chatgpt_paraphraser_on_T5_base",
    "mlm": "bert-base-uncased",
    "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}

# Short names -> Hub ids (or, for CLIP, (architecture, tag)).
ALIASES: dict[str, Any] = {
    "blip": "Salesforce/blip-image-captioning-base",
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "t5-paraphraser": "humarin/chatgpt_paraphraser_on_T5_base",
    "bert": "bert-base-uncased",
    "bert-base": "bert-base-uncased",
    "roberta": "roberta-base",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd-1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd-turbo": "stabilityai/sd-turbo",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl-turbo": "stabilityai/sdxl-turbo",
    "clip-b16": ("ViT-B-16", "openai"),
    "clip-b32": ("ViT-B-32", "openai"),
    "clip-l14": ("ViT-L-14", "openai"),
}

ROLES = ("clip", "sd", "captioner", "paraphraser", "mlm")
# how messages name each role
ROLE_LABELS = {
    "clip": "CLIP model",
    "sd": "Stable Diffusion pipeline",
    "captioner": "captioner",
    "paraphraser": "paraphraser",
    "mlm": "masked LM",
}


def _label(role: str) -> str:
    return ROLE_LABELS.get(role, role)

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"

_OFFLINE_HINT = "run once online or pass a local folder"


# ---------------------------------------------------------------------------------------------
# Shared helpers: offline mode, dtypes, error translation, name resolution
# ---------------------------------------------------------------------------------------------


def is_offline() -> bool:
    """True when the Hub must not be contacted (checked at call time, not import time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _offline_message(role: str, name: str) -> str:
    return f"cannot load {_label(role)} '{name}': not in the local cache and HF_HUB_OFFLINE=1 is set; {_OFFLINE_HINT}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _message_for(exc: BaseException, role: str, name: str) -> str:
    """One clear line for a library exception raised while loading `name`."""
    what = f"{_label(role)} '{name}'"
    try:
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # very old huggingface_hub: fall through to the generic line
        GatedRepoError = LocalEntryNotFoundError = OfflineModeIsEnabled = ()  # type: ignore
        RepositoryNotFoundError = RevisionNotFoundError = ()  # type: ignore
    if isinstance(exc, GatedRepoError):
        return f"cannot load {what}: the Hub repository is gated; accept its licence and log in (hf auth login)"
    if isinstance(exc, RepositoryNotFoundError):
        return f"cannot load {what}: no such repository on the Hugging Face Hub (or it is private)"
    if isinstance(exc, RevisionNotFoundError):
        return f"cannot load {what}: revision not found on the Hub"
    text = str(exc).lower()
    offline_words = ("offline", "couldn't connect", "could not connect", "connection error", "cannot find the requested files in the local cache")
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or any(w in text for w in offline_words):
        if is_offline():
            return _offline_message(role, name)
        return f"cannot load {what}: not in the local cache and the Hub cannot be reached; {_OFFLINE_HINT}"
    return f"cannot load {what}: {type(exc).__name__}: {_first_line(exc)}"


@contextlib.contextmanager
def _translated_errors(role: str, name: str) -> Iterator[None]:
    """Turn what libraries raise while loading into ModelLoadError / MissingDependencyError."""
    try:
        yield
    except (ModelLoadError, MissingDependencyError):
        raise
    except ImportError as exc:
        missing = getattr(exc, "name", None) or _first_line(exc)
        raise MissingDependencyError(
            f"loading {_label(role)} '{name}' needs a package that is not installed ({missing}); pip install it"
        ) from exc
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        # ConnectionError, FileNotFoundError and huggingface_hub's HTTP errors are OSErrors
        raise ModelLoadError(_message_for(exc, role, name)) from exc


def as_torch_dtype(dtype: Any):
    """torch dtype from a torch.dtype, None (float32) or a name: fp32/fp16/bf16/float16/..."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
        "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of fp32, fp16, bf16")
    return names[key]


def _transformers_dtype_kwargs(dtype: Any) -> dict:
    """transformers 5 takes `dtype=`; 4.x takes `torch_dtype=`."""
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {key: as_torch_dtype(dtype)}


def _diffusers_dtype_kwargs(dtype: Any) -> dict:
    """Newer diffusers take `dtype=` (and deprecate `torch_dtype=`); older ones only `torch_dtype=`."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present iff `dtype=` works)

        key = "dtype"
    except ImportError:
        key = "torch_dtype"
    return {key: as_torch_dtype(dtype)}


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # Windows drive
    )


@dataclass(frozen=True)
class ResolvedSource:
    """Where a transformers/diffusers model comes from: a local folder or a Hub id."""

    name: str  # what the caller asked for
    source: str  # folder path or Hub repo id, passed to from_pretrained
    is_local: bool
    tiny: str | None = None  # the tiny model's name when it is one


def _resolve_alias(name: str, role: str) -> str:
    target = DEFAULT_MODELS.get(role, name) if name == "default" else ALIASES.get(name, name)
    if not isinstance(target, str):  # (architecture, tag) pairs: open_clip names, see load_clip
        raise ModelLoadError(f"'{name}' names an open_clip model; load it with load_clip, not as a {_label(role)}")
    return target


def resolve_source(
    name: str,
    role: str,
    required_file: str = "config.json",
    revision: str | None = None,
) -> ResolvedSource:
    """Resolve `name` for `role` to a local folder or a Hub id, failing fast with ModelLoadError.

    Order: tiny name (built into the cache on first use), alias, `local-dir:PATH` or existing
    folder, then Hub id. A Hub id that is not cached fails at once in offline mode.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"no {_label(role)} name given")
    name = name.strip()
    if name == "world-mlm":  # trained on the sample world's captions, cached like the tiny twins
        from augment import world_mlm

        if role != "mlm":
            raise ModelLoadError(f"'{name}' is a {_label('mlm')}, not a {_label(role)}")
        return ResolvedSource(name, str(world_mlm.world_mlm_dir(name)), True, tiny=name)
    if name.startswith("tiny-"):
        tiny.check_tiny_name(name)
        if tiny.TINY_ROLES[name] != role:
            raise ModelLoadError(f"'{name}' is a {_label(tiny.TINY_ROLES[name])}, not a {_label(role)}")
        return ResolvedSource(name, str(tiny.tiny_dir(name)), True, tiny=name)
    target = _resolve_alias(name, role)
    if target.startswith("local-dir:") or os.path.isdir(os.path.expanduser(target)) or _looks_like_path(target):
        folder = Path(target.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"cannot load {_label(role)} '{name}': folder {folder} does not exist")
        if not (folder / required_file).is_file():
            raise ModelLoadError(f"cannot load {_label(role)} '{name}': folder {folder} has no {required_file}")
        return ResolvedSource(name, str(folder), True)
    _check_hub_id(target, role, name, required_file, revision)
    return ResolvedSource(name, target, False)


def _check_hub_id(repo_id: str, role: str, name: str, required_file: str, revision: str | None) -> None:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelLoadError(
            f"unknown {_label(role)} '{name}': not a tiny model, an alias, an existing folder or a valid Hub id"
        ) from None
    if is_offline():
        cached = try_to_load_from_cache(repo_id, required_file, revision=revision)
        if not isinstance(cached, str):
            raise ModelLoadError(_offline_message(role, name))


def _quiet_if_tiny(resolved: ResolvedSource):
    if not resolved.tiny:
        return contextlib.nullcontext()
    return tiny.quiet_progress_bars(tiny.progress_bar_libraries(resolved.tiny))


def _hub_kwargs(resolved: ResolvedSource, revision: str | None, trust_remote_code: bool) -> dict:
    kwargs: dict[str, Any] = {"trust_remote_code": bool(trust_remote_code)}
    if resolved.is_local:
        kwargs["local_files_only"] = True
    else:
        if revision is not None:
            kwargs["revision"] = revision
        if is_offline():
            kwargs["local_files_only"] = True
    return kwargs


# ---------------------------------------------------------------------------------------------
# CLIP (open_clip)
# ---------------------------------------------------------------------------------------------


@dataclass
class ClipBundle:
    """A loaded open_clip model with everything attacks and training need.

    Pixels: `preprocess_train` / `preprocess_eval` are open_clip's transforms WITHOUT the final
    Normalize step, so they give float tensors in [0, 1] of shape (3, image_size, image_size).
    Attacks perturb those pixels; call `normalize(x)` (or `encode_pixels`) right before the model.
    `model` is returned in eval mode on `device`; call `model.train()` to train it.
    """

    model: Any  # open_clip.model.CLIP or CustomTextCLIP
    tokenizer: Callable[..., Any]  # list[str] -> LongTensor (n, context_length)
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess_train: Callable[..., Any]  # PIL image -> unnormalised [0, 1] tensor (random crop)
    preprocess_eval: Callable[..., Any]  # PIL image -> unnormalised [0, 1] tensor (resize + crop)
    name: str
    pretrained: str | None
    context_length: int
    # the architecture config the model was built from (give it to save_clip_local_dir)
    model_cfg: dict = field(default_factory=dict)
    preprocess_cfg: dict = field(default_factory=dict)

    def normalize(self, pixels):
        """(x - mean) / std per channel, for pixels in [0, 1] shaped (..., 3, H, W)."""
        import torch

        mean = torch.as_tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
        std = torch.as_tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
        return (pixels - mean) / std

    def encode_pixels(self, pixels, normalize: bool = True):
        """Image embeddings from [0, 1] pixels (normalises them first)."""
        return self.model.encode_image(self.normalize(pixels), normalize=normalize)

    def encode_text(self, texts: list[str], normalize: bool = True):
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device), normalize=normalize)


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


def _resolve_clip(name: str, pretrained: str | None, cache_dir: str | None) -> tuple[str, str | None, bool]:
    """(open_clip model name, pretrained, force_quick_gelu) for any accepted CLIP name."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("no CLIP model name given")
    name = name.strip()
    if name == "default" or (name in ALIASES and not isinstance(ALIASES[name], str)):
        arch, tag = DEFAULT_MODELS["clip"] if name == "default" else ALIASES[name]
        name, pretrained = arch, pretrained or tag
    if name.startswith("tiny-"):
        tiny.check_tiny_name(name)
        if name != tiny.TINY_CLIP:
            raise ModelLoadError(f"'{name}' is a {_label(tiny.TINY_ROLES[name])}, not a CLIP model")
        return f"local-dir:{tiny.tiny_dir(name)}", None, False
    if name.startswith("local-dir:") or os.path.isdir(os.path.expanduser(name)) or _looks_like_path(name):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if not (folder / OPEN_CLIP_CONFIG_NAME).is_file():
            what = "does not exist" if not folder.is_dir() else f"has no {OPEN_CLIP_CONFIG_NAME}"
            raise ModelLoadError(f"cannot load CLIP '{name}': folder {folder} {what}")
        return f"local-dir:{folder}", None, False
    if name.startswith("hf-hub:"):
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


def load_clip(
    name: str,
    pretrained: str | None = None,
    device: Any = "cpu",
    precision: str = "fp32",
    *,
    cache_dir: str | None = None,
) -> ClipBundle:
    """Load an open_clip model by name; see the module docstring for accepted names.

    `pretrained` is an open_clip tag (or a checkpoint file) and only used with a bare
    architecture name; `None` there gives random weights (with a warning).
    """
    tiny.register_open_clip_configs()
    model_name, tag, force_quick_gelu = _resolve_clip(name, pretrained, cache_dir)
    import open_clip

    with _translated_errors("clip", name if not pretrained else f"{name} {pretrained}"):
        model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
            model_name,
            pretrained=tag,
            device=device,
            precision=precision,
            force_quick_gelu=force_quick_gelu,
            cache_dir=cache_dir,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        model_cfg = open_clip.get_model_config(model_name) or {}
    if force_quick_gelu:
        model_cfg["quick_gelu"] = True
    model.eval()
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    context_length = getattr(model, "context_length", None) or getattr(tokenizer, "context_length", None)
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        image_size=_square_size(preprocess_cfg["size"]),
        mean=tuple(float(v) for v in preprocess_cfg["mean"]),
        std=tuple(float(v) for v in preprocess_cfg["std"]),
        preprocess_train=_without_normalize(preprocess_train),
        preprocess_eval=_without_normalize(preprocess_eval),
        name=name,
        pretrained=tag,
        context_length=int(context_length),
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
    )


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
    state dict), so `open_clip.create_model("local-dir:DIR")` and `load_clip(DIR)` load the same
    weights. `model_name_or_cfg`: an architecture config dict (e.g. `ClipBundle.model_cfg`) or a
    name open_clip resolves (built-in, `hf-hub:`, `local-dir:`). `preprocess_cfg` defaults to the
    one open_clip attached to `model.visual`. Give `tokenizer` for models whose config names a
    Hugging Face tokenizer (open_clip then loads it from the same folder).
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
    weights_tmp = out_dir / f".{OPEN_CLIP_WEIGHTS_NAME}.tmp"
    config_tmp = out_dir / f".{OPEN_CLIP_CONFIG_NAME}.tmp"
    save_file(state, str(weights_tmp), metadata={"format": "pt"})
    config_tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(weights_tmp, out_dir / OPEN_CLIP_WEIGHTS_NAME)
    os.replace(config_tmp, out_dir / OPEN_CLIP_CONFIG_NAME)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


# ---------------------------------------------------------------------------------------------
# Stable Diffusion (diffusers)
# ---------------------------------------------------------------------------------------------


def _read_model_index(resolved: ResolvedSource, revision: str | None) -> dict:
    if resolved.is_local:
        path = Path(resolved.source) / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(resolved.source, "model_index.json", revision=revision))
    return json.loads(path.read_text(encoding="utf-8"))


def _sd_pipeline_class(class_name: str, kind: str):
    """StableDiffusion(XL)(Img2Img)Pipeline for SD-family folders; AutoPipeline otherwise."""
    import diffusers

    is_xl = "XL" in class_name
    if class_name.startswith("StableDiffusion"):
        names = {
            ("t2i", False): "StableDiffusionPipeline",
            ("i2i", False): "StableDiffusionImg2ImgPipeline",
            ("t2i", True): "StableDiffusionXLPipeline",
            ("i2i", True): "StableDiffusionXLImg2ImgPipeline",
        }
        return getattr(diffusers, names[(kind, is_xl)]), is_xl
    auto = "AutoPipelineForText2Image" if kind == "t2i" else "AutoPipelineForImage2Image"
    return getattr(diffusers, auto), is_xl


def load_sd_pipeline(
    name: str,
    kind: str = "t2i",
    device: Any = "cpu",
    dtype: Any = None,
    revision: str | None = None,
    safety_checker: bool = False,
    *,
    trust_remote_code: bool = False,
):
    """Load a diffusers pipeline: kind "t2i" (text-to-image) or "i2i" (image-to-image).

    SD 1.x/2.x folders give StableDiffusion(Img2Img)Pipeline, SDXL ones the XL classes, others
    diffusers' AutoPipeline. `safety_checker=False` drops the NSFW checker (SD 1.x/2.x only);
    the progress bar is disabled.
    """
    if kind not in ("t2i", "i2i"):
        raise ModelLoadError(f"unknown pipeline kind '{kind}'; use 't2i' or 'i2i'")
    resolved = resolve_source(name, "sd", required_file="model_index.json", revision=revision)
    with _translated_errors("sd", name), _quiet_if_tiny(resolved):
        index = _read_model_index(resolved, revision)
        pipeline_class, is_xl = _sd_pipeline_class(str(index.get("_class_name", "")), kind)
        kwargs = _hub_kwargs(resolved, revision, trust_remote_code)
        kwargs.update(_diffusers_dtype_kwargs(dtype))
        if not safety_checker and not is_xl and "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipe = pipeline_class.from_pretrained(resolved.source, **kwargs)
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# Captioner, paraphraser, masked LM (transformers)
# ---------------------------------------------------------------------------------------------


def _image_text_auto_class():
    """AutoModelForImageTextToText (transformers >= 4.46; BLIP maps to BlipForConditionalGeneration),
    else the older AutoModelForVision2Seq (removed in transformers 5)."""
    import transformers

    for attr in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        if hasattr(transformers, attr):
            return getattr(transformers, attr)
    raise MissingDependencyError("transformers has no image-to-text auto class; pip install -U transformers")


def load_captioner(
    name: str,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """(model, processor) for an image captioner (BLIP family or any image-text-to-text model)."""
    from transformers import AutoProcessor

    resolved = resolve_source(name, "captioner", revision=revision)
    kwargs = _hub_kwargs(resolved, revision, trust_remote_code)
    with _translated_errors("captioner", name), _quiet_if_tiny(resolved):
        processor = AutoProcessor.from_pretrained(resolved.source, **kwargs)
        model = _image_text_auto_class().from_pretrained(
            resolved.source, **kwargs, **_transformers_dtype_kwargs(dtype)
        )
        model = model.to(device).eval()
    return model, processor


def load_paraphraser(
    name: str,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer, kind): kind "seq2seq" (encoder-decoder, e.g. T5) or "causal" (decoder-only).

    Causal tokenizers are set to pad on the left (and pad with eos when they have no pad token),
    as batched generation needs.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    resolved = resolve_source(name, "paraphraser", revision=revision)
    kwargs = _hub_kwargs(resolved, revision, trust_remote_code)
    with _translated_errors("paraphraser", name), _quiet_if_tiny(resolved):
        config = AutoConfig.from_pretrained(resolved.source, **kwargs)
        kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        model_class = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **kwargs)
        model = model_class.from_pretrained(resolved.source, **kwargs, **_transformers_dtype_kwargs(dtype))
        model = model.to(device).eval()
    if kind == "causal":
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, kind


def load_mlm(
    name: str,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer) for a masked language model (AutoModelForMaskedLM)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    resolved = resolve_source(name, "mlm", revision=revision)
    kwargs = _hub_kwargs(resolved, revision, trust_remote_code)
    with _translated_errors("mlm", name), _quiet_if_tiny(resolved):
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, **kwargs)
        model = AutoModelForMaskedLM.from_pretrained(resolved.source, **kwargs, **_transformers_dtype_kwargs(dtype))
        model = model.to(device).eval()
    if tokenizer.mask_token is None:
        raise ModelLoadError(f"cannot use '{name}' as a masked LM: its tokenizer has no mask token")
    return model, tokenizer


def default_model(role: str):
    """The default real model id for `role` (see DEFAULT_MODELS)."""
    if role not in DEFAULT_MODELS:
        raise ModelLoadError(f"unknown model role '{role}'; known: {', '.join(DEFAULT_MODELS)}")
    return DEFAULT_MODELS[role]
