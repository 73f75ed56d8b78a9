"""One place that turns a model name into a loaded generator model, and the loading helpers
every model family shares (name resolution, offline checks, one-line errors).

Vision-language models (CLIP, SigLIP, BLIP, ALBEF: what is trained, attacked, evaluated and
scores pools) load through `models.load_model`, which uses the helpers here. Roles and loaders:

* Stable Diffusion (`load_sd_pipeline`): diffusers text-to-image / image-to-image pipelines.
* Captioner (`load_captioner`): BLIP or any transformers image-text-to-text model + processor.
* Paraphraser (`load_paraphraser`): a seq2seq or causal LM + tokenizer.
* Masked LM (`load_mlm`): any transformers masked LM + tokenizer.

Names each loader accepts: a `tiny-*` name (see `augment.tiny`), a short alias (`ALIASES`), a local
folder (plain path or `local-dir:PATH`), or a Hugging Face Hub id.

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
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from augment import tiny
from augment.errors import MissingDependencyError, ModelLoadError, first_line
from augment.progress import quiet_progress_bars

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
    "vlm": "vision-language model",
    "sd": "Stable Diffusion pipeline",
    "captioner": "captioner",
    "paraphraser": "paraphraser",
    "mlm": "masked LM",
}


def _label(role: str) -> str:
    return ROLE_LABELS.get(role, role)

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




def _unreadable_file(exc: BaseException) -> str | None:
    """The file a FileNotFoundError names when it is there but not readable by this user (None else)."""
    if not isinstance(exc, FileNotFoundError):
        return None
    found = exc.filename or (re.search(r"(?:directory|file)[^:]*: *'?([^'\n]+?)'?$", str(exc)) or [None, None])[1]
    if found and os.path.isfile(found) and not os.access(found, os.R_OK):
        return str(found)
    return None


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
    unreadable = _unreadable_file(exc)
    if unreadable:  # safetensors says "No such file or directory" of a file it may not open
        return f"cannot load {what}: cannot read {unreadable} (permission denied)"
    clauses = _state_dict_error_clauses(exc)
    if clauses:  # torch's load_state_dict lists them on the lines after its first
        return f"cannot load {what}: its weights do not fit the architecture ({'; '.join(clauses)})"
    return f"cannot load {what}: {type(exc).__name__}: {first_line(exc)}"


def _state_dict_error_clauses(exc: BaseException) -> list[str]:
    """`weight_mismatch_clauses` of the RuntimeError torch's strict `load_state_dict` raises ([] for others)."""
    import re

    text = str(exc)
    if not isinstance(exc, RuntimeError) or not text.startswith("Error(s) in loading state_dict"):
        return []

    def keys(label: str) -> list[str]:
        found = re.search(label + r' key\(s\) in state_dict: (.*?)\.\s*$', text, re.MULTILINE)
        return re.findall(r'"([^"]+)"', found.group(1)) if found else []

    def dims(listed: str) -> list[int]:  # "2, 7" -> [2, 7]
        return [int(n) for n in listed.split(",") if n.strip()]

    shapes = [(key, dims(ckpt), dims(model))
              for key, ckpt, model in re.findall(r"size mismatch for ([^:]+): copying a param with shape "
                                                 r"torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in "
                                                 r"current model is torch\.Size\(\[([^\]]*)\]\)", text)]
    return weight_mismatch_clauses(missing=keys("Missing"), unused=keys("Unexpected"), shapes=shapes)


@contextlib.contextmanager
def _translated_errors(role: str, name: str) -> Iterator[None]:
    """Turn what libraries raise while loading into ModelLoadError / MissingDependencyError."""
    from models.checkpoint_files import quiet_pickle_protocol_warning

    try:
        with quiet_pickle_protocol_warning():
            yield
    except (ModelLoadError, MissingDependencyError):
        raise
    except ImportError as exc:
        missing = getattr(exc, "name", None) or first_line(exc)
        raise MissingDependencyError(
            f"loading {_label(role)} '{name}' needs a package that is not installed ({missing}); pip install it"
        ) from exc
    except pickle.UnpicklingError as exc:  # a pytorch_model.bin torch.load(weights_only=True) refuses
        from models.checkpoint_files import pickle_refusal_error

        raise pickle_refusal_error(f"{_label(role)} '{name}'", exc) from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        # ConnectionError, FileNotFoundError and huggingface_hub's HTTP errors are OSErrors
        raise ModelLoadError(_message_for(exc, role, name)) from exc


