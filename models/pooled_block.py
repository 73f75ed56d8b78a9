"""The last transformer block of an open_clip tower at the one position its pooling reads.

A CLIP text tower pools its end-of-text token and a ViT with `pool_type='tok'` its class token;
nothing after the last block reads the other positions. That block still needs every position's
keys and values, but its query, attention output, residuals and MLP only at the pooled position:
10 of its 12 width-squared products per token. `pooled_last_block` computes exactly that (equal to
the whole block's pooled row up to float summation order); it saves ~40% of a 2-block tower and
~7% of a 12-block one (ViT-B-16), forward and backward alike.

* Text: `OpenClipModel._text_tower` (the trimmed tower of `fast_text`) calls it with the causal
  mask's row at each text's pooled token.
* Vision: `ClassTokenTransformer` is open_clip's `Transformer` whose forward returns the class
  token's row only ([N, 1, D]); `use_class_token_transformer(module)` swaps the class of every
  qualifying ViT's transformer (class-token pooling, no attentional pooler, no token outputs), so
  parameters, state-dict keys and checkpoints stay as they were; `enabled=False` swaps them back.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def plain_block_stack(transformer: nn.Module) -> bool:
    """Whether an open_clip `Transformer` is the plain batch-first stack of self-attention blocks
    (`nn.MultiheadAttention`) that `pooled_last_block` reproduces."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(transformer, "resblocks", None)
    return (bool(blocks) and getattr(transformer, "batch_first", False)
            and all(type(b) is ResidualAttentionBlock and isinstance(b.attn, nn.MultiheadAttention)
                    and not hasattr(b, "ln_1_kv") for b in blocks))


def pooled_last_block(block, x: torch.Tensor, pooled: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """open_clip's `ResidualAttentionBlock(x, attn_mask)` at one position per sequence, `pooled` [N]:
    its output rows x[n, pooled[n]] as [N, D]. `causal`: the causal mask's row `pooled[n]` (keys after
    the pooled token, padding included, are masked); otherwise every key is seen (a ViT)."""
    rows = torch.arange(x.shape[0], device=x.device)
    normed = block.ln_1(x)
    query = normed[rows, pooled].unsqueeze(1)  # [N, 1, D]
    mask = None
    if causal:
        after = torch.arange(x.shape[1], device=x.device)[None, :] > pooled[:, None]  # [N, L]
        mask = torch.zeros(after.shape, dtype=normed.dtype, device=x.device).masked_fill(after, float("-inf"))
        mask = mask.repeat_interleave(block.attn.num_heads, dim=0).unsqueeze(1)  # [N * heads, 1, L]
    attended = block.attn(query, normed, normed, need_weights=False, attn_mask=mask)[0]
    out = x[rows, pooled].unsqueeze(1) + block.ls_1(attended)
    out = out + block.ls_2(block.mlp(block.ln_2(out)))
    return out[:, 0]


def run_to_pooled(transformer, x: torch.Tensor, pooled: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  causal: bool = True) -> torch.Tensor:
    """A plain open_clip block stack (`plain_block_stack`) on x [N, L, D], its last block at `pooled`
    only: [N, D]. Under the stack's grad checkpointing each block is recomputed in the backward, as
    open_clip's `Transformer.forward` does."""
    *blocks, last = transformer.resblocks
    recompute = getattr(transformer, "grad_checkpointing", False) and torch.is_grad_enabled()
    for block in blocks:
        x = (checkpoint(block, x, None, None, attn_mask, use_reentrant=False) if recompute
             else block(x, attn_mask=attn_mask))
    if recompute:
        return checkpoint(pooled_last_block, last, x, pooled, causal, use_reentrant=False)
    return pooled_last_block(last, x, pooled, causal=causal)


def _class_token_transformer_class():
    from open_clip.transformer import Transformer

    class ClassTokenTransformer(Transformer):
        """open_clip's `Transformer` returning only the class token's row ([N, 1, D]), its last block
        computed at that token alone. Made by `use_class_token_transformer`."""

        def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
            if attn_mask is not None or x.dim() != 3:  # not the ViT call it was made for
                return super().forward(x, attn_mask=attn_mask)
            first = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            return run_to_pooled(self, x, first, causal=False).unsqueeze(1)

    return ClassTokenTransformer


_CLASS = None


def class_token_transformer_class():
    global _CLASS
    if _CLASS is None:  # built on first use: open_clip is imported only where a model needs it
        _CLASS = _class_token_transformer_class()
    return _CLASS


def _qualifies(visual: nn.Module) -> bool:
    """An open_clip ViT that reads only the class token after its transformer."""
    from open_clip.transformer import Transformer, VisionTransformer

    transformer = getattr(visual, "transformer", None)
    return (type(visual) is VisionTransformer and getattr(visual, "pool_type", None) == "tok"
            and getattr(visual, "attn_pool", None) is None and not getattr(visual, "output_tokens", False)
            and type(transformer) in (Transformer, class_token_transformer_class())
            and plain_block_stack(transformer))


def use_class_token_transformer(module: nn.Module, enabled: bool = True) -> int:
    """Swap every qualifying open_clip ViT's transformer to `ClassTokenTransformer` (`enabled`) or back
    to open_clip's `Transformer`; returns how many qualify."""
    try:
        from open_clip.transformer import Transformer, VisionTransformer  # noqa: F401
    except ImportError:
        return 0
    target = class_token_transformer_class() if enabled else Transformer
    count = 0
    for child in module.modules():
        if _qualifies(child):
            child.transformer.__class__ = target
            count += 1
    return count


def uses_class_token_transformer(module: nn.Module) -> bool:
    cls = class_token_transformer_class() if _CLASS is not None else None
    return cls is not None and any(type(child) is cls for child in module.modules())
