"""Alignment of an image and a caption: the cosine of their embeddings, and CLIPScore from it
(Hessel et al. 2021 with w = 100, torchmetrics' weight)."""
from __future__ import annotations

import numpy as np

CLIPSCORE_WEIGHT = 100.0


def clipscore(cosine) -> np.ndarray:
    """100 * max(cos, 0) of each pair's cosine, in float64."""
    return CLIPSCORE_WEIGHT * np.maximum(np.asarray(cosine, dtype=np.float64), 0.0)
