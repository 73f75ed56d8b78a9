"""models.half_precision: the --precision context and input gradients that do not underflow in fp16."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.half_precision import active_precision, autocast, input_gradient


def _layer_and_input():
    torch.manual_seed(0)
    return nn.Linear(64, 64), torch.rand(8, 64, requires_grad=True)


def test_autocast_context_and_the_precision_it_reports():
    assert active_precision("cpu") == "fp32"
    for precision, recorded in (("amp", "amp_fp16"), ("amp_fp16", "amp_fp16"), ("amp_bf16", "amp_bf16")):
        with autocast("cpu", precision):
            assert active_precision("cpu") == recorded
    with autocast("cpu", "fp32"):
        assert active_precision("cpu") == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        autocast("cpu", "half")
    # the trainer's vocabulary (open_clip_train's): fp16/bf16 are half-precision weights there, refused here
    for weights in ("fp16", "bf16", "pure_bf16"):
        with pytest.raises(ValueError, match=f"^precision '{weights}' means half-precision weights .*use amp_fp16"):
            autocast("cpu", weights)


def test_trainer_and_eval_share_one_precision_vocabulary():
    """The trainer's --precision names are evaluation's plus the half-weight ones it refuses, and each
    mixed precision it accepts maps to accelerate's name."""
    from models.half_precision import HALF_WEIGHTS, PRECISIONS
    from train.config import ACCELERATE_PRECISION, PRECISIONS as TRAIN_PRECISIONS

    assert set(TRAIN_PRECISIONS) == set(PRECISIONS) | set(HALF_WEIGHTS)
    assert set(ACCELERATE_PRECISION) == set(PRECISIONS)


def test_tf32_allows_tf32_products_on_a_gpu_for_the_context_only():
    """tf32: a CUDA device's float32 products on TF32 tensor cores inside the context, torch's own
    flags back after it (an error inside too), and recorded as tf32 there; a CPU has no TF32
    path: nothing changes and fp32 is recorded."""
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = tuple(flag.allow_tf32 for flag in flags)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        with autocast("cpu", "tf32"):
            assert (flags[0].allow_tf32, flags[1].allow_tf32) == (False, False)
            assert active_precision("cpu") == "fp32"
        assert active_precision("cuda") == "fp32"
        with pytest.raises(RuntimeError, match="inside"):
            with autocast(torch.device("cuda", 0), "tf32"):
                assert (flags[0].allow_tf32, flags[1].allow_tf32) == (True, True)
                assert active_precision("cuda") == "tf32"
                assert active_precision("cpu") == "fp32"  # the flags are CUDA's: a CPU pass stays IEEE fp32
                raise RuntimeError("inside")
        assert (flags[0].allow_tf32, flags[1].allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_trainer_runs_its_steps_under_tf32_on_a_gpu_only():
    """`train --precision tf32`: the trainer's step context allows TF32 on a CUDA device; fp32 and
    a CPU leave torch's flags alone."""
    from types import SimpleNamespace

    from train.trainer import Trainer

    def trainer(precision, device):
        return SimpleNamespace(cfg=SimpleNamespace(precision=precision), accelerator=SimpleNamespace(device=torch.device(device)))
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        for precision, device, inside in (("tf32", "cuda", True), ("tf32", "cpu", False), ("fp32", "cuda", False)):
            with Trainer.matmul_precision(trainer(precision, device)):
                assert torch.backends.cuda.matmul.allow_tf32 is inside, (precision, device)
            assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("loss_factor", [1e-9, 10.0])
def test_fp16_input_gradient_is_loss_scaled(loss_factor):
    """1e-9: the plain fp16 backward flushes every gradient to 0 (fp16's smallest step is 6e-8);
    10: GradScaler's 2**16 overflows fp16, so the smaller scale is used. Both match fp32."""
    layer, x = _layer_and_input()
    (reference,) = torch.autograd.grad(layer(x).sum() * loss_factor, x)
    with autocast("cpu", "amp_fp16"):
        output = layer(x).float().sum() * loss_factor
        (plain,) = torch.autograd.grad(output, x, retain_graph=True)
        scaled = input_gradient(output, x)
    if loss_factor < 1:
        assert torch.count_nonzero(plain) == 0  # what the scale is for
    assert scaled.dtype == torch.float32 and torch.isfinite(scaled).all()
    torch.testing.assert_close(scaled, reference, rtol=2e-2, atol=2e-3 * float(reference.abs().max()))


def test_input_gradient_is_plain_autograd_outside_fp16():
    layer, x = _layer_and_input()
    for precision in ("fp32", "amp_bf16"):
        with autocast("cpu", precision):
            output = layer(x).float().sum() * 1e-3
            (plain,) = torch.autograd.grad(output, x, retain_graph=True)
            assert torch.equal(input_gradient(output, x), plain)


def test_pgd_under_fp16_autocast_moves_where_the_plain_gradient_underflows():
    from train.attacks.pgd import pgd_linf

    layer, x = _layer_and_input()
    images = x.detach()

    def tiny_loss(adv):  # a loss whose gradient underflows in fp16 without a scale
        return layer(adv).float().pow(2).sum() * 1e-9
    reference = pgd_linf(images, tiny_loss, eps=0.1, steps=3, step_size=0.05, random_start=False)
    with autocast("cpu", "amp_fp16"):
        adversarial = pgd_linf(images, tiny_loss, eps=0.1, steps=3, step_size=0.05, random_start=False)
    assert not torch.equal(reference, images)
    assert (adversarial - reference).abs().max() < 1e-6  # every sign as in fp32


def test_train_eval_takes_the_trainers_precision_names(tmp_path, capsys):
    """`train eval --precision` speaks the trainer's (open_clip_train's) names: fp16 is refused in one
    line before anything loads (the source does not even exist), naming what to use."""
    from train.cli import main as train_main

    assert train_main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--precision", "fp16",
                       "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --precision: precision 'fp16' means half-precision weights (open_clip_train)")
    assert "\n" not in err  # not argparse's usage block
    assert not (tmp_path / "eval").exists()



