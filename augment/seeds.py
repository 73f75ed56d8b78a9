"""The one seed hash of the project: stable seeds from the identity of what is drawn.

Every random draw that must not depend on batching, process count or Python's hash
randomisation (a pool row, a training step's crop, a data order) takes its seed from here.
SHA-256 of the parts joined by "|", first 8 bytes, 63 bits: the same value on every platform,
so pools and runs made before this module existed reproduce exactly.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (their `str`), e.g. `derive_seed(seed, "crop", epoch, slot)`."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def row_seed(base_seed: int, image_id: str, caption_index: int, k: int) -> int:
    """The seed of one pool row: depends only on the row's identity, never on batching or process."""
    return derive_seed(base_seed, image_id, caption_index, k)


@contextlib.contextmanager
def cpu_torch_seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` inside, the caller's state back after: for
    libraries that draw from it (torchvision's random transforms, a model's initialisation).
    `torch.manual_seed` would also reseed every CUDA device's generator, which `fork_rng(devices=[])`
    does not restore: a GPU run's CUDA draws were reset by each pool row or tiny model built beside it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
