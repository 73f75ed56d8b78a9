"""Texts in sub-batches of similar length: a text tower pass pads every text to its batch's longest,
and each extra pass has a fixed cost; `length_groups` picks the split with the least work. Used by
open_clip's trimmed text tower (`models.open_clip_family`) and the text prefix cache
(`models.text_prefix`, any family)."""
from __future__ import annotations

from typing import Sequence

import torch

# a text-tower forward pass costs about this many token positions' work on top: sub-batches by
# length are cut only where they save more padding than that. Measured on 2 CPU cores (a pass over
# one 2-token text, in units of the per-token cost of 64 texts grown from 16 to 24 tokens): tiny-clip
# 173 positions (op dispatch, thread hand-offs), ViT-B-16's text tower 66 (its weights read once per
# pass); BERT-Attack on the bench world took 0.349 / 0.312 / 0.303 s with 32 / 128 / 256 (2 threads),
# 0.426 / 0.412 / 0.427 s (1 thread). 128 is near both towers' best; 32, the value before, cut 3-4
# sub-batches per call.
GROUP_OVERHEAD_TOKENS = 128
# on a GPU a pass costs its host-side calls (about 150 torch calls per pass of the text prefix cache,
# each a kernel launch of microseconds: ViT-B-16's batched BERT-Attack took 0.16 s on an H200, as
# long as tiny-clip's on 2 CPU cores, so host-bound), while padding a few more positions of short
# captions costs the GPU next to nothing: passes are cut only where lengths differ by far more.
# An estimate, not measured yet (on the bench world's BERT-Attack: 16 passes per call, not 29).
GPU_GROUP_OVERHEAD_TOKENS = 4096


def pass_overhead(device: torch.device | str) -> int:
    """`GROUP_OVERHEAD_TOKENS` for a text tower on `device`'s type: the CPU's, or a GPU's."""
    return GROUP_OVERHEAD_TOKENS if torch.device(device).type == "cpu" else GPU_GROUP_OVERHEAD_TOKENS


def sorted_length_groups(lengths: torch.Tensor, batch_size: int | None = None, overhead: int = GROUP_OVERHEAD_TOKENS
                         ) -> tuple[torch.Tensor, list[int], list[tuple[int, int]]]:
    """(order, sorted lengths, groups): `lengths` [N] sorted ascending (stable), split by
    `length_groups` (with `overhead`: `pass_overhead` of the tower's device) and each group cut
    into passes of at most `batch_size` rows (default: no limit); group (start, end) holds rows
    order[start:end]. `in_input_order` undoes the sort."""
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    groups = length_groups(sorted_lengths, overhead)
    if batch_size is not None:
        groups = [(a, min(a + batch_size, end)) for start, end in groups for a in range(start, end, batch_size)]
    return order, sorted_lengths, groups


def in_input_order(parts: Sequence[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    """The per-group results of `sorted_length_groups`, concatenated, back in the input's row order."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(list(parts))[inverse]


def length_groups(lengths: Sequence[int], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[tuple[int, int]]:
    """Split ascending `lengths` into contiguous groups [(start, end)], each run as one batch padded
    to its longest: the split with the fewest token positions computed, counting `overhead`
    positions per extra forward pass (dynamic programming over the places where the length changes)."""
    n = len(lengths)
    if n == 0:
        return []
    cuts = [0] + [i for i in range(1, n) if lengths[i] != lengths[i - 1]] + [n]
    best = [0] + [None] * (len(cuts) - 1)  # best[k]: cost of the first cuts[k] texts
    back = [0] * len(cuts)
    for k in range(1, len(cuts)):
        end = cuts[k]
        best[k], back[k] = min((best[j] + overhead + (end - cuts[j]) * lengths[end - 1], j) for j in range(k))
    groups, k = [], len(cuts) - 1
    while k > 0:
        groups.append((cuts[back[k]], cuts[k]))
        k = back[k]
    return groups[::-1]
