"""Encoding texts that differ from known texts after a shared beginning, reusing its keys and values.

A CLIP text tower is causal: a token's state in every block depends on the tokens up to it only.
A text that shares its first p tokens with a reference text therefore has the reference's states
at those p positions in every block, and only its remaining positions need computing, attending
to the reference's keys and values for the shared ones. Word-substitution attacks encode
thousands of such texts (each clean caption with one word masked or replaced); on the bench
world a third of their token positions lie before the changed word.

`TextPrefixCache(model, tower, references)` encodes the reference texts once, keeping each
block's keys and values (references x blocks x 2 x the longest reference's tokens x width
floats); `.encode(texts, owners)` encodes texts each of which shares a beginning with
`references[owners[i]]` (any text works: the shared part is found token by token, and may be
empty). The result equals the whole tower's up to float summation order. The first block's
input, norm and q, k, v projection depend on a token and its position alone: they are computed
once per distinct (token, position) of a call (a changed word's followers sit where the
reference's do, so texts of one reference repeat them). Written here because
neither open_clip nor torch offers a key/value cache for a CLIP text tower; it is the decoder's
key/value cache, applied to many texts per reference. Its attention on a CPU is plain matrix
products and a softmax (`_attention`), faster there than torch's fused kernel at these short,
masked, gradient-free shapes.

`OpenClipModel.text_prefix_cache` (causal mask, pooling at the end-of-text token, a plain stack
of `nn.MultiheadAttention` blocks, inference) and `HFClipModel.text_prefix_cache` build one,
describing their tower as a `CausalTextTower`; other models return None and callers encode texts
whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from models.length_groups import in_input_order, pass_overhead, sorted_length_groups
from models.sdpa import attention as sdpa_attention


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class CausalBlock:
    """One pre-norm self-attention block, as the cache runs it: x + ls_1(out(attention(ln_1(x))))
    then + ls_2(mlp(ln_2(.))); the in-projection packed as [q; k; v] rows."""

    ln_1: Callable
    qkv_weight: torch.Tensor  # [3 width, width]
    qkv_bias: torch.Tensor | None
    heads: int
    out_weight: torch.Tensor
    out_bias: torch.Tensor | None
    ln_2: Callable
    mlp: Callable
    ls_1: Callable = _unchanged  # layer scale (open_clip's `ls_init_value`), else nothing
    ls_2: Callable = _unchanged


@dataclass
class CausalTextTower:
    """What the cache reads of a causal text tower pooled at one token: the embedding of packed
    tokens at their positions, the blocks, and `finish` (final norm and projection of the pooled
    rows). Built per family: `OpenClipModel.text_prefix_cache`, `HFClipModel.text_prefix_cache`."""

    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (token ids [T], positions [T]) -> [T, width]
    blocks: list[CausalBlock]
    finish: Callable[[torch.Tensor], torch.Tensor]  # [N, width] pooled rows -> [N, embed dim]


class TextPrefixCache:
    """Each block's keys and values for `references`' tokens (see the module docstring)."""

    @torch.no_grad()
    def __init__(self, owner, tower: CausalTextTower, references: Sequence[str], batch_size: int | None = None):
        self.owner = owner  # the model: its `tokenize` and `_pooled_positions`
        self.tower = tower
        ids = owner.tokenize(list(references)).input_ids
        self.ids = ids
        pooled = owner._pooled_positions(ids)
        self.lengths = pooled + 1
        embeddings, keys, values = self._run_all(ids, pooled, torch.zeros_like(pooled), None, keep=True,
                                                 batch_size=batch_size)
        self.embeddings = embeddings  # [R, D] unnormalised
        self.keys, self.values = keys, values  # per block [R, heads, L, head width]

    # -- public ------------------------------------------------------------------------------

    def reference_embeddings(self, normalize: bool = True) -> torch.Tensor:
        return F.normalize(self.embeddings, dim=-1) if normalize else self.embeddings

    @torch.no_grad()
    def encode(self, texts: Sequence[str], owners: Sequence[int], normalize: bool = True,
               batch_size: int | None = None) -> torch.Tensor:
        """Embeddings of `texts` [N, D], text i sharing its beginning with reference `owners[i]`; at most
        `batch_size` texts per forward pass (default: no limit). Pass every text in one call: they are
        grouped by how many new positions they have before being cut into passes."""
        if not len(texts):  # (0, D), as the whole tower gives
            return self.embeddings[:0].clone()
        ids = self.owner.tokenize(list(texts)).input_ids
        owners_t = torch.as_tensor(list(owners), dtype=torch.long, device=ids.device)
        pooled = self.owner._pooled_positions(ids)
        reference = self.ids[owners_t]
        width = min(ids.shape[1], reference.shape[1])
        same = (ids[:, :width] == reference[:, :width]).int()
        shared = same.cumprod(dim=1).sum(dim=1)  # tokens equal from the start
        shared = torch.minimum(shared, self.lengths[owners_t])
        start = torch.minimum(shared, pooled)  # the pooled token is always computed here
        features = self._run_all(ids, pooled, start, owners_t, keep=False, batch_size=batch_size)[0]
        return F.normalize(features, dim=-1) if normalize else features

    # -- the tower ---------------------------------------------------------------------------

    def _run_all(self, ids, pooled, start, owners, keep: bool, batch_size: int | None = None):
        """`_run` over sub-batches of similar new-token counts (`length_groups`, each cut into passes of
        at most `batch_size` texts); results in input order. `pooled` [N]: each text's pooled position."""
        order, sorted_new, groups = sorted_length_groups(pooled + 1 - start, batch_size,
                                                         pass_overhead(ids.device))
        outputs, kept = [], []
        for first, last in groups:
            rows = order[first:last]
            part_owners = owners[rows] if owners is not None else None
            emb, kv = self._run(ids[rows], start[rows], pooled[rows], part_owners, sorted_new[last - 1], keep)
            outputs.append(emb)
            kept.append((rows, kv))
        embeddings = in_input_order(outputs, order)
        if not keep:
            return embeddings, None, None
        return (embeddings, *self._gather_kept(kept, len(ids)))

    @staticmethod
    def _gather_kept(kept, count):
        """Each block's keys and values of every sub-batch, in input order: [count, heads, L, head width]."""
        blocks = len(kept[0][1])
        length = max(kv[0][0].shape[2] for _, kv in kept)
        keys, values = [], []
        for b in range(blocks):
            sample = kept[0][1][b][0]
            shape = (count, sample.shape[1], length, sample.shape[3])
            k_all, v_all = sample.new_zeros(shape), sample.new_zeros(shape)
            for rows, kv in kept:
                k, v = kv[b]
                k_all[rows, :, :k.shape[2]] = k
                v_all[rows, :, :v.shape[2]] = v
            keys.append(k_all)
            values.append(v_all)
        return keys, values

    def _run(self, ids, start, pooled, owners, span: int, keep: bool):
        """The tower on positions start[n] .. pooled[n] of each text (`span` = the most of them),
        attending to reference `owners[n]`'s keys and values before start[n].

        The linear layers (in- and out-projections, MLP: most of the work) run on the real new
        positions packed into one [T, width] matrix, attention on them laid out [N, S] with
        padding: the texts' new parts differ in length more than whole texts do. The last block
        attends from the pooled token alone: on a CPU its new keys and values stay packed
        (`_pooled_attention`), only the scores are laid out."""
        count, device = ids.shape[0], ids.device
        steps = torch.arange(span, device=device)
        positions = (start[:, None] + steps[None, :]).clamp(max=ids.shape[1] - 1)  # [N, S]; past the end: padding
        # the new positions that are not padding, as indices into the [N * S] layout
        real = (steps[None, :] <= (pooled - start)[:, None]).view(-1).nonzero().squeeze(1)
        real_text, real_step = real // span, real % span  # the same as (text, step) pairs
        tokens = ids.gather(1, positions).view(-1).index_select(0, real)
        places = positions.view(-1).index_select(0, real)
        blocks = self.tower.blocks
        if len(blocks) > 1:
            x, first_qkv = self._embed_and_project_once(tokens, places, ids.shape[1], real, count * span)
        else:
            x, first_qkv = self.tower.embed(tokens, places), None  # [T, width]
        width = x.shape[-1]
        past = int(start.max()) if owners is not None else 0
        # which keys each new position may see: the reference's before start[n], the new ones up to itself
        seen_past = torch.arange(past, device=device)[None, :] < start[:, None]  # [N, P]
        causal = steps[None, :] <= steps[:, None]  # [S, S]
        allowed = torch.cat([seen_past[:, None, :].expand(count, span, past), causal.expand(count, span, span)], dim=2)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=device).masked_fill(~allowed, float("-inf"))
        mask = mask.unsqueeze(1)  # [N, 1, S, P + S]
        last_row = pooled - start  # the pooled token's place among the new positions
        pooled_packed = torch.cumsum(last_row + 1, dim=0) - 1  # its row in the packed matrix
        kept = []
        for index, block in enumerate(blocks[:-1]):
            heads = block.heads
            head_width = width // heads
            if index or first_qkv is None:
                qkv = F.linear(block.ln_1(x), block.qkv_weight, block.qkv_bias)
                laid = qkv.new_zeros(count * span, 3 * width).index_copy_(0, real, qkv)
            else:
                laid = first_qkv
            q, k, v = laid.view(count, span, 3, heads, head_width).permute(2, 0, 3, 1, 4).unbind(0)
            out = self._attend(index, q, k, v, mask, owners, past, kept if keep else None)  # [N, heads, S, head width]
            # the real positions' rows in one gather (a reshape of the transposed heads would copy them all first)
            out = out.transpose(1, 2)[real_text, real_step].view(-1, width)
            x = x + block.ls_1(F.linear(out, block.out_weight, block.out_bias))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        # the last block: nothing after it reads other positions than the pooled one
        index, block = len(blocks) - 1, blocks[-1]
        heads = block.heads
        head_width = width // heads
        normed = block.ln_1(x)
        q_weight, kv_weight = block.qkv_weight.split([width, 2 * width])
        q_bias, kv_bias = block.qkv_bias.split([width, 2 * width]) if block.qkv_bias is not None else (None, None)
        q = F.linear(normed.index_select(0, pooled_packed), q_weight, q_bias).view(count, heads, head_width)
        kv = F.linear(normed, kv_weight, kv_bias)  # under autocast in its lower precision: laid out alike
        x = x.index_select(0, pooled_packed)
        if keep or x.device.type != "cpu":  # the cache keeps the keys and values laid out; elsewhere the fused kernel
            laid = kv.new_zeros(count * span, 2 * width).index_copy_(0, real, kv)
            k, v = laid.view(count, span, 2, heads, head_width).permute(2, 0, 3, 1, 4).unbind(0)
            pooled_mask = mask[torch.arange(count, device=device), :, last_row].unsqueeze(2)  # the pooled row's
            out = self._attend(index, q.unsqueeze(2), k, v, pooled_mask, owners, past,
                               kept if keep else None)
        else:
            kv = kv.view(-1, 2, heads, head_width)
            cached = self._cached(index, owners, past) if past else None
            out = _pooled_attention(q, kv[:, 0], kv[:, 1], real, real_text, span, cached, seen_past)
        x = x + block.ls_1(F.linear(out.reshape(count, width), block.out_weight, block.out_bias))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return self.tower.finish(x), kept

    def _attend(self, index: int, q, k, v, mask, owners, past: int, kept: list | None):
        """`_attention` of block `index`'s queries over reference `owners[n]`'s first `past` cached keys
        and values, then the new ones (k, v [N, heads, S, head width], appended to `kept` when given)."""
        if kept is not None:
            kept.append((k, v))
        if past:
            cached_k, cached_v = self._cached(index, owners, past)
            k, v = torch.cat([cached_k, k], dim=2), torch.cat([cached_v, v], dim=2)
        return _attention(q, k, v, mask)

    def _cached(self, index: int, owners, past: int):
        """Block `index`'s cached keys and values of each text's reference `owners[n]`, its first `past`
        positions: [N, heads, past, head width] each."""
        return (self.keys[index][:, :, :past].index_select(0, owners),
                self.values[index][:, :, :past].index_select(0, owners))

    def _embed_and_project_once(self, tokens, places, context: int, real, slots: int):
        """(x [T, width]: the new positions' embeddings, the first block's q, k, v [slots, 3 width] laid
        out as `_run` lays them, padding rows zero). Both depend on (token, position) alone, and the
        texts of one call repeat those pairs (a changed word's followers sit where the reference's
        do): each distinct pair is embedded, normed and projected once, a sixth of the rows on the
        bench world."""
        pairs, inverse = torch.unique(tokens * context + places, return_inverse=True)
        distinct = self.tower.embed(pairs // context, pairs % context)  # [U, width]
        block = self.tower.blocks[0]
        qkv = F.linear(block.ln_1(distinct), block.qkv_weight, block.qkv_bias)
        # one gather lays them out, the padding slots reading an appended row of zeros
        where = torch.full((slots,), len(pairs), dtype=torch.long, device=tokens.device).index_copy_(0, real, inverse)
        laid = torch.cat([qkv, qkv.new_zeros(1, qkv.shape[1])]).index_select(0, where)
        return distinct.index_select(0, inverse), laid


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(head width) + mask) v. On CPU as three plain kernels: for these short,
    masked, gradient-free calls torch's fused kernel is 1.5-3x slower (2 threads, tiny-clip's and
    ViT-B-16's text shapes, docs/benchmarks.md); elsewhere the fused kernel without cuDNN's backend
    (`models/sdpa.py`), not measured against."""
    if q.device.type != "cpu":
        return sdpa_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return scores.add_(mask).softmax(dim=-1) @ v


def _pooled_attention(q, k, v, real, real_text, span: int, past_kv, seen_past) -> torch.Tensor:
    """The last block's attention of each text's pooled query q [N, heads, head width] over its cached
    keys and values (`past_kv`: [N, heads, P, head width] each, visible where `seen_past` [N, P]) and
    its new ones, packed: k, v [T, heads, head width], row t of text real_text[t] at slot real[t] of
    the [N * span] layout. Scores of the new keys are row products, only the scores are laid out for
    the softmax, and the weighted values are summed per text (index_add_, in order on a CPU)."""
    count, heads, head_width = q.shape
    q = q * head_width ** -0.5
    new = (q.index_select(0, real_text) * k).sum(-1)  # [T, heads]
    scores = new.new_full((count * span, heads), float("-inf")).index_copy_(0, real, new)
    scores = scores.view(count, span, heads).transpose(1, 2)  # [N, heads, S]
    past = 0
    if past_kv is not None:
        past = past_kv[0].shape[2]
        seen = (q.unsqueeze(2) @ past_kv[0].transpose(-1, -2)).squeeze(2)  # [N, heads, P]
        scores = torch.cat([seen.masked_fill(~seen_past[:, None, :], float("-inf")), scores], dim=-1)
    weights = scores.softmax(dim=-1)
    on_new = weights[..., past:].transpose(1, 2).reshape(count * span, heads).index_select(0, real)  # [T, heads]
    out = q.new_zeros(count, heads, head_width).index_add_(0, real_text, v * on_new.unsqueeze(-1))
    if past:
        out = out + (weights[..., :past].unsqueeze(2) @ past_kv[1]).squeeze(2)
    return out
