"""Loading and saving for the families built on transformers models (BLIP, transformers CLIP).

One place for what those families share: resolving a name (tiny twin, alias, folder, Hub id)
to a folder or Hub id, the dtype of a `precision`, `from_pretrained` with one-line errors and
no trust_remote_code, the architecture named in a `config.json`, an all-or-nothing
`save_pretrained`, and the pixel transforms (PIL -> [0, 1] tensors, never normalised).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from augment import tiny
from augment.errors import ModelLoadError
from augment.progress import quiet_progress_bars
from augment.registry import (
    ResolvedSource,
    _check_hub_id,
    _check_tokenizer,
    _looks_like_path,
    _translated_errors,
    as_torch_dtype,
    checked_from_pretrained,
    is_offline,
    without_fast_processor_notice,
)

ROLE = "vlm"  # augment.registry's role (and tiny role) of every vision-language model

# open_clip's precision names -> the dtype the weights are loaded in ("amp" keeps fp32 weights)
_PRECISION_DTYPES = {
    "fp32": torch.float32, "tf32": torch.float32, "amp": torch.float32, "amp_bf16": torch.float32,
    "amp_bfloat16": torch.float32,
    "fp16": torch.float16, "pure_fp16": torch.float16, "bf16": torch.bfloat16, "pure_bf16": torch.bfloat16,
}


def weights_dtype(precision: str | None) -> torch.dtype:
    """The dtype a transformers family loads its weights in for `precision` (open_clip's names too)."""
    if precision is None:
        return torch.float32
    return _PRECISION_DTYPES.get(str(precision).lower()) or as_torch_dtype(precision)


def resolve(name: str, *, family: str, tiny_names: Sequence[str], aliases: dict[str, str],
            revision: str | None = None) -> ResolvedSource:
    """Folder or Hub id of `name`: one of `tiny_names` (built on first use), an alias, a folder
    (`local-dir:PATH` too) holding config.json, or a Hub id (offline: it must be cached)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"no {family} model name given")
    name = name.strip()
    if tiny.is_tiny_name(name):
        if name not in tiny_names:
            raise ModelLoadError(f"'{name}' is not a {family} model ({family} twins: {', '.join(tiny_names)})")
        return ResolvedSource(name, str(tiny.tiny_dir(name)), True, tiny=name)
    target = aliases.get(name, name)
    if target.startswith("local-dir:") or os.path.isdir(os.path.expanduser(target)) or _looks_like_path(target):
        folder = Path(target.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"cannot load {family} model '{name}': folder {folder} does not exist")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"cannot load {family} model '{name}': folder {folder} has no config.json")
        return ResolvedSource(name, str(folder), True)
    _check_hub_id(target, ROLE, name, "config.json", revision)
    return ResolvedSource(name, target, False)


def pretrained_kwargs(resolved: ResolvedSource, revision: str | None = None) -> dict:
    """from_pretrained keywords: local files only for folders and offline; never remote code."""
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if resolved.is_local or is_offline():
        kwargs["local_files_only"] = True
    if revision is not None and not resolved.is_local:
        kwargs["revision"] = revision
    return kwargs


def loading(resolved: ResolvedSource):
    """Context for from_pretrained calls: one-line errors; tiny twins load without progress bars."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(_translated_errors(ROLE, resolved.name))
    if resolved.tiny:
        stack.enter_context(quiet_progress_bars(("transformers",)))
    return stack


def config_architectures(resolved: ResolvedSource, revision: str | None = None) -> list[str]:
    """`architectures` of the model's config.json (a folder's, or the Hub's cached/downloaded copy)."""
    if resolved.is_local:
        path = Path(resolved.source) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        with _translated_errors(ROLE, resolved.name):
            path = Path(hf_hub_download(resolved.source, "config.json", revision=revision,
                                        local_files_only=is_offline()))
    return folder_architectures(path.parent)


def folder_architectures(folder: Path) -> list[str]:
    """`architectures` of `folder/config.json` ([] when absent or unreadable)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return list(config.get("architectures") or []) if isinstance(config, dict) else []


def check_architecture(resolved: ResolvedSource, expected: str, family: str, revision: str | None = None) -> None:
    """Refuse a model of another architecture (e.g. a BLIP captioner given as BLIP retrieval) with one line."""
    found = config_architectures(resolved, revision)
    if found and expected not in found:
        raise ModelLoadError(
            f"cannot load {family} model '{resolved.name}': it is a {', '.join(found)}, not a {expected}")


def load_pretrained(name: str, model_class: Any, processor_class: Any, *, family: str, architecture: str,
                    tiny_names: Sequence[str], aliases: dict[str, str], precision: str | None = "fp32",
                    revision: str | None = None) -> tuple[Any, Any]:
    """(model, processor) of `name` through `from_pretrained`: the one loading prologue of the
    transformers families (resolve the name, refuse another architecture, no remote code, local
    files offline, one-line errors, weights in the dtype of `precision`)."""
    resolved = resolve(name, family=family, tiny_names=tiny_names, aliases=aliases, revision=revision)
    check_architecture(resolved, architecture, family, revision)
    kwargs = pretrained_kwargs(resolved, revision)
    with loading(resolved):
        model = checked_from_pretrained(model_class, resolved.source, role=ROLE, name=resolved.name, **kwargs,
                                        dtype=weights_dtype(precision))
        with without_fast_processor_notice():  # it reads only the processor's settings
            processor = processor_class.from_pretrained(resolved.source, **kwargs)
    # a saved folder without tokenizer.json/tokenizer_config.json loads as its special tokens only
    _check_tokenizer(family, resolved.name, getattr(processor, "tokenizer", None), resolved.source)
    return model, processor


def save_pretrained_all_or_nothing(folder: Path, *parts: Any) -> None:
    """`save_pretrained` of each part (model, processor) into a temporary sibling folder, then the
    files are moved into `folder`: an interrupted save leaves the previous files, not half of them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".save-", dir=folder))
    try:
        with quiet_progress_bars(("transformers",)):  # checkpoints are saved often; no bar per save
            for part in parts:
                part.save_pretrained(str(work))
        for path in sorted(work.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Pixel transforms: PIL image -> float [3, H, W] in [0, 1] (normalisation happens in the model)
# ---------------------------------------------------------------------------------------------


def to_rgb(image):
    """PIL image in RGB (a module-level function, so transforms pickle for DataLoader workers); other
    modes through the sources' `to_rgb`, which scales 16-bit greyscale where PIL's convert clips it."""
    if image.mode == "RGB":
        return image
    from augment.sources import to_rgb as source_to_rgb

    return source_to_rgb(image)


def train_transform(size: int, scale: tuple[float, float], hflip: bool) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    steps = [transforms.Lambda(to_rgb),
             transforms.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def square_resize_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """Resize to size x size (aspect ratio not kept), bicubic: BLIP's evaluation transform."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return transforms.Compose([transforms.Lambda(to_rgb),
                               transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
                               transforms.ToTensor()])


def resize_crop_transform(resize: int, crop: int) -> Callable[[Any], torch.Tensor]:
    """Shortest side to `resize`, centre crop `crop`, bicubic: CLIP's evaluation transform."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return transforms.Compose([transforms.Lambda(to_rgb),
                               transforms.Resize(resize, interpolation=InterpolationMode.BICUBIC),
                               transforms.CenterCrop(crop),
                               transforms.ToTensor()])


