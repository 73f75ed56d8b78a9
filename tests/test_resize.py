"""Bicubic resizing as two matrix products (train/attacks/resize.py) against the libraries' kernels."""
import pytest
import torch
import torch.nn.functional as F

from train.attacks.resize import METHODS, library_resize, resize, resize_matrix


def library(images, size, method):
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=method == "bicubic-aa")


SIZES = [(32, 32), (48, 40), (80, 96), (7, 9), (64, 64)]  # SGA's scales of 64 px, odd shapes, the same size


@pytest.mark.parametrize("method", METHODS)
def test_resize_is_the_library_operator(method):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for size in SIZES:
        ours = resize(images, size, method)
        assert ours.shape == (2, 3, *size) and ours.dtype == torch.float32
        exact = library(images.double(), size, method)  # the operator itself, in float64
        assert float((ours.double() - exact).abs().max()) < 1e-6, (method, size)
        assert torch.allclose(ours, library(images, size, method), atol=2e-5), (method, size)


@pytest.mark.parametrize("method", METHODS)
def test_resize_gradient_is_the_library_operators(method):
    images = torch.rand(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(2, 3, 36, 18, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gradients = []
    for fn in (lambda x: resize(x, (36, 18), method), lambda x: library(x, (36, 18), method)):
        pixels = images.clone().requires_grad_(True)
        (fn(pixels) * weights).sum().backward()
        gradients.append(pixels.grad)
    assert gradients[0].dtype == torch.float64  # float64 images stay float64
    assert resize(images.half(), (36, 18), method).dtype == torch.float16  # and half stays half, as the library's
    assert float((gradients[0] - gradients[1]).abs().max()) < 1e-12


@pytest.mark.parametrize("antialias", [False, True])
def test_torchvision_tensor_resize_is_the_same_operator(antialias):
    """The SGA code resizes with torchvision's Resize(BICUBIC): on float tensors torchvision calls torch's
    operator, so `resize` covers both (antialias False: torchvision 0.15's tensor default, which SGA pins)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize as tv_resize

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for size in SIZES:
        ours = resize(images, size, "bicubic-aa" if antialias else "bicubic")
        assert torch.allclose(ours, tv_resize(images, list(size), InterpolationMode.BICUBIC, antialias=antialias), atol=2e-5)


def test_resize_matrix_rows_sum_to_one_and_library_resize_switches_back():
    matrix = resize_matrix(64, 48, "bicubic-aa")
    assert matrix.shape == (48, 64)
    assert torch.allclose(matrix.sum(1), torch.ones(48), atol=1e-6)  # a constant image stays constant
    images = torch.rand(1, 3, 64, 64)
    with library_resize():
        inside = resize(images, (48, 48), "bicubic-aa")
    assert torch.equal(inside, library(images, (48, 48), "bicubic-aa"))  # the library's kernel itself
    assert not torch.equal(resize(images, (48, 48), "bicubic-aa"), inside)  # the matrix form again


def test_resize_rejects_unknown_methods_and_empty_sizes():
    with pytest.raises(ValueError, match="unknown resize method 'nearest'"):
        resize_matrix(8, 4, "nearest")
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        resize_matrix(8, 0)
