"""Guards from mutation audit CN of the scoring's embedding cache (augment/scoring/embeddings.py) and
score store (augment/scoring/store.py): each test fails under a plausible bug that every earlier test let
pass (named in its docstring), on small numpy arrays and fake scorers, never a model."""
from __future__ import annotations

import numpy as np
import torch


class ExactTextScorer:
    """Encodes a caption from its exact characters (whitespace and case included), counting the texts encoded."""

    def __init__(self):
        self.encoded: list[str] = []

    def encode_texts(self, texts):
        self.encoded.extend(texts)
        return torch.tensor([[float(sum(map(ord, t))), float(len(t)), float(t.count(" "))] for t in texts])


def test_captions_differing_only_in_whitespace_or_case_are_cached_apart(tmp_path):
    """Mutation E01 (text_key hashing the stripped caption) passed: captions that differ in spaces or case
    are other inputs to a scorer whose tokenizer keeps them, and one must never get the other's embedding."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    captions = ["a cat", "a cat ", " a cat", "A cat", "a  cat"]
    scorer = ExactTextScorer()
    first = Embedder(scorer, EmbeddingCache(tmp_path, "scorer")).texts(captions)
    assert scorer.encoded == captions  # five contents, five encodings
    np.testing.assert_array_equal(first, scorer.encode_texts(captions).numpy())
    reopened = Embedder(ExactTextScorer(), EmbeddingCache(tmp_path, "scorer"))
    np.testing.assert_array_equal(reopened.texts(captions[::-1]), first[::-1])
    assert reopened.reused["text"] == 5 and reopened.encoded["text"] == 0