def checked_from_pretrained(model_class: Any, source: str, *, role: str, name: str, refuse_unused: bool = True,
                            **kwargs: Any) -> Any:
    """`model_class.from_pretrained(source, **kwargs)`, refusing in one line a checkpoint that does not
    hold the model its config.json describes. transformers initialises the weights a checkpoint lacks
    at random and only logs a table (a partial copy, another architecture's checkpoint: the model then
    runs, is evaluated and trained, with random heads), and leaves out weights the model has no place
    for (a config.json of another size). `refuse_unused=False` for masked LMs and paraphrasers: a Hub
    MLM keeps its pre-training heads (bert-base-uncased's next-sentence head), which the masked-LM
    class rightly leaves out."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its multi-line report: the line below says what matters
    try:
        model, info = model_class.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    # `position_ids` was a saved buffer in older checkpoints (openai/clip-*): an index, not a weight
    unused = [key for key in info.get("unexpected_keys") or () if not key.endswith("position_ids")]
    problems = weight_mismatch_clauses(missing=info.get("missing_keys") or (), unused=unused if refuse_unused else (),
                                       shapes=info.get("mismatched_keys") or ())
    if problems:
        random = "; transformers would leave them random" if info.get("missing_keys") else ""
        raise ModelLoadError(f"cannot load {_label(role)} '{name}': its weights do not fit the model its config.json "
                             f"describes ({'; '.join(problems)}{random}): a partial copy, or a config of another "
                             "size or architecture; copy the folder again or use its own config.json")
    return model


def weight_mismatch_clauses(*, missing=(), unused=(), shapes=(), shown: int = 3) -> list[str]:
    """Clauses naming a checkpoint's missing, unused and wrongly shaped weights (a few of each, then
    how many more), for one-line loading errors. `shapes`: (key, checkpoint shape, model shape)."""
    def some(keys) -> str:
        keys = sorted(keys)
        more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    def count(n: int) -> str:
        return f"{n} weight" + ("s" if n != 1 else "")

    clauses = []
    if missing:
        clauses.append(f"{count(len(missing))} of the model missing: {some(missing)}")
    if unused:
        clauses.append(f"{count(len(unused))} the model has no place for: {some(unused)}")
    if shapes:
        described = [f"{key} is {list(ckpt)} in the checkpoint, {list(model)} in the model"
                     for key, ckpt, model in sorted(shapes, key=lambda item: item[0])]
        clauses.append(f"{count(len(described))} of another shape: {some(described)}")
    return clauses


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
    if not isinstance(target, str):  # (architecture, tag) pairs: open_clip names, see models.load_model
        raise ModelLoadError(f"'{name}' names an open_clip model; load it with models.load_model, not as a {_label(role)}")
    return target


def check_source_name(name: str, role: str) -> str:
    """`name` stripped, or ModelLoadError when it cannot be a `role` model: empty, or a built-in
    (tiny-*, world-mlm) of another role. Builds nothing: what a config check can afford before a
    long run that loads the model at its end."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"no {_label(role)} name given")
    name = name.strip()
    if name == "world-mlm" and role != "mlm":
        raise ModelLoadError(f"'{name}' is a {_label('mlm')}, not a {_label(role)}")
    if tiny.is_tiny_name(name):
        tiny.check_tiny_name(name)
        if tiny.TINY_ROLES[name] != role:
            raise ModelLoadError(f"'{name}' is a {_label(tiny.TINY_ROLES[name])}, not a {_label(role)}")
    return name


