"""ALBEF's released checkpoints (`torch.save` dicts) <-> the family's modules, by key mapping.

ALBEF.pth, ALBEF_4M.pth, flickr30k.pth, mscoco.pth, refcoco.pth, SGA's albef_retrieval_flickr.pth
and TCL's tcl_retrieval_*.pth hold `{'model': state_dict, 'optimizer': ..., 'config': ...}`.
The state dict uses ALBEF's module names, which the family keeps, so the mapping only:

* keeps the momentum copies (`*_m.`) and queues apart: the main weights are loaded; when momentum
  distillation is turned on (training), the momentum encoders and queues are read from the file,
  as ALBEF's and TCL's Retrieval.py / Grounding.py load the whole checkpoint (`strict=False`), and
  copied from the main weights only where the file has none (`load_released_momentum`);
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
from models.checkpoint_files import check_checkpoint_file, pickle_refusal_error, quiet_pickle_protocol_warning

log = logging.getLogger(__name__)

_DROPPED_PREFIXES = ("text_encoder.cls.", "text_encoder.pooler.")
_DROPPED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an ALBEF-style checkpoint file (under 'model', or the file itself)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"cannot load ALBEF checkpoint {path}: no such file")
    check_checkpoint_file(path, "ALBEF checkpoint")
    try:
        with quiet_pickle_protocol_warning():
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise pickle_refusal_error(path, exc) from None
    except Exception as exc:  # torch.load raises many types for a corrupt or foreign file
        raise ModelLoadError(f"cannot load ALBEF checkpoint {path}: {type(exc).__name__}: {first_line(exc)}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"cannot load ALBEF checkpoint {path}: no state dict under 'model' or at the top level")
    return state


def official_to_native(state: dict[str, torch.Tensor], momentum: bool = False
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(main weights under the family's names, keys left out); `momentum=True`: the momentum copies
    and queues instead of the main weights, under the same mapping."""
    native, dropped = {}, []
    for key, value in state.items():
        if (key.startswith(MOMENTUM_PREFIXES) or key in QUEUE_NAMES) != momentum:
            dropped.append(key)
            continue
        mapped = key.replace("text_encoder.bert.", "text_encoder.").replace("text_encoder_m.bert.", "text_encoder_m.")
        if mapped.replace("text_encoder_m.", "text_encoder.").startswith(_DROPPED_PREFIXES) \
                or mapped.endswith(_DROPPED_SUFFIXES):
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


def resample_pos_embeds(model: AlbefModel, state: dict[str, torch.Tensor]) -> None:
    """The ViT position embeddings in `state` (the main encoder's and the momentum copy's, where
    present) resized in place to the model's patch grid, as ALBEF resizes both."""
    grid = model.image_size // int(model.config["patch_size"])
    for key in ("visual_encoder.pos_embed", "visual_encoder_m.pos_embed"):
        if key in state:
            state[key] = resample_pos_embed(state[key], grid)


def load_official_state(model: AlbefModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load an official-layout state dict into `model` (main weights; momentum copies reset)."""
    native, dropped = official_to_native(state)
    resample_pos_embeds(model, native)
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
    if unexpected:  # after the mapping a released ALBEF/TCL checkpoint has none: a config of a smaller model
        shown = ", ".join(unexpected[:4]) + (f" and {len(unexpected) - 4} more" if len(unexpected) > 4 else "")
        raise ModelLoadError(f"ALBEF {source} holds {len(unexpected)} weights the model has no place for ({shown}): "
                             "a config of a smaller model than the checkpoint's, or not an ALBEF/TCL retrieval "
                             "checkpoint (give its BERT config JSON and YAML)")
    log.info("ALBEF %s: %d weights loaded, %d momentum/queue/MLM entries set apart", source, len(expected),
             len(dropped))
    with torch.no_grad():
        model.load_state_dict({k: native[k] for k in expected}, strict=False)
    if model.momentum_distillation:
        load_released_momentum(model, state, source)


def load_released_momentum(model: AlbefModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """The momentum encoders and queues of `model` (momentum distillation on) from a released
    checkpoint's state dict, as ALBEF's fine-tuning starts: its `*_m` copies (ALBEF's pre-training
    moved them apart from the main weights) and its queues, `[embed_dim, queue_size]` there. A file
    without momentum copies (or of other shapes) gives copies of the main weights; queues are taken
    where their size is the config's `queue_size`, `idx_queue` only from retrieval checkpoints
    (pre-training has none: every slot stays -100, no positive, as ALBEF's buffer starts)."""
    native, _ = official_to_native(state, momentum=True)
    resample_pos_embeds(model, native)
    copies = {k: v for k, v in model.state_dict().items() if k.startswith(MOMENTUM_PREFIXES)}
    fits = all(k in native and tuple(native[k].shape) == tuple(v.shape) for k, v in copies.items())
    queues = {"image_queue": native.get("image_queue"), "text_queue": native.get("text_queue"),
              "idx_queue": native.get("idx_queue"), "queue_ptr": native.get("queue_ptr")}
    size = int(model.config["queue_size"])
    layout = {  # ALBEF's layout -> the model's
        "image_queue": lambda t: t.T if t.dim() == 2 and tuple(t.T.shape) == tuple(model.image_queue.shape) else None,
        "text_queue": lambda t: t.T if t.dim() == 2 and tuple(t.T.shape) == tuple(model.text_queue.shape) else None,
        "idx_queue": lambda t: t.reshape(-1) if t.numel() == size else None,
        "queue_ptr": lambda t: t.reshape(1) if t.numel() == 1 and 0 <= int(t.reshape(-1)[0]) < size else None,
    }
    taken = {name: layout[name](value) for name, value in queues.items() if value is not None}
    taken = {name: value for name, value in taken.items() if value is not None}
    if {"image_queue", "text_queue"} - set(taken):  # half a queue is no queue: ALBEF's random start for all
        taken = {}
    with torch.no_grad():
        if fits:
            for key, value in copies.items():
                value.copy_(native[key])
        else:
            model.reset_momentum()
        for name, value in taken.items():
            getattr(model, name).copy_(value)
    if not fits or not taken:
        left = [what for what, ok in (("momentum encoders (copied from the main weights)", fits),
                                       (f"queues of {size} (random, as ALBEF's start)", bool(taken))) if not ok]
        log.warning("ALBEF %s: no %s in the file", source, " and no ".join(left))


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
