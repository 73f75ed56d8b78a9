"""`nn.MultiheadAttention` whose in-projection is one matrix product where gradients are needed.

open_clip's transformers (every open_clip ViT and text tower) run `nn.MultiheadAttention(...,
batch_first=True)`. Whenever a gradient is needed torch takes the module's general path, which
transposes the (batch, sequence, width) input to (sequence, batch, width) as a strided view and
hands it to `F.multi_head_attention_forward`. Where the in-projection weight requires a gradient
(training), torch's matmul copies that view and runs one matrix product; where it does not (a
frozen tower under an image attack: `--lock-image`, a victim frozen with `requires_grad_(False)`)
it runs a batched product over the sequence positions, each with an expanded copy of the weight:
at ViT-B-16's size (197 positions, 4 images, one CPU thread) 69 ms per layer forward and as much
backward, against 28 ms as one matmul; that frozen model's PGD step (forward and input gradient)
took 4.2 s instead of 3.2 s (1.31x, bit-identical loss and gradients). With trainable weights both
take ~3.3 s.

`ContiguousMultiheadAttention` makes that sequence-first copy contiguous (0.6M floats at that size)
before calling the same `F.multi_head_attention_forward` with the module's own parameters, for
batched self-attention (query, key and value the same tensor) where torch would take the general
path anyway (a gradient is needed, the module is training, or autocast is on). Everything else, the inference fast
path included, is `nn.MultiheadAttention.forward` unchanged. `use_contiguous_attention(module)`
switches modules by swapping their class, so parameters, state-dict keys, checkpoints and
`isinstance(m, nn.MultiheadAttention)` stay as they were; `enabled=False` switches them back.
Written here because torch's module makes the layout choice inside its forward, with no option.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContiguousMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` that gives its in-projection a contiguous sequence-first input on the
    general path of batch-first self-attention (see the module docstring). Made by
    `use_contiguous_attention`."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self._takes_general_path(query, key, value):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        sequence_first = query.transpose(0, 1).contiguous()
        output, weights = F.multi_head_attention_forward(
            sequence_first, sequence_first, sequence_first, self.embed_dim, self.num_heads,
            self.in_proj_weight, self.in_proj_bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            self.out_proj.weight, self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            is_causal=is_causal)
        return output.transpose(0, 1), weights

    def _takes_general_path(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """Batch-first self-attention on a plain batched tensor where torch would not take its fast path."""
        if not (self.batch_first and self._qkv_same_embed_dim and query is key and key is value):
            return False
        if query.dim() != 3 or query.is_nested:
            return False
        wants_gradient = torch.is_grad_enabled() and (
            query.requires_grad or any(p.requires_grad for p in self.parameters()))
        # torch's fast path also refuses autocast (mixed-precision evaluation on a GPU)
        return self.training or wants_gradient or torch.is_autocast_enabled(query.device.type)


def use_contiguous_attention(module: nn.Module, enabled: bool = True) -> int:
    """Switch every plain `nn.MultiheadAttention` in `module` to `ContiguousMultiheadAttention`
    (`enabled`) or back; returns how many were switchable. Subclasses of the library's module are
    left alone (they may override its forward)."""
    target = ContiguousMultiheadAttention if enabled else nn.MultiheadAttention
    count = 0
    for child in module.modules():
        if type(child) in (nn.MultiheadAttention, ContiguousMultiheadAttention):
            child.__class__ = target
            count += 1
    return count


def uses_contiguous_attention(module: nn.Module) -> bool:
    return any(type(child) is ContiguousMultiheadAttention for child in module.modules())
