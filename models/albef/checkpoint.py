"""ALBEF's released checkpoints (`torch.save` dicts) <-> the family's modules, by key mapping.

ALBEF.pth, ALBEF_4M.pth, flickr30k.pth, mscoco.pth, refcoco.pth, SGA's albef_retrieval_flickr.pth
and TCL's tcl_retrieval_*.pth hold `{'model': state_dict, 'optimizer': ..., 'config': ...}`.
The state dict uses ALBEF's module names, which the family keeps, so the mapping only:

* drops the momentum copies (`*_m.`) and queues: the main weights are loaded and the momentum
  copies are initialised from them, as ALBEF's fine-tuning starts;
* drops `bert.` (pre-training checkpoints hold a `BertForMaskedLM`: `text_encoder.bert.*`) and
  the pre-training MLM head (`text_encoder.cls.*`) and `position_ids` buffers;
* interpolates the ViT position embeddings to the model's image size (bicubic, as ALBEF's
  `interpolate_pos_embed`).

Files are read with `torch.load(weights_only=True)`: a checkpoint that needs pickle is refused.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from augment.errors import ModelLoadError, first_line
from models.albef.model import MOMENTUM_PREFIXES, QUEUE_NAMES, AlbefModel
from models.checkpoint_files import looks_like_torch_checkpoint, not_a_checkpoint_error, pickle_refusal_error

log = logging.getLogger(__name__)

_DROPPED_PREFIXES = ("text_encoder.cls.", "text_encoder.pooler.")
_DROPPED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an ALBEF-style checkpoint file (under 'model', or the file itself)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"cannot load ALBEF checkpoint {path}: no such file")
    if not looks_like_torch_checkpoint(path):
        raise not_a_checkpoint_error(path, "ALBEF checkpoint")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise pickle_refusal_error(path, exc) from None
    except Exception as exc:  # torch.load raises many types for a corrupt or foreign file
        raise ModelLoadError(f"cannot load ALBEF checkpoint {path}: {type(exc).__name__}: {first_line(exc)}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"cannot load ALBEF checkpoint {path}: no state dict under 'model' or at the top level")
    return state


def official_to_native(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(main weights under the family's names, keys dropped on purpose)."""
    native, dropped = {}, []
    for key, value in state.items():
        if key.startswith(MOMENTUM_PREFIXES) or key in QUEUE_NAMES:
            dropped.append(key)
            continue
        mapped = key.replace("text_encoder.bert.", "text_encoder.")
        if mapped.startswith(_DROPPED_PREFIXES) or mapped.endswith(_DROPPED_SUFFIXES):
            dropped.append(key)
            continue
        native[mapped] = value
    return native, dropped


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + g*g, W] -> [1, 1 + grid*grid, W]: the [CLS] entry kept, the patch grid bicubic."""
    old = int(round((pos_embed.shape[1] - 1) ** 0.5))
    if old * old != pos_embed.shape[1] - 1:
        raise ModelLoadError(f"ALBEF pos_embed of {pos_embed.shape[1] - 1} patches is not a square grid")
    if old == grid:
        return pos_embed
    from timm.layers import resample_abs_pos_embed

    # the same as ALBEF's interpolate_pos_embed: bicubic, align_corners=False, no antialiasing
    return resample_abs_pos_embed(pos_embed, new_size=[grid, grid], old_size=[old, old], num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False, verbose=False)


def load_official_state(model: AlbefModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load an official-layout state dict into `model` (main weights; momentum copies reset)."""
    native, dropped = official_to_native(state)
    grid = model.image_size // int(model.config["patch_size"])
    if "visual_encoder.pos_embed" in native:
        native["visual_encoder.pos_embed"] = resample_pos_embed(native["visual_encoder.pos_embed"], grid)
    expected = model.main_state_dict()
    missing = [k for k in expected if k not in native]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelLoadError(f"ALBEF {source} lacks {len(missing)} weights of the model ({shown}): not an ALBEF/TCL "
                             "checkpoint, or one of another size (give its BERT config JSON and YAML)")
    for key, value in expected.items():
        if tuple(native[key].shape) != tuple(value.shape):
            raise ModelLoadError(
                f"ALBEF {source} does not fit the model config: {key} is {tuple(native[key].shape)} in the "
                f"checkpoint, {tuple(value.shape)} in the model (give the checkpoint's BERT config JSON and YAML)")
    unexpected = [k for k in native if k not in expected]
    if unexpected:
        log.warning("ALBEF %s: %d weights not used (%s)", source, len(unexpected), ", ".join(unexpected[:5]))
    log.info("ALBEF %s: %d weights loaded, %d momentum/queue/MLM entries skipped", source, len(expected), len(dropped))
    with torch.no_grad():
        model.load_state_dict({k: native[k] for k in expected}, strict=False)
    model.reset_momentum()


def official_state_dict(model: AlbefModel) -> dict[str, torch.Tensor]:
    """The model's weights in ALBEF's own layout (as `ALBEF.state_dict()` of models/model_retrieval.py):
    main weights, momentum copies (the model's, or copies of the main weights), queues as
    [embed_dim, queue_size] columns, `idx_queue` [1, queue_size], `queue_ptr`, `position_ids`."""
    main = {k: v.detach().clone() for k, v in model.main_state_dict().items()}
    state = dict(main)
    for prefix in MOMENTUM_PREFIXES:
        source = prefix.replace("_m.", ".")
        if model.momentum_distillation:
            module = getattr(model, prefix[:-1])
            state.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
        else:
            state.update({prefix + k[len(source):]: v.clone() for k, v in main.items() if k.startswith(source)})
    bert = model.config["bert"]
    positions = torch.arange(int(bert["max_position_embeddings"])).expand((1, -1)).clone()
    state["text_encoder.embeddings.position_ids"] = positions
    state["text_encoder_m.embeddings.position_ids"] = positions.clone()
    size, dim = int(model.config["queue_size"]), int(model.config["embed_dim"])
    if model.momentum_distillation:
        state["image_queue"] = model.image_queue.detach().T.clone()
        state["text_queue"] = model.text_queue.detach().T.clone()
        state["idx_queue"] = model.idx_queue.detach().view(1, -1).clone()
        state["queue_ptr"] = model.queue_ptr.detach().clone()
    else:
        state["image_queue"] = F.normalize(torch.randn(dim, size), dim=0)
        state["text_queue"] = F.normalize(torch.randn(dim, size), dim=0)
        state["idx_queue"] = torch.full((1, size), -100)
        state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return state
