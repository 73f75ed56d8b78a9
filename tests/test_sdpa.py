"""`models.sdpa.attention`: torch's fused attention with cuDNN's backend left out off the CPU.

No GPU here: the meta device stands for one (any device but the CPU takes the GPU's path), and a
recording stand-in for `F.scaled_dot_product_attention` reads torch's backend switches at the call.
"""
from __future__ import annotations


import pytest
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


def test_torchs_own_inference_path_of_the_module_runs_without_cudnn_off_the_cpu(monkeypatch):
    seen = []

    def library_forward(self, query, key, value, **options):
        seen.append(_backend_switches())
        return query, None

    monkeypatch.setattr(nn.MultiheadAttention, "forward", library_forward)
    module = nn.MultiheadAttention(16, 2, batch_first=True).to("meta").eval()
    use_batch_first_attention(module)
    x = torch.empty(3, 7, 16, device="meta")
    # inference, where torch takes its fast path and the module leaves the call to the library (the
    # meta device has no autocast state to ask, so the module is told it is not the general path)
    monkeypatch.setattr(type(module), "_takes_general_path", lambda self, query, key, value: False)
    with torch.no_grad():
        module(x, x, x, need_weights=False)
    assert [s["cudnn"] for s in seen] == [False] and _backend_switches()["cudnn"]


def test_transformers_attention_layers_are_hooked_once_and_run_without_cudnn_off_the_cpu(monkeypatch):
    from models import load_model

    model = load_model("tiny-hf-clip")  # load_model hooks every family's attention layers
    hooked = [type(m).__name__ for m in model.modules() if hasattr(m, "_sdpa_contexts")]
    assert hooked and set(hooked) == {"CLIPAttention"}
    assert sdpa.leave_out_cudnn(model) == 0  # not twice
    assert sdpa.leave_out_cudnn(nn.Sequential(nn.MultiheadAttention(8, 2))) == 0  # torch's: the module's own
    on_cpu = model.encode_text(["a red cube"])

    seen, library = [], F.scaled_dot_product_attention

    def record(*args, **options):
        seen.append(_backend_switches())
        return library(*args, **options)

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", record)
    monkeypatch.setattr(sdpa, "_runs_off_cpu", lambda module: True)  # as if on a GPU, computed here
    torch.testing.assert_close(model.encode_text(["a red cube"]), on_cpu)
    text_layers = [m for name, m in model.named_modules() if "text_model" in name and hasattr(m, "_sdpa_contexts")]
    assert len(seen) == len(text_layers) > 0 and not any(s["cudnn"] for s in seen)
    assert _backend_switches()["cudnn"]

    def fail(*args, **options):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        model.encode_text(["a red cube"])
    assert _backend_switches()["cudnn"]  # the exit hook ran although the forward raised
    assert all(m._sdpa_contexts == [] for m in model.modules() if hasattr(m, "_sdpa_contexts"))


def test_the_attacks_masked_lm_is_hooked_too():
    from augment.registry import load_mlm

    model, _ = load_mlm("tiny-mlm")
    hooked = {type(m).__name__ for m in model.modules() if hasattr(m, "_sdpa_contexts")}
    assert hooked and all(name.endswith("Attention") for name in hooked)


def test_a_hooked_layer_is_off_the_cpu_on_any_other_device():
    """The hooks take the GPU's backends wherever `attention` does: any device but the CPU (the meta
    device standing for one, as above), not CUDA alone; a layer without parameters stays torch's."""
    assert sdpa._runs_off_cpu(nn.Linear(2, 2).to("meta"))
    assert not sdpa._runs_off_cpu(nn.Linear(2, 2)) and not sdpa._runs_off_cpu(nn.Identity())
