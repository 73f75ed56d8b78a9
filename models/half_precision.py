"""Half-precision autocast for evaluation and attacks: the `--precision` context, the precision in
force, and input gradients that do not underflow in fp16.

`tf32` keeps fp32 weights and activations and lets a CUDA device run float32 matrix products and
convolutions on TF32 tensor cores (inputs rounded to 10 mantissa bits, fp32 accumulation): what
open_clip_train turns on for every run on a GPU, and several times fp32's throughput on Ampere and
later. Here it is asked for by name, so that `fp32` stays torch's default numerics (IEEE matrix
products: the reference attack code's), and the flags are set only for the run and restored after.
On a CPU it is fp32 and is recorded as such.

Weights stay fp32; `autocast(device, "amp_fp16" | "amp_bf16")` runs the forward passes in half
precision (torch.autocast), as `train eval --precision` does for every task and accelerate's `amp`
does in training. The names are open_clip_train's, the trainer's too (`amp` = `amp_fp16`); its
`fp16`, `bf16`, `pure_*` mean half-precision weights there and are refused here, so that one word
never means two things across `train` and `train eval`. Every attack that follows a gradient (PGD,
the multimodal attacks' image steps, ALBEF's Grad-CAM) takes it with `input_gradient`, which under
fp16 autocast multiplies the loss by a scale before the backward pass and divides the gradient by it
afterwards: fp16's smallest step is 6e-8, and a pixel's gradient of a batch-mean loss is about that
size (measured on a random-weight ViT-B-16 at 224 px, 8 images: 1.4% of the pixels' gradients were
exactly 0 and 4.2% of their signs differed from fp32's; with the scale 0.05%, under bf16 0.4%). bf16
has fp32's exponent range and needs no scale. This is what torch.amp.GradScaler does for parameter
gradients, which an attack's `torch.autograd.grad` on the input does not get.
"""
from __future__ import annotations

import contextlib

import torch

# amp_bfloat16: open_clip_train's other spelling of amp_bf16
_DTYPES = {"fp32": None, "tf32": None, "amp": torch.float16, "amp_fp16": torch.float16, "amp_bf16": torch.bfloat16,
           "amp_bfloat16": torch.bfloat16}
PRECISIONS = tuple(_DTYPES)
HALF_WEIGHTS = ("fp16", "bf16", "pure_fp16", "pure_bf16")  # open_clip_train: half-precision weights
# tried in turn under fp16 autocast until the gradient is finite (GradScaler's initial scale, then a
# smaller one); if neither is, the gradient is taken unscaled, as it would be without this
FP16_LOSS_SCALES = (2.0 ** 16, 2.0 ** 8)


def score_head(head: torch.nn.Linear, states: torch.Tensor) -> torch.Tensor:
    """`head(states)` in float32 with autocast off: a match head's logits under bf16 autocast are rounded
    to 2^-8 of their size (spacing 0.016-0.03 for logits of 2-4), so close candidates tie when re-ranked,
    and a tie counts as a miss. The states keep the precision they were computed in."""
    with torch.autocast(states.device.type, enabled=False):
        bias = None if head.bias is None else head.bias.float()
        return torch.nn.functional.linear(states.float(), head.weight.float(), bias)


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`; else ValueError in one line (open_clip's half-weight
    names told what to use instead)."""
    if precision in HALF_WEIGHTS:
        raise ValueError(f"precision {precision!r} means half-precision weights (open_clip_train); evaluation keeps "
                         f"fp32 weights under autocast: use amp_fp16 (= amp) or amp_bf16")
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The context `--precision` runs forward passes in: torch.autocast for amp/amp_fp16/amp_bf16,
    TF32 matrix products for tf32 (`tf32_matmuls`), nothing for fp32."""
    dtype = _DTYPES[check_precision(precision)]
    if precision == "tf32":
        return tf32_matmuls(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def tf32_matmuls(device: torch.device | str):
    """On a CUDA device: cuBLAS's and cuDNN's float32 products on TF32 tensor cores while the
    context is open, torch's process-wide flags restored on leaving it (the user's other code keeps
    its own choice). Elsewhere nothing changes: a CPU has no TF32 path."""
    if torch.device(device).type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast runs on `device`'s type right now, or None when it is off."""
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def active_precision(device: torch.device | str) -> str:
    """"fp32", "tf32", "amp_fp16" or "amp_bf16": what forward passes on `device` run in now (reports
    and resume tags; `amp` is recorded by what it runs, amp_fp16; tf32 only where it runs, on CUDA
    with TF32 matrix products allowed)."""
    dtype = autocast_dtype(device)
    if dtype is None and torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return {None: "fp32", torch.float16: "amp_fp16", torch.bfloat16: "amp_bf16"}.get(dtype, str(dtype))


def input_gradient(output: torch.Tensor, inputs: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """`torch.autograd.grad(output, inputs)` of a scalar `output`, loss-scaled under fp16 autocast
    (module doc): the first of `FP16_LOSS_SCALES` whose gradient is finite, divided back in fp32.
    Under fp32 or bf16 it is exactly `torch.autograd.grad`."""
    if autocast_dtype(output.device) == torch.float16:
        for scale in FP16_LOSS_SCALES:
            (gradient,) = torch.autograd.grad(output * scale, inputs, retain_graph=True, create_graph=create_graph)
            if bool(torch.isfinite(gradient).all()):
                return gradient.float() / scale
    (gradient,) = torch.autograd.grad(output, inputs, create_graph=create_graph)
    return gradient
