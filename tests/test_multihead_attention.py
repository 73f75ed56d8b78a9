"""`BatchFirstMultiheadAttention` (models/multihead_attention.py) against `nn.MultiheadAttention`, and its switch."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import load_model, save_model
from models.multihead_attention import BatchFirstMultiheadAttention, use_batch_first_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _library_and_switched(width: int = 32, heads: int = 4):
    torch.manual_seed(0)
    library = nn.MultiheadAttention(width, heads, batch_first=True)
    switched = copy.deepcopy(library)
    assert use_batch_first_attention(switched) == 1 and type(switched) is BatchFirstMultiheadAttention
    return library, switched


def _counting_batch_first(monkeypatch) -> list:
    """Calls of the batch-first computation, recorded (the module must say which path it took)."""
    calls = []
    original = BatchFirstMultiheadAttention._batch_first

    def spy(self, *args):
        calls.append(args[0].shape)
        return original(self, *args)

    monkeypatch.setattr(BatchFirstMultiheadAttention, "_batch_first", spy)
    return calls


def _forward_backward(attention: nn.Module, x: torch.Tensor, weights: torch.Tensor, query: torch.Tensor | None = None,
                      **options):
    attention.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    q = x if query is None else query.clone().requires_grad_(True)
    out, _ = attention(q, x, x, **options)
    (out * weights[:, :out.shape[1]]).sum().backward()
    return [out.detach(), x.grad] + ([] if query is None else [q.grad]) + [p.grad for p in attention.parameters()]


def _causal(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf")).triu(1)  # open_clip's text mask


# (options, whether the batch-first computation takes the call)
CASES = {
    "plain": ({"need_weights": False}, True),
    "causal": ({"need_weights": False, "attn_mask": _causal(9)}, True),
    "bool-mask": ({"need_weights": False, "attn_mask": torch.ones(9, 9, dtype=torch.bool).triu(1)}, True),
    "per-head-mask": ({"need_weights": False, "attn_mask": torch.randn(3 * 4, 9, 9)}, True),
    "weights": ({"need_weights": True}, False),
    "padding": ({"need_weights": False, "key_padding_mask": torch.tensor([[False] * 7 + [True] * 2] * 3)}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_and_all_gradients_equal_the_library_module(case, monkeypatch):
    options, batch_first = CASES[case]
    library, switched = _library_and_switched()
    x, weights = torch.randn(3, 9, 32), torch.randn(3, 9, 32)
    expected = _forward_backward(library, x, weights, **options)
    calls = _counting_batch_first(monkeypatch)
    got = _forward_backward(switched, x, weights, **options)
    assert len(calls) == int(batch_first)
    assert len(got) == len(expected) == 6  # output, input gradient, in/out projection weights and biases
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_pooled_query_attending_to_every_key_equals_the_library_module(monkeypatch):
    """The call `models.pooled_block.pooled_last_block` makes: one query row per sequence, keys and
    values the whole sequence, a per-head causal row as mask."""
    library, switched = _library_and_switched()
    x, weights = torch.randn(3, 9, 32), torch.randn(3, 1, 32)
    query = torch.randn(3, 1, 32)
    mask = torch.zeros(3, 9).masked_fill(torch.arange(9)[None] > torch.tensor([[4], [8], [0]]), float("-inf"))
    options = {"need_weights": False, "attn_mask": mask.repeat_interleave(4, dim=0).unsqueeze(1)}
    expected = _forward_backward(library, x, weights, query=query, **options)
    calls = _counting_batch_first(monkeypatch)
    got = _forward_backward(switched, x, weights, query=query, **options)
    assert calls == [torch.Size([3, 1, 32])]
    assert len(got) == len(expected) == 7
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_which_calls_are_computed_batch_first(monkeypatch):
    library, switched = _library_and_switched()
    x = torch.randn(2, 5, 32)
    calls = _counting_batch_first(monkeypatch)
    switched.eval()
    with torch.no_grad():  # inference on CPU: batch-first too (measured faster than torch's own path)
        assert not switched._takes_general_path(x, x, x)
        torch.testing.assert_close(switched(x, x, x, need_weights=False)[0], library.eval()(x, x, x)[0])
    assert len(calls) == 1
    assert switched._takes_general_path(x, x, x)  # parameters need gradients
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # torch refuses its fast path under autocast
        assert switched._takes_general_path(x, x, x)
        # bf16 products: the same operations, the kernel may round differently (one bf16 step)
        torch.testing.assert_close(switched(x, x, x, need_weights=False)[0], library(x, x, x)[0], rtol=1.6e-2, atol=1e-2)
    assert len(calls) == 2
    other = x.clone()
    assert not switched._takes_general_path(x, other, other.clone())  # key is not value: the library's forward
    switched(x, other, other.clone(), need_weights=False)
    assert not switched._takes_general_path(x[0], x[0], x[0])  # unbatched
    switched(x[0], x[0], x[0], need_weights=False)
    switched.train()
    switched.dropout = 0.1  # dropout in effect: the library's function
    switched(x, x, x, need_weights=False)
    assert len(calls) == 2
    seq_first = copy.deepcopy(library)
    seq_first.batch_first = False
    use_batch_first_attention(seq_first)
    assert not seq_first._takes_general_path(x, x, x)
    seq_first(x, x, x, need_weights=False)
    assert len(calls) == 2


def test_subclasses_of_the_library_module_are_left_alone():
    class OwnAttention(nn.MultiheadAttention):
        pass

    own = OwnAttention(8, 2, batch_first=True)
    assert use_batch_first_attention(nn.Sequential(own)) == 0 and type(own) is OwnAttention


def test_open_clip_twin_loads_switched_and_off_restores_the_library_module(tmp_path):
    model = load_model("tiny-clip")
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert model.batch_first_attention and attentions
    assert all(type(m) is BatchFirstMultiheadAttention for m in attentions)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = torch.rand(2, 3, model.image_size, model.image_size, requires_grad=True)
    fast = model.encode_image(pixels)
    fast_gradient, = torch.autograd.grad(fast.sum(), pixels)
    model.batch_first_attention = False
    assert not model.batch_first_attention and all(type(m) is nn.MultiheadAttention for m in attentions)
    library = model.encode_image(pixels)
    library_gradient, = torch.autograd.grad(library.sum(), pixels)
    torch.testing.assert_close(fast, library, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_gradient, library_gradient, rtol=1e-5, atol=1e-6)
    assert list(model.state_dict()) == list(state)
    model.batch_first_attention = True
    reloaded = load_model(str(save_model(model, tmp_path / "saved")))
    assert reloaded.batch_first_attention
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())


@pytest.mark.parametrize("options", [{"add_bias_kv": True}, {"add_zero_attn": True}], ids=["bias-kv", "zero-attn"])
def test_extra_keys_of_the_library_module_are_kept(options):
    """`bias_k`/`bias_v` and `add_zero_attn` add a key the batch-first computation does not have."""
    torch.manual_seed(0)
    library = nn.MultiheadAttention(32, 4, batch_first=True, **options)
    switched = copy.deepcopy(library)
    use_batch_first_attention(switched)
    x, weights = torch.randn(3, 9, 32), torch.randn(3, 9, 32)
    for a, b in zip(_forward_backward(switched, x, weights, need_weights=False),
                    _forward_backward(library, x, weights, need_weights=False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_causal_hint_without_its_mask_is_refused_as_by_the_library():
    """`is_causal` is a hint about `attn_mask`, not a mask: without one the library refuses the call,
    and so must the switched module (computing it unmasked would drop the causal mask silently)."""
    _, switched = _library_and_switched()
    x = torch.randn(2, 5, 32)
    with pytest.raises(RuntimeError, match="is_causal"):
        switched(x, x, x, need_weights=False, is_causal=True)
