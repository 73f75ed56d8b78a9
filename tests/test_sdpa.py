"""`models.sdpa.attention`: torch's fused attention with cuDNN's backend left out off the CPU.

No GPU here: the meta device stands for one (any device but the CPU takes the GPU's path), and a
recording stand-in for `F.scaled_dot_product_attention` reads torch's backend switches at the call.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from models import sdpa
from models.multihead_attention import use_batch_first_attention


def _backend_switches() -> dict[str, bool]:
    cuda = torch.backends.cuda
    return {"cudnn": cuda.cudnn_sdp_enabled(), "flash": cuda.flash_sdp_enabled(),
            "efficient": cuda.mem_efficient_sdp_enabled(), "math": cuda.math_sdp_enabled()}


def _recording(monkeypatch) -> list[dict[str, bool]]:
    seen = []

    def record(q, k, v, attn_mask=None):
        seen.append(_backend_switches())
        return torch.empty_like(q)

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", record)
    return seen


def test_off_the_cpu_attention_runs_without_cudnn_and_restores_the_switches(monkeypatch):
    before = _backend_switches()
    assert before["cudnn"]  # torch's default: the switch this module turns off for its own calls
    seen = _recording(monkeypatch)
    q = torch.empty(2, 4, 5, 8, device="meta")
    assert sdpa.attention(q, q, q, torch.empty(5, 5, device="meta")).shape == q.shape
    assert seen == [{"cudnn": False, "flash": True, "efficient": True, "math": True}]
    assert _backend_switches() == before  # the user's other attention calls keep torch's choice


def test_on_the_cpu_attention_is_torchs_own_call(monkeypatch):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    mask = torch.full((5, 5), float("-inf")).triu(1)
    torch.testing.assert_close(sdpa.attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               rtol=0, atol=0)
    seen = _recording(monkeypatch)
    sdpa.attention(q, k, v)
    assert seen == [_backend_switches()] and seen[0]["cudnn"]


def test_the_batch_first_attention_module_calls_it_off_the_cpu(monkeypatch):
    seen = _recording(monkeypatch)
    module = nn.MultiheadAttention(16, 2, batch_first=True).to("meta")
    use_batch_first_attention(module)
    x = torch.empty(3, 7, 16, device="meta")
    module.train()  # a training step: torch's general path, which the module takes over
    out, _ = module(x, x, x, need_weights=False)
    assert out.shape == x.shape
    assert [s["cudnn"] for s in seen] == [False]
