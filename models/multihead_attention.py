"""`nn.MultiheadAttention` computed in the batch-first layout it is called with.

open_clip's transformers (every open_clip ViT and text tower) run `nn.MultiheadAttention(...,
batch_first=True)`. Whenever torch does not take its inference fast path (a gradient is needed,
the module is training, autocast is on, or the query is not the key: the pooled last block of
`models/pooled_block.py`) it transposes the (batch, sequence, width) input to (sequence, batch,
width) and runs `F.multi_head_attention_forward`, which copies the heads back into (batch, heads,
sequence, head width) for `F.scaled_dot_product_attention`, and the output back again: four
layout copies per layer forward, their copies and zero-filled stacks again backward. Worse,
where the in-projection weight is frozen (`--lock-image`, a victim frozen with
`requires_grad_(False)`) torch's matmul runs the transposed view as one small product per
sequence position over an expanded copy of the weight (ViT-B-16, 4 images, 1 thread: 69 ms per
layer forward against 28 ms as one matmul).

`BatchFirstMultiheadAttention` runs the same three operations (the packed in-projection
`F.linear`, `F.scaled_dot_product_attention`, the out-projection `F.linear`) on the batch-first
input, heads split by views: on a CPU the same kernels on the same values, so outputs and input
gradients are bit-identical to the library's module in every measurement (on a GPU it leaves
out cuDNN's attention backend, `models/sdpa.py`, so there they differ by the kernels'
rounding); the weights' gradients sum the batch's rows in another order (batch-major, not
sequence-major), equal up to float rounding (2e-5 on a 64 x 17 x 128 batch; tested within 1e-5
relative), so training runs move by float rounding, as any change of summation order does.
Measured on CPU
(2 threads, tiny-clip): the image tower's forward and input gradient on 160 images 47 -> 41 ms,
the text tower without gradients on 1,000 captions 135 -> 100-120 ms, where torch's own
no-gradient path was the general one too. Taken for batched self-attention and for a query
attending to a key that is also the value, without padding mask, attention weights, dropout in
effect, `bias_k` or `add_zero_attn`: on CPU always, elsewhere where torch would take its general
path (its fast path for inference on a GPU is kept, it was not measured against). Other calls on
the general path get the previous remedy, the sequence-first copy made contiguous before the
library's function (one in-projection matmul with frozen weights); everything else is
`nn.MultiheadAttention.forward` unchanged.

`use_batch_first_attention(module)` switches modules by swapping their class, so parameters,
state-dict keys, checkpoints and `isinstance(m, nn.MultiheadAttention)` stay as they were;
`enabled=False` switches them back. Written here because torch's module makes the layout choice
inside its forward, with no option.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sdpa import gpu_attention


class BatchFirstMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` that computes batch-first attention without sequence-first copies
    (see the module docstring). Made by `use_batch_first_attention`."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if query.device.type != "cpu":  # torch's inference path included: no cuDNN attention (models/sdpa.py)
            with gpu_attention(query.device):
                return self._forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                     average_attn_weights, is_causal)
        return self._forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                             is_causal)

    def _forward(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                 is_causal) -> tuple[torch.Tensor, torch.Tensor | None]:
        general = self._takes_general_path(query, key, value)
        if (general or query.device.type == "cpu") and self._runs_batch_first(
                query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
            return self._batch_first(query, key, attn_mask), None
        if general and query is key and key is value:
            sequence_first = query.transpose(0, 1).contiguous()
            output, weights = F.multi_head_attention_forward(
                sequence_first, sequence_first, sequence_first, self.embed_dim, self.num_heads,
                self.in_proj_weight, self.in_proj_bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
                self.out_proj.weight, self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
                need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                is_causal=is_causal)
            return output.transpose(0, 1), weights
        return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                               attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)

    def _batched_key_value(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """Batch-first attention on plain batched tensors whose key is the value (self-attention, or
        the pooled last block's query): the calls this class may take over."""
        return (self.batch_first and self._qkv_same_embed_dim and key is value and query.dim() == 3
                and key.dim() == 3 and not query.is_nested)

    def _takes_general_path(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """`_batched_key_value` calls where torch would not take its fast path (which wants
        self-attention, no gradient, eval mode and no autocast)."""
        if not self._batched_key_value(query, key, value):
            return False
        wants_gradient = torch.is_grad_enabled() and (
            query.requires_grad or key.requires_grad or any(p.requires_grad for p in self.parameters()))
        return (query is not key or self.training or wants_gradient
                or torch.is_autocast_enabled(query.device.type))

    def _runs_batch_first(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        """Whether `_batch_first` computes this call exactly as the library's module would."""
        if not self._batched_key_value(query, key, value) or query.shape[0] != key.shape[0]:
            return False
        if key_padding_mask is not None or need_weights or is_causal or self.bias_k is not None or self.add_zero_attn:
            return False
        if self.training and self.dropout > 0:
            return False
        if attn_mask is not None and attn_mask.dim() == 3 and attn_mask.shape[0] != query.shape[0] * self.num_heads:
            return False
        return True

    def _batch_first(self, query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, queries, width = query.shape
        keys, heads = key.shape[1], self.num_heads
        head_width = width // heads
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if query is key:  # self-attention: one packed in-projection, split into q, k, v by views
            q, k, v = (F.linear(query, weight, bias).view(batch, queries, 3, heads, head_width)
                       .permute(2, 0, 3, 1, 4).unbind(0))
        else:
            q_weight, kv_weight = weight.split([width, 2 * width])
            q_bias, kv_bias = bias.split([width, 2 * width]) if bias is not None else (None, None)
            q = F.linear(query, q_weight, q_bias).view(batch, queries, heads, head_width).transpose(1, 2)
            k, v = (F.linear(key, kv_weight, kv_bias).view(batch, keys, 2, heads, head_width)
                    .permute(2, 0, 3, 1, 4).unbind(0))
        mask = None
        if attn_mask is not None:
            mask = attn_mask
            if mask.dtype == torch.bool:  # the module's True = may not attend; a float mask for SDPA
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(mask, float("-inf"))
            mask = mask.to(q.dtype)
            if mask.dim() == 3:  # [batch * heads, queries, keys], heads inner as the module lays them out
                mask = mask.view(batch, heads, queries, keys)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [batch, heads, queries, head width]
        return F.linear(out.transpose(1, 2).reshape(batch, queries, width), self.out_proj.weight, self.out_proj.bias)


def use_batch_first_attention(module: nn.Module, enabled: bool = True) -> int:
    """Switch every plain `nn.MultiheadAttention` in `module` to `BatchFirstMultiheadAttention`
    (`enabled`) or back; returns how many were switchable. Subclasses of the library's module are
    left alone (they may override its forward)."""
    target = BatchFirstMultiheadAttention if enabled else nn.MultiheadAttention
    count = 0
    for child in module.modules():
        if type(child) in (nn.MultiheadAttention, BatchFirstMultiheadAttention):
            child.__class__ = target
            count += 1
    return count


def uses_batch_first_attention(module: nn.Module) -> bool:
    return any(type(child) is BatchFirstMultiheadAttention for child in module.modules())