def check_loadable(name: str, role: str) -> None:
    """ModelLoadError now when `name` would not load as a `role` model later (unknown built-in, missing
    folder, a Hub id not cached offline), without building a built-in (tiny-*, world-mlm)."""
    name = check_source_name(name, role)
    if name != "world-mlm" and not tiny.is_tiny_name(name):
        resolve_source(name, role)


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
    name = check_source_name(name, role)
    if name == "world-mlm":  # trained on the sample world's captions, cached like the tiny twins
        from augment import world_mlm

        return ResolvedSource(name, str(world_mlm.world_mlm_dir(name)), True, tiny=name)
    if tiny.is_tiny_name(name):
        return ResolvedSource(name, str(tiny.tiny_dir(name)), True, tiny=name)
    target = _resolve_alias(name, role)
    if target.startswith("local-dir:") or os.path.isdir(os.path.expanduser(target)) or _looks_like_path(target):
        folder = Path(target.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            from augment.atomic import swap_leftover_note

            raise ModelLoadError(f"cannot load {_label(role)} '{name}': folder {folder} does not exist"
                                 f"{swap_leftover_note(folder)}")
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


class _FastProcessorNotice(logging.Filter):
    """Drops transformers 5.0-5.3's warning that a checkpoint saved with a slow image processor now loads a
    fast one ("This is a breaking change and may produce slightly different outputs"); 5.4 on load the fast
    one without it. The vision-language families read only the processor's settings (their own pixel
    transforms), so at every BLIP or captioner load it was a second, wrong line on stderr, also under a
    refusal that is one line (audit AX, transformers 5.0.0)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is now loaded as a fast processor" not in record.getMessage()


@contextlib.contextmanager
def without_fast_processor_notice():
    """Within the block, transformers' `_FastProcessorNotice` warning is not emitted."""
    logger = logging.getLogger("transformers.models.auto.image_processing_auto")
    notice = _FastProcessorNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _quiet_if_tiny(resolved: ResolvedSource):
    if not resolved.tiny:
        return contextlib.nullcontext()
    return quiet_progress_bars(tiny.progress_bar_libraries(resolved.tiny))


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


# libraries a pipeline component may name in model_index.json besides a module of
# diffusers.pipelines (SD 1.x's safety checker is ["stable_diffusion", ...]); any other names code
# shipped with the model
COMPONENT_LIBRARIES = ("diffusers", "transformers")


def custom_components(index: dict) -> dict[str, str]:
    """{component: "library.Class"} of the pipeline components in `index` (a model_index.json)
    whose library is neither diffusers, transformers nor a diffusers pipeline module: code that
    comes with the model. Checked here, before diffusers runs, because diffusers before 0.38 ran
    such code from a folder or a Hub repo whatever `trust_remote_code` said (0.27-0.36 did not
    even accept the argument for the SD pipelines): the project's guarantee does not rest on the
    installed version."""
    import diffusers.pipelines

    found = {}
    pipeline = index.get("_class_name")
    if isinstance(pipeline, (list, tuple)):  # ["module", "Class"]: a pipeline class of the model's own
        found["the pipeline"] = ".".join(str(part) for part in pipeline)
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        library, class_name = value
        if library is None or library in COMPONENT_LIBRARIES or hasattr(diffusers.pipelines, str(library)):
            continue
        found[component] = f"{library}.{class_name}"
    return found


def _check_sd_components(name: str, folder: Path, index: dict) -> None:
    """Each component model_index.json names (not null) must have its subfolder: diffusers
    otherwise builds the pipeline without it and fails later, far from the cause."""
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2:
            continue
        if value[0] is None or value[1] is None:
            continue
        if not (folder / component).is_dir():
            raise ModelLoadError(f"cannot load {_label('sd')} '{name}': folder {folder} has no {component}/ "
                                 "(its model_index.json lists it)")


def check_sd_folder(name: str, revision: str | None = None) -> None:
    """For a local pipeline folder, what `load_sd_pipeline` checks before loading: its
    model_index.json and the component subfolders it lists (cheap; nothing is loaded)."""
    resolved = resolve_source(name, "sd", required_file="model_index.json", revision=revision)
    if resolved.is_local:
        with _translated_errors("sd", name):
            _check_sd_components(name, Path(resolved.source), _read_model_index(resolved, revision))


def _check_tokenizer(role: str, name: str, tokenizer: Any, folder: str) -> None:
    """A folder without tokenizer files loads as a tokenizer of its special tokens only."""
    if tokenizer is not None and len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelLoadError(f"cannot load {_label(role)} '{name}': folder {folder} has no tokenizer files "
                             f"(its tokenizer has only {len(tokenizer)} special tokens)")


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
        if resolved.is_local:
            _check_sd_components(name, Path(resolved.source), index)
        custom = custom_components(index)
        if custom and not trust_remote_code:
            listed = ", ".join(f"{component} ({code})" for component, code in sorted(custom.items()))
            raise ModelLoadError(f"'{name}' ships its own code for {listed}; it is not run "
                                 "(trust_remote_code is off): use a pipeline of diffusers' and transformers' classes")
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
    with _translated_errors("captioner", name), _quiet_if_tiny(resolved), without_fast_processor_notice():
        processor = AutoProcessor.from_pretrained(resolved.source, **kwargs)
        _check_tokenizer("captioner", name, getattr(processor, "tokenizer", None), resolved.source)
        model = checked_from_pretrained(_image_text_auto_class(), resolved.source, role="captioner", name=name,
                                        **kwargs, dtype=as_torch_dtype(dtype))
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
        _check_tokenizer("paraphraser", name, tokenizer, resolved.source)
        model = checked_from_pretrained(model_class, resolved.source, role="paraphraser", name=name,
                                        refuse_unused=False, **kwargs, dtype=as_torch_dtype(dtype))
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
        _check_tokenizer("mlm", name, tokenizer, resolved.source)
        model = checked_from_pretrained(AutoModelForMaskedLM, resolved.source, role="mlm", name=name,
                                        refuse_unused=False, **kwargs, dtype=as_torch_dtype(dtype))
        model = model.to(device).eval()
    if tokenizer.mask_token is None:
        raise ModelLoadError(f"cannot use '{name}' as a masked LM: its tokenizer has no mask token")
    from models.sdpa import leave_out_cudnn

    leave_out_cudnn(model)  # its attention layers: no cuDNN attention on a GPU, as every loaded model's
    return model, tokenizer


def default_model(role: str):
    """The default real model id for `role` (see DEFAULT_MODELS)."""
    if role not in DEFAULT_MODELS:
        raise ModelLoadError(f"unknown model role '{role}'; known: {', '.join(DEFAULT_MODELS)}")
    return DEFAULT_MODELS[role]
