"""`ContiguousMultiheadAttention` (models/multihead_attention.py) against `nn.MultiheadAttention`, and its switch."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import load_model, save_model
from models.multihead_attention import ContiguousMultiheadAttention, use_contiguous_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _library_and_switched(width: int = 32, heads: int = 4):
    torch.manual_seed(0)
    library = nn.MultiheadAttention(width, heads, batch_first=True)
    switched = copy.deepcopy(library)
    assert use_contiguous_attention(switched) == 1 and type(switched) is ContiguousMultiheadAttention
    return library, switched


def _forward_backward(attention: nn.Module, x: torch.Tensor, weights: torch.Tensor, **options):
    attention.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out, _ = attention(x, x, x, **options)
    (out * weights).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in attention.parameters()]


def _causal(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf")).triu(1)  # open_clip's text mask


@pytest.mark.parametrize("options", [
    {"need_weights": False},
    {"need_weights": True},
    {"need_weights": False, "attn_mask": _causal(9)},
    {"need_weights": False, "attn_mask": torch.ones(9, 9, dtype=torch.bool).triu(1)},
    {"need_weights": False, "key_padding_mask": torch.tensor([[False] * 7 + [True] * 2] * 3)},
], ids=["plain", "weights", "causal", "bool-mask", "padding"])
def test_outputs_and_all_gradients_equal_the_library_module(options):
    library, switched = _library_and_switched()
    x, weights = torch.randn(3, 9, 32), torch.randn(3, 9, 32)
    expected = _forward_backward(library, x, weights, **options)
    got = _forward_backward(switched, x, weights, **options)
    assert len(got) == len(expected) == 6  # output, input gradient, in/out projection weights and biases
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_only_the_general_path_of_batch_first_self_attention_is_taken_over():
    library, switched = _library_and_switched()
    x = torch.randn(2, 5, 32)
    switched.eval()
    with torch.no_grad():  # inference: torch's own path (its fast path where it applies)
        assert not switched._takes_general_path(x, x, x)
        torch.testing.assert_close(switched(x, x, x)[0], library.eval()(x, x, x)[0])
    assert switched._takes_general_path(x, x, x)  # parameters need gradients
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # torch refuses its fast path under autocast
        assert switched._takes_general_path(x, x, x)
        torch.testing.assert_close(switched(x, x, x)[0], library(x, x, x)[0])
    assert not switched._takes_general_path(x, x.clone(), x.clone())  # cross-attention: the library's forward
    assert not switched._takes_general_path(x[0], x[0], x[0])  # unbatched
    seq_first = copy.deepcopy(library)
    seq_first.batch_first = False
    use_contiguous_attention(seq_first)
    assert not seq_first._takes_general_path(x, x, x)


def test_subclasses_of_the_library_module_are_left_alone():
    class OwnAttention(nn.MultiheadAttention):
        pass

    own = OwnAttention(8, 2, batch_first=True)
    assert use_contiguous_attention(nn.Sequential(own)) == 0 and type(own) is OwnAttention


def test_open_clip_twin_loads_switched_and_off_restores_the_library_module(tmp_path):
    model = load_model("tiny-clip")
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert model.contiguous_attention and attentions
    assert all(type(m) is ContiguousMultiheadAttention for m in attentions)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = torch.rand(2, 3, model.image_size, model.image_size, requires_grad=True)
    fast = model.encode_image(pixels)
    fast_gradient, = torch.autograd.grad(fast.sum(), pixels)
    model.contiguous_attention = False
    assert not model.contiguous_attention and all(type(m) is nn.MultiheadAttention for m in attentions)
    library = model.encode_image(pixels)
    library_gradient, = torch.autograd.grad(library.sum(), pixels)
    torch.testing.assert_close(fast, library, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_gradient, library_gradient, rtol=1e-5, atol=1e-6)
    assert list(model.state_dict()) == list(state)
    model.contiguous_attention = True
    reloaded = load_model(str(save_model(model, tmp_path / "saved")))
    assert reloaded.contiguous_attention
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())
