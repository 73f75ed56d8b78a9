"""`F.scaled_dot_product_attention` without cuDNN's backend on a GPU.

On Hopper GPUs torch (2.11 measured) prefers cuDNN's fused attention. Each call of it spent
milliseconds of host time for microseconds of GPU work (H200, ViT-B-16, batch 128, amp,
2026-12-04, torch.profiler: 3.8 ms of CPU per forward call and 6.4 ms per backward call,
against 37 and 88 us on the GPU), so a clean training step took 0.60 s for 0.06 s of GPU work
and every attack step was host-bound alike. Flash and memory-efficient attention launch in
microseconds; they are the ones allowed here, with the math kernel as the last resort (what
torch falls back to anyway for shapes they refuse). On a CPU torch's own choice is kept.

`attention(q, k, v, attn_mask)` is the call the project's own attention code makes (the
batch-first `nn.MultiheadAttention` of `models/multihead_attention.py`, the text prefix cache).
Written here because torch offers the backend choice only as a context manager or a process-wide
switch, and a library should not flip the latter for its users' other code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

GPU_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head width) + attn_mask) v, [..., queries, head width]."""
    if q.device.type == "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    with sdpa_kernel(GPU_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
