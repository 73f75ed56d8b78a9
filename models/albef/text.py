"""ALBEF's text conventions: caption cleaning (`augment.words.pre_caption`,
shared with the reference attack protocols) and `[CLS] w1 ... wn [PAD]` tokens.

ALBEF's own BERT tokenizer adds only [CLS] (no trailing [SEP]) to a single sentence, and its
datasets pass every caption through `pre_caption` first; the released checkpoints were trained
and evaluated on exactly these inputs, so the family reproduces both.
"""
from __future__ import annotations

from typing import Sequence

import torch

from models.base import TextTokens


def tokenize_without_sep(tokenizer, texts: Sequence[str], max_length: int, pad_to_max_length: bool = False) -> TextTokens:
    """[CLS] + word pieces (truncated to max_length - 1), padded to the longest (or to `max_length`);
    no [SEP]: what ALBEF's tokenizer (the one the SGA and Co-Attack codes use) builds."""
    pieces = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    rows = [[tokenizer.cls_token_id, *ids] for ids in pieces]
    length = max_length if pad_to_max_length else max((len(r) for r in rows), default=1)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return TextTokens(input_ids, attention_mask)
