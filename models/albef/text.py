"""ALBEF's text conventions: caption cleaning (`augment.words.pre_caption`,
shared with the reference attack protocols) and `[CLS] w1 ... wn [PAD]` tokens.

ALBEF's own BERT tokenizer adds only [CLS] (no trailing [SEP]) to a single sentence, and its
datasets pass every caption through `pre_caption` first; the released checkpoints were trained
and evaluated on exactly these inputs, so the family reproduces both.
"""
from __future__ import annotations

from typing import Sequence

from models.base import TextTokens


def tokenize_without_sep(tokenizer, texts: Sequence[str], max_length: int, pad_to_max_length: bool = False) -> TextTokens:
    """[CLS] + word pieces (truncated to max_length - 1), padded to the longest (or to `max_length`);
    no [SEP]: what ALBEF's tokenizer (the one the SGA and Co-Attack codes use) builds."""
    pieces = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    padded = tokenizer.pad({"input_ids": [[tokenizer.cls_token_id, *ids] for ids in pieces]},
                           padding="max_length" if pad_to_max_length else "longest", max_length=max_length,
                           padding_side="right",  # ALBEF's; a call-time argument since transformers 4.45
                           return_attention_mask=True, return_tensors="pt")
    input_ids, attention_mask = padded["input_ids"].long(), padded["attention_mask"].long()
    return TextTokens(input_ids, attention_mask)
