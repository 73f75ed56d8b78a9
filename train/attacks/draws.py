"""Where the attacks' random numbers are drawn: PGD's random start and SGA's view noise.

On the images' device: the attacks' seeded generators are CPU generators (one recipe for every
device), and a GPU attack that drew on the host waited for every draw (a ViT-B-16 batch of 32 is
4.8M numbers, ~24 ms on this machine's CPU) and for a synchronising copy. On a CPU the numbers are
the generator's own draw, as before.
"""
from __future__ import annotations

import torch


def noise_like(images: torch.Tensor, generator: torch.Generator | None = None, normal: bool = False) -> torch.Tensor:
    """Noise of `images`' shape on their device and in their dtype: uniform in [0, 1), or standard
    normal (`normal=True`), drawn in float32 from `generator` (None: the device's default one).

    A generator on another device than the images' seeds one there (`generator_on`).
    """
    draw = torch.randn if normal else torch.rand
    generator = generator_on(images.device, generator)
    return draw(images.shape, generator=generator, device=images.device).to(images.dtype)


def generator_on(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """`generator` itself when it is on `device` (or None); else a new generator on `device` seeded
    with a number drawn from it, so that draws there stay reproducible from `generator`'s seed."""
    if generator is None or generator.device == torch.device(device):
        return generator
    seed = int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)
