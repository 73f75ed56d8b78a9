"""Bicubic resizing as two matrix products, for attacks that optimise through resized images.

SGA attacks each image through resized copies of it (four scales, there and back, at every PGD
step), so the resize runs forward and backward 80 times per batch. Bicubic interpolation, plain or
antialiased, is linear and separable: resizing an H x W image to h x w is `A_h @ x @ A_w^T` for an
h x H and a w x W matrix. `resize_matrix` takes that matrix from the library's own operator (torch's
`F.interpolate`) applied to an identity image (in float64), so `resize` is the library's resize up to
float rounding: within 3e-7 of it computed in float64 on [0, 1] pixels, where torch's own float32
kernel is within 5e-6 (tested; torchvision's tensor `resize` is this same operator).
Written here because torch's bicubic backward on the CPU is a per-pixel scatter loop: at tiny-clip's
64 px it was 40% of SGA's time, where the matrix form's forward and backward are a few matmuls.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F

# "bicubic": F.interpolate(mode="bicubic", align_corners=False); "bicubic-aa": the same, antialiased
METHODS = ("bicubic", "bicubic-aa")


def _library_resize(images: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """The library operator `resize` reproduces, on a batch of float images [N, C, H, W]."""
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=method == "bicubic-aa")


@lru_cache(maxsize=128)
def _matrix(n_in: int, n_out: int, method: str, device: str, dtype: torch.dtype) -> torch.Tensor:
    # the identity image resized along its height only: its rows are the operator's weights; the
    # width keeps its size (the identity map for every method: the kernel's centre weight is 1)
    identity = torch.eye(n_in, dtype=torch.float64).view(1, 1, n_in, n_in)
    return _library_resize(identity, (n_out, n_in), method)[0, 0].to(device=device, dtype=dtype).contiguous()


def resize_matrix(n_in: int, n_out: int, method: str = "bicubic", device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [n_out, n_in] matrix that resizes one axis from n_in to n_out samples by `method`
    (cached per sizes, method, device and dtype: read it, do not change it in place)."""
    if method not in METHODS:
        raise ValueError(f"unknown resize method {method!r}; expected one of {METHODS}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got {n_in} -> {n_out}")
    return _matrix(int(n_in), int(n_out), method, str(torch.device(device)), dtype)


def resize(images: torch.Tensor, size: tuple[int, int], method: str = "bicubic") -> torch.Tensor:
    """[..., H, W] float images resized to `size` (h, w) by `method`: `A_h @ images @ A_w^T`,
    differentiable in `images`; computed in float32 (float64 kept) with autocast off, returned in
    the images' dtype, as the library's resize returns it."""
    if _LIBRARY_KERNELS[0]:
        return _library_resize(images, tuple(size), method)
    height, width = images.shape[-2:]
    dtype = images.dtype if images.dtype == torch.float64 else torch.float32
    rows = resize_matrix(height, size[0], method, images.device, dtype)
    columns = resize_matrix(width, size[1], method, images.device, dtype)
    with torch.autocast(images.device.type, enabled=False):
        return (rows @ images.to(dtype) @ columns.T).to(images.dtype)


_LIBRARY_KERNELS = [False]


@contextmanager
def library_resize():
    """Within the block `resize` calls the library's kernel itself (torch's `F.interpolate`): the
    baseline `bench attacks` measures the matrix form against."""
    previous, _LIBRARY_KERNELS[0] = _LIBRARY_KERNELS[0], True
    try:
        yield
    finally:
        _LIBRARY_KERNELS[0] = previous
