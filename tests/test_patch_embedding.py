"""The patch-embedding matmul (`models/patch_embedding.py`) against `nn.Conv2d`, and its per-model switch."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import load_model, save_model
from models.patch_embedding import PatchMatmulConv2d, is_patch_conv, use_patch_matmul

TWINS = ["tiny-clip", "tiny-siglip", "tiny-hf-clip", "tiny-blip", "tiny-albef", "tiny-captioner"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gradients(conv: nn.Conv2d, pixels: torch.Tensor, weights: torch.Tensor):
    """(output, input gradient, weight gradient, bias gradient) of a weighted sum of the outputs."""
    conv.zero_grad(set_to_none=True)
    pixels = pixels.clone().requires_grad_(True)
    out = conv(pixels)
    (out * weights).sum().backward()
    bias = conv.bias.grad.clone() if conv.bias is not None else None
    return out.detach(), pixels.grad.clone(), conv.weight.grad.clone(), bias


@pytest.mark.parametrize("channels, out_channels, kernel, bias, size, batch", [
    (3, 16, 8, True, (32, 32), 4),
    (3, 8, 4, False, (16, 16), 2),
    (3, 12, (4, 8), True, (12, 24), 1),  # non-square patches and image, batch 1
    (2, 6, 5, True, (17, 23), 3),  # trailing pixels that fill no patch: dropped, as by the conv
])
def test_matmul_matches_the_conv(channels, out_channels, kernel, bias, size, batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, out_channels, kernel, stride=kernel, bias=bias)
    patched = copy.deepcopy(conv)
    assert use_patch_matmul(patched) == 1 and type(patched) is PatchMatmulConv2d
    pixels = torch.randn(batch, channels, *size)
    weights = torch.randn_like(conv(pixels))
    expected, got = _gradients(conv, pixels, weights), _gradients(patched, pixels, weights)
    for name, want, have in zip(("output", "input grad", "weight grad", "bias grad"), expected, got):
        if want is None:
            assert have is None
            continue
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5, msg=name)
    calls = []
    patched.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():  # no input gradient wanted: the conv's own path, bit for bit
        assert torch.equal(patched(pixels), conv(pixels))
    assert calls  # hooks of the switched conv still fire


def test_matmul_path_runs_only_when_the_input_needs_a_gradient(monkeypatch):
    conv = nn.Conv2d(3, 4, 4, stride=4)
    use_patch_matmul(conv)
    convolved = []
    original = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, *a: convolved.append(1) or original(self, *a))
    pixels = torch.rand(2, 3, 8, 8)
    conv(pixels.requires_grad_(True))
    assert convolved == []  # the matmul
    with torch.no_grad():
        conv(pixels)
    conv(pixels.detach())
    assert convolved == [1, 1]


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 4, 4, stride=2),  # overlapping patches
    nn.Conv2d(3, 4, 4, stride=4, padding=1),
    nn.Conv2d(3, 4, 2, stride=2, dilation=2),
    nn.Conv2d(4, 4, 2, stride=2, groups=2),
    nn.Conv2d(3, 4, 1),  # pointwise: a layer inside a network (ResNet), not a patch embedding
    nn.Conv1d(3, 4, 4, stride=4),
])
def test_other_convs_are_left_alone(conv):
    kind = type(conv)
    assert not is_patch_conv(conv)
    assert use_patch_matmul(nn.Sequential(conv)) == 0 and type(conv) is kind


def test_a_conv_subclass_is_left_alone():
    class OwnConv(nn.Conv2d):
        pass

    conv = OwnConv(3, 4, 4, stride=4)
    assert use_patch_matmul(conv) == 0 and type(conv) is OwnConv


@pytest.mark.parametrize("name", TWINS)
def test_every_family_loads_with_the_switch_on_and_off_restores_the_library_conv(name, tmp_path):
    model = load_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.patch_matmul and convs and all(type(m) is PatchMatmulConv2d for m in convs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.patch_matmul = False
    assert not model.patch_matmul and all(type(m) is nn.Conv2d for m in convs)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.patch_matmul = True
    folder = save_model(model, tmp_path / "saved")  # saved with the switch on, read back the same
    reloaded = load_model(str(folder))
    assert reloaded.patch_matmul
    reloaded_state = reloaded.state_dict()
    assert list(reloaded_state) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in reloaded_state.items())


def test_pgd_on_tiny_clip_matches_the_conv_path():
    from train.attacks import pgd_linf

    victim = load_model("tiny-clip")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(8, 3, victim.image_size, victim.image_size, generator=generator)
    with torch.no_grad():
        text = victim.encode_text([f"caption number {i}" for i in range(8)])
    labels = torch.arange(8)

    def loss(images):
        return torch.nn.functional.cross_entropy(victim.logit_scale * victim.encode_image(images) @ text.T, labels)

    conv = victim.model.visual.conv1
    assert type(conv) is PatchMatmulConv2d
    fast = pgd_linf(pixels, loss, 2 / 255, 5, 0.5 / 255, random_start=False)
    victim.patch_matmul = False
    assert type(conv) is nn.Conv2d
    slow = pgd_linf(pixels, loss, 2 / 255, 5, 0.5 / 255, random_start=False)
    assert not torch.equal(fast, pixels)
    # rounding (~1e-6) can flip the sign of a near-zero gradient: a pixel one step apart at most
    torch.testing.assert_close(fast, slow, rtol=0, atol=1 / 255)
    assert (fast != slow).float().mean() < 0.01
