"""Real-size architectures with random weights, for benchmarks on machines without the Hub.

`sd15-shaped` is Stable Diffusion v1.5's pipeline (UNet 859.5M, VAE 83.7M and CLIP ViT-L/14 text
encoder 123.1M parameters, the real CLIP BPE tokenizer) built from its published config values
(stable-diffusion-v1-5/stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json) with random,
seeded weights. Its images are noise; its speed and memory are SD 1.5's, which is what a
batching benchmark on a GPU without network access needs.

Scheduler: DDIMScheduler with SD 1.5's noise schedule, the class `tiny-sd` uses, so that a
tiny-sd run and an sd15-shaped run differ only in model size (SD 1.5 itself ships PNDM with
the same betas; both cost one UNet call per step).

Modules are built directly on the target device (`with torch.device(device)`) and then cast, so
an 860M-parameter UNet is initialised by the GPU in a second, not by the CPU in minutes; on the
`meta` device they cost nothing (the tests count their parameters that way).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from augment.tiny import SD_SCHEDULER_CONFIG

SD15_SHAPED = "sd15-shaped"

# unet/config.json (values that differ from diffusers' defaults, and the block layout)
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
}
# vae/config.json: four blocks -> 8x downsampling, 512 px <-> 64x64 latents
SD15_VAE_CONFIG = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,  # not in the file: diffusers' default, the value SD 1.x uses
}
# text_encoder/config.json (openai/clip-vit-large-patch14's text tower). bos/eos/pad ids are the
# published ones (0/2/1, a known quirk of that file); the pipeline never reads them: it uses the
# tokenizer's ids and the last hidden state, not the pooled output.
SD15_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# scheduler/scheduler_config.json's noise schedule: the one tiny-sd's DDIMScheduler is built from (see the
# module docstring), with DDIM's defaults for the training steps and the prediction written out
SD15_SCHEDULER_CONFIG = {**SD_SCHEDULER_CONFIG, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
SD15_TOKENIZER_MAX_LENGTH = 77  # tokenizer/tokenizer_config.json model_max_length


def _build(factory: Callable[[], Any], device: Any, dtype: Any, seed: int):
    """`factory()` constructed on `device` with a seeded init, cast to `dtype`, in eval mode."""
    import torch

    from augment.registry import as_torch_dtype

    device, dtype = torch.device(device), as_torch_dtype(dtype)
    if device.type != "meta":
        torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
    with torch.device(device):
        module = factory()
    if dtype != torch.float32:
        # diffusers' to() warns "modules that should be kept in float32: []" even when there are none
        with _quiet_logger("diffusers.models.modeling_utils"):
            module = module.to(dtype)
    return module.eval()


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def sd15_unet(device: Any = "cpu", dtype: Any = "fp32", seed: int = 0):
    from diffusers import UNet2DConditionModel

    return _build(lambda: UNet2DConditionModel(**SD15_UNET_CONFIG), device, dtype, seed)


def sd15_vae(device: Any = "cpu", dtype: Any = "fp32", seed: int = 1):
    from diffusers import AutoencoderKL

    return _build(lambda: AutoencoderKL(**SD15_VAE_CONFIG), device, dtype, seed)


def sd15_text_encoder(device: Any = "cpu", dtype: Any = "fp32", seed: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel

    return _build(lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)), device, dtype, seed)


def sd15_tokenizer():
    """The real CLIP BPE tokenizer (ids equal open_clip's), built from open_clip's merges file."""
    from augment.tiny import build_clip_tokenizer

    with tempfile.TemporaryDirectory(prefix="sd15-shaped-tok-") as work_dir:
        tokenizer = build_clip_tokenizer(Path(work_dir))  # read into memory: the folder can go
    tokenizer.model_max_length = SD15_TOKENIZER_MAX_LENGTH
    return tokenizer


def sd15_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD15_SCHEDULER_CONFIG)


def sd15_shaped_components(device: Any = "cpu", dtype: Any = "fp32", seed: int = 0) -> dict:
    """The pipeline's modules: build once, then make a t2i and an i2i pipeline from them."""
    return {
        "unet": sd15_unet(device, dtype, seed),
        "vae": sd15_vae(device, dtype, seed + 1),
        "text_encoder": sd15_text_encoder(device, dtype, seed + 2),
        "tokenizer": sd15_tokenizer(),
    }


def sd_pipeline(components: dict, kind: str = "t2i"):
    """StableDiffusion(Img2Img)Pipeline over `components` (shared, not copied), its own
    scheduler, no safety checker, progress bar off (as augment.registry.load_sd_pipeline)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    cls = {"t2i": StableDiffusionPipeline, "i2i": StableDiffusionImg2ImgPipeline}[kind]
    pipe = cls(**components, scheduler=sd15_scheduler(), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SHAPED_MODELS = {SD15_SHAPED: sd15_shaped_components}