@pytest.mark.parametrize("name", ["tiny-albef", "tiny-blip"])
def test_match_heads_score_in_fp32_under_bf16_autocast(name):
    """was: under --precision amp_bf16 the ITM head's logits were bf16 (spacing 0.016-0.03 for logits of 2-4), so
    ITM re-ranking tied close captions, and a tie counts as a miss: recalls biased down beyond the model's
    rounding (audit AD: 35 distinct scores of 40 per image on a trained tiny-albef)."""
    from models import load_model

    model = load_model(name)
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, model.image_size, model.image_size)
    tokens = model.tokenize(["a red cube left of a blue ball", "two green spheres"])
    with autocast("cpu", "amp_bf16"), torch.no_grad():
        features = model.image_features(pixels)
        logits = model.itm_pair_logits(features, tokens)
        states = model.fusion_embedding(features, tokens) if hasattr(model, "fusion_embedding") else None
    assert logits.dtype == torch.float32
    if states is not None:  # the head's own product, in fp32, of the states as computed under bf16
        head = model.itm_head
        assert torch.allclose(logits, states.float() @ head.weight.T + head.bias, atol=1e-6)
    with torch.no_grad():
        assert model.itm_pair_logits(model.image_features(pixels), tokens).dtype == torch.float32


def test_fp16_input_gradient_of_a_half_input_is_unscaled_in_fp32():
    """The scaled gradient is divided back in fp32 (module doc): for an input held in fp16 the gradient
    divided in fp16 would underflow to 0 again, the very loss the scale is for."""
    layer, x = _layer_and_input()
    (reference,) = torch.autograd.grad(layer(x).sum() * 1e-9, x)
    half = x.detach().half().requires_grad_(True)
    with autocast("cpu", "amp_fp16"):
        gradient = input_gradient(layer(half).float().sum() * 1e-9, half)
    assert gradient.dtype == torch.float32
    torch.testing.assert_close(gradient, reference, rtol=2e-2, atol=2e-3 * float(reference.abs().max()))


def test_fp16_input_gradient_falls_back_to_the_smaller_scale_per_batch():
    """One image's loss term large enough that 2**16 overflows fp16, the others' small enough that an
    unscaled fp16 backward rounds them to a few subnormal steps: the smaller scale (2**8) must be tried
    before the unscaled gradient, or those images' gradients are off by ~20%."""
    layer, x = _layer_and_input()
    per_image = torch.tensor([100.0] + [1e-7] * 7)[:, None]
    (reference,) = torch.autograd.grad((layer(x) * per_image).sum(), x)
    with autocast("cpu", "amp_fp16"):
        gradient = input_gradient((layer(x).float() * per_image).sum(), x)
    error = (gradient - reference).abs().amax(dim=1) / reference.abs().amax(dim=1)
    assert bool((error < 1e-2).all()), error
