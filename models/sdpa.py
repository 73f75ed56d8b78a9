"""Scaled dot-product attention without cuDNN's backend on a GPU.

On Hopper GPUs torch (2.11 measured) prefers cuDNN's fused attention for half-precision inputs.
Each call of it spent milliseconds of host time for microseconds of GPU work (H200, ViT-B-16,
batch 128, amp, 2026-12-04, torch.profiler: 3.8 ms of CPU per forward call and 6.4 ms per
backward call, against 37 and 88 us on the GPU), so a clean training step took 0.60 s for
0.06 s of GPU work (0.137 s without it). Flash and memory-efficient attention launch in
microseconds; they are the ones allowed here, with the math kernel as the last resort (what
torch falls back to anyway for shapes they refuse). On a CPU torch's own choice is kept.

Three ways in, one choice (`GPU_BACKENDS`):
* `attention(q, k, v, attn_mask)`: the functional call, for the project's own attention code
  outside a module (the text prefix cache);
* `gpu_attention(device)`: the context for a module's whole forward (the batch-first
  `nn.MultiheadAttention` of `models/multihead_attention.py`, whose GPU inference path is torch's);
* `leave_out_cudnn(module)`: hooks around the attention layers of a transformers-built model
  (CLIPAttention, BertSelfAttention, ...: the leaf modules named `...Attention`), whose SDPA call
  happens inside transformers; `models.load_model` applies it to every family.
Written here because torch offers the backend choice only as a context manager or a process-wide
switch, and a library should not flip the latter for its users' other code.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

GPU_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def gpu_attention(device: torch.device):
    """The backend choice for attention computed on `device`: none on a CPU."""
    return contextlib.nullcontext() if device.type == "cpu" else sdpa_kernel(GPU_BACKENDS)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head width) + attn_mask) v, [..., queries, head width]."""
    with gpu_attention(q.device):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _is_attention_layer(module: nn.Module) -> bool:
    """A leaf attention layer of transformers' naming (`CLIPAttention`, `BertSelfAttention`,
    `BertCrossAttention`): named `...Attention`, no such layer inside it. torch's own
    `nn.MultiheadAttention` is left to `models/multihead_attention.py`."""
    def named(m: nn.Module) -> bool:
        return type(m).__name__.endswith("Attention") and not isinstance(m, nn.MultiheadAttention)

    return named(module) and not any(named(child) for child in module.modules() if child is not module)


def _runs_off_cpu(module: nn.Module) -> bool:
    parameter = next(module.parameters(), None)
    return parameter is not None and parameter.device.type != "cpu"


def _enter(module: nn.Module, args) -> None:
    context = sdpa_kernel(GPU_BACKENDS) if _runs_off_cpu(module) else None
    if context is not None:
        context.__enter__()
    module._sdpa_contexts.append(context)  # a stack: a layer may be called inside its own forward


def _exit(module: nn.Module, args, output) -> None:
    context = module._sdpa_contexts.pop() if module._sdpa_contexts else None
    if context is not None:
        context.__exit__(None, None, None)


def leave_out_cudnn(module: nn.Module) -> int:
    """Hook every transformers attention layer of `module` so that, off the CPU, its forward runs
    under `GPU_BACKENDS` (the exit hook runs when the forward raises too); the number hooked.
    Calling it again hooks nothing twice."""
    hooked = 0
    for layer in module.modules():
        if not _is_attention_layer(layer) or hasattr(layer, "_sdpa_contexts"):
            continue
        layer._sdpa_contexts = []
        layer.register_forward_pre_hook(_enter)
        layer.register_forward_hook(_exit, always_call=True)
        hooked += 1
    return hooked
