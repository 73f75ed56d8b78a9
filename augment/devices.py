"""`--device`: one default and one check shared by every command that takes one (`augment generate`,
`augment score`, `train eval`), before anything is read or loaded.

The default is `default_device()`: cuda when torch sees a GPU, else cpu (MPS only when asked:
the trainer's accelerate picks it by itself, `train --cpu` declines it). `generate` and `score`
defaulted to cpu, `train eval` to cuda: a GPU machine scored on its CPU unless told.

A device torch cannot parse (`gpu`) or one this machine does not have (`cuda` without CUDA, `cuda:1`
on a one-GPU machine, `mps` off Apple silicon) is one line naming the option, exit status 2: it used
to surface from the model loader as "cannot load CLIP model 'tiny-clip': RuntimeError: ...", which
blamed the model.
"""
from __future__ import annotations

from augment.errors import MatPlusError


def default_device() -> str:
    """cuda when torch sees a GPU, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(text: str | None, default: str | None = None) -> str:
    """The device a command runs on: `--device` as given, else `default`, else `default_device()`;
    checked (`check_device`) before anything loads."""
    device = text or default or default_device()
    check_device(device)
    return device


def check_device(text: str, option: str = "--device"):
    """`torch.device(text)` when this machine has it; else MatPlusError in one line."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise MatPlusError(f"{option} {text}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MatPlusError(f"{option} {text}: torch sees no CUDA device here")
        if device.index is not None and device.index >= count:
            raise MatPlusError(f"{option} {text}: torch sees {count} CUDA device{'s' if count > 1 else ''} here "
                               f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise MatPlusError(f"{option} {text}: torch sees no MPS device here (Apple silicon, with a torch built "
                               "for it)")
    elif device.type not in ("cpu", "meta"):  # xpu and the like: their module says whether one is here
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if callable(available) and not available():
            raise MatPlusError(f"{option} {text}: torch sees no {device.type.upper()} device here")
    return device