# PIL's resampling filters (what a transformers image processor's `resample` holds) -> torchvision's modes
_PIL_RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def processor_eval_transform(image_processor, default_size: int) -> tuple[int, Callable[[Any], torch.Tensor]]:
    """(output size, transform) of a transformers image processor's resize and centre crop, as its
    flags say: `do_resize` with `size` {"shortest_edge"} (aspect kept) or {"height", "width"} (squashed),
    `do_center_crop` with `crop_size`, its `resample` filter; `default_size` where it resizes and
    crops nothing (its normalisation is the model's own, `ImageTextModel.normalize`). A processor
    that would give non-square pixels (a shortest-side resize without a crop, or none at all) is
    cropped to the centre square; one squashing to height != width is refused (ModelLoadError)."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    resample = getattr(image_processor, "resample", None)
    resample = 3 if resample is None else int(getattr(resample, "value", resample))
    mode = InterpolationMode[_PIL_RESAMPLE_NAMES.get(resample, "BICUBIC")]
    steps: list = [transforms.Lambda(to_rgb)]
    size, square = default_size, False
    if getattr(image_processor, "do_resize", True):
        shortest = processor_size(image_processor.size, "shortest_edge")
        height = None if shortest else processor_size(image_processor.size, "height")
        width = None if shortest else processor_size(image_processor.size, "width")
        if height and width and height != width:
            raise ModelLoadError(f"its image processor resizes to {height} x {width}: the vision model reads square images")
        if shortest or height:
            steps.append(transforms.Resize(shortest or (height, height), interpolation=mode))
            size, square = shortest or height, bool(height)
    crop = processor_size(getattr(image_processor, "crop_size", None), "height")
    if getattr(image_processor, "do_center_crop", True) and crop:
        steps.append(transforms.CenterCrop(crop))
        size = crop
    elif not square:
        # a shortest-side resize without a crop keeps the aspect ratio, which no fixed-size ViT reads:
        # cropped to the centre square, as CLIP's own processors do
        steps.append(transforms.CenterCrop(size))
    return int(size), transforms.Compose([*steps, transforms.ToTensor()])


def processor_size(size: Any, *keys: str) -> int | None:
    """An int from a transformers image-processor size (int, dict or SizeDict), trying `keys` in order."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    for key in keys:
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None


class TransformersWrapped:
    """What the families wrapping a transformers model in `self.model` share: gradient
    checkpointing through transformers. Listed before the model interface in the bases."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self.model, enable)


class TransformersEncoderWrapped(TransformersWrapped):
    """A transformers dual/fusion encoder (BLIP, transformers CLIP): its identity names the Hub
    commit its weights came from, and texts tokenise to the longest of the batch."""

    def describe(self) -> dict:
        """Identity; a Hub model adds the commit its weights came from (cache keys, reports)."""
        commit = getattr(self.model.config, "_commit_hash", None)
        return {**super().describe(), **({"commit": commit} if commit else {})}

    def tokenize(self, texts: Sequence[str]):
        from models.base import TextTokens

        encoded = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.context_length,
                                 return_tensors="pt")
        return TextTokens(encoded["input_ids"], encoded["attention_mask"]).to(self.device)


def set_grad_checkpointing(module, enable: bool) -> None:
    """transformers' gradient checkpointing of a PreTrainedModel (non-reentrant: attacks take input gradients)."""
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_* (the old names warn)
    if hasattr(module, "activation_checkpointing_enable"):
        if enable:
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.activation_checkpointing_disable()
    elif enable:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        module.gradient_checkpointing_disable()
