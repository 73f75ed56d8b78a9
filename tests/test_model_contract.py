"""The model contract: one suite, run for the tiny twin of every model family.

A family passes when its model builds, saves and reloads (through `models.load_model` and
through the family's own native loader) with identical outputs; embeddings are unit vectors of
one width; gradients reach the pixels; `similarity` applies the family's scale and bias; fusion
families score row-aligned pairs with ITM; the two towers partition the trainable parameters;
tokens batch, index and concatenate; the after-step hook keeps the logit scale in range.

Adding a family: append its twin to `TWINS`, its scale range to `SCALE_RANGE`, its native
loader check to `NATIVE_CHECKS` and its own eval preprocessing to `NATIVE_EVAL_PIXELS`.
"""
from __future__ import annotations

import copy
import json
import os

import re

import pytest
import torch

import models
from models import TextTokens, load_model

TWINS = ["tiny-clip", "tiny-siglip", "tiny-blip", "tiny-hf-clip", "tiny-albef"]
# (smallest, largest) logit scale the family's after_optimizer_step allows
SCALE_RANGE = {
    "open_clip": (1.0, 100.0),  # CLIP: log scale clamped to [0, ln 100]
    "hf_clip": (1.0, 100.0),
    "blip": (2.0, 1000.0),  # BLIP: temperature clamped to [0.001, 0.5]
    "albef": (2.0, 1000.0),  # ALBEF: the same bound
}
CAPTIONS = ["a red circle on the left", "two blue squares", "a small green triangle above a star"]
MORE_CAPTIONS = ["a yellow hexagon", "the sky"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=TWINS)
def twin(request):
    """(name, model) of one tiny twin, loaded once per module."""
    return request.param, load_model(request.param)


def _pixels(model, n: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, model.image_size, model.image_size, generator=generator)


def _outputs(model, pixels: torch.Tensor, texts=CAPTIONS) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        tokens = model.tokenize(texts)
        out = {"image": model.encode_image(pixels), "text": model.encode_tokens(tokens),
               "scale": model.logit_scale.clone()}
        if model.logit_bias_param() is not None:
            out["bias"] = model.logit_bias_param().detach().clone()
        if model.has_itm:
            out["itm"] = model.itm_logits(model.image_features(pixels), tokens)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _scale_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters the logit scale is computed from (found by autograd, family-independent)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model.logit_scale_param(), params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None]


# ---------------------------------------------------------------------------------------------
# identity, transforms, embeddings
# ---------------------------------------------------------------------------------------------


def test_identity_and_transforms(twin):
    from PIL import Image

    name, model = twin
    assert models.family_of(name) == model.family and model.kind == "retrieval"
    assert model.describe()["family"] == model.family and model.name == name
    assert not model.training  # load_model gives eval mode
    image = Image.new("RGB", (90, 50), (250, 10, 10))
    for transform in (model.preprocess_eval, model.preprocess_train):
        pixels = transform(image)
        assert pixels.shape == (3, model.image_size, model.image_size) and pixels.dtype == torch.float32
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0  # never normalised
    assert model.preprocess_eval(image.convert("L")).shape == pixels.shape  # grey -> RGB
    assert pixels[0].mean() > 0.9 and pixels[1].mean() < 0.1  # red stays red: no normalisation


def _open_clip_eval_pixels(name, model, image):
    import open_clip

    from augment import tiny

    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny.tiny_dir(name)}")
    return preprocess(image)


def _processor_eval_pixels(name, model, image):
    return model.processor(images=image, return_tensors="pt")["pixel_values"][0]


# family -> normalised eval pixels as the family's own library prepares them
def _albef_eval_pixels(name, model, image):
    from PIL import Image
    from torchvision.transforms.functional import normalize, to_tensor

    # ALBEF's test transform: PIL bicubic resize to a square, ToTensor, CLIP's mean/std
    resized = image.convert("RGB").resize((model.image_size, model.image_size), Image.BICUBIC)
    return normalize(to_tensor(resized), model.mean, model.std)


NATIVE_EVAL_PIXELS = {"open_clip": _open_clip_eval_pixels, "blip": _processor_eval_pixels,
                      "hf_clip": _processor_eval_pixels, "albef": _albef_eval_pixels}


def test_eval_transform_matches_the_family_preprocessing(twin):
    from PIL import Image

    name, model = twin
    image = Image.radial_gradient("L").convert("RGB").resize((150, 100))  # not square, not the model's size
    ours = model.normalize(model.preprocess_eval(image))
    theirs = NATIVE_EVAL_PIXELS[model.family](name, model, image)
    assert ours.shape == theirs.shape
    difference = (ours - theirs).abs()
    assert difference.mean() < 1e-3 and difference.max() < 0.02  # at most one grey level of rounding


def test_embeddings_are_unit_vectors_of_one_width(twin):
    _, model = twin
    with torch.no_grad():
        images = model.encode_image(_pixels(model))
        texts = model.encode_text(CAPTIONS)
        raw = model.encode_image(_pixels(model), normalize=False)
    assert images.shape[0] == 3 and texts.shape[0] == len(CAPTIONS) and images.shape[1] == texts.shape[1]
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(len(CAPTIONS)))
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), images, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(images[0], images[1])  # different pixels, different embeddings
    assert not torch.allclose(texts[0], texts[1])


def test_similarity_applies_the_family_scale_and_bias(twin):
    name, model = twin
    with torch.no_grad():
        images, texts = model.encode_image(_pixels(model)), model.encode_text(CAPTIONS)
        logits = model.similarity(images, texts)
        bias = model.logit_bias_param()
    expected = model.logit_scale * images @ texts.T + (bias if bias is not None else 0.0)
    torch.testing.assert_close(logits, expected)
    assert (bias is not None) == (name == "tiny-siglip") == (model.itc_loss == "sigmoid")
    assert model.logit_scale_param().requires_grad  # the scale is trained
    out = model(_pixels(model), model.tokenize(CAPTIONS))
    torch.testing.assert_close(out.image_emb.detach(), images)
    torch.testing.assert_close(out.logit_scale.detach(), model.logit_scale)


def test_pixel_gradients_flow(twin):
    _, model = twin
    pixels = _pixels(model).requires_grad_(True)
    texts = model.encode_text(CAPTIONS).detach()
    logits = model.similarity(model.encode_image(pixels), texts)
    (grad,) = torch.autograd.grad(logits.diagonal().sum(), pixels)
    assert grad.shape == pixels.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_grad_checkpointing_recomputes_and_keeps_the_gradients(twin):
    """`set_grad_checkpointing(True)` (the trainer's --grad-checkpointing): the backward pass re-runs
    forward passes (module hooks fire in it) and the parameter gradients stay the same."""
    _, shared = twin
    model = copy.deepcopy(shared).train()
    calls = {"n": 0}
    for module in model.modules():
        module.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    pixels = _pixels(model, 2)

    def backward() -> tuple[int, list]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss = model.encode_image(pixels).sum() + model.encode_text(CAPTIONS[:2]).sum()
        if model.has_itm:
            loss = loss + model.itm_scores(pixels, CAPTIONS[:2]).sum()
        calls["n"] = 0
        loss.backward()
        return calls["n"], [p.grad for p in model.parameters()]

    plain_calls, plain = backward()
    model.set_grad_checkpointing(True)
    recomputed_calls, recomputed = backward()
    assert plain_calls == 0 and recomputed_calls > 0
    for a, b in zip(plain, recomputed):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6)


def test_itm_scores_row_aligned_pairs(twin):
    _, model = twin
    pixels, tokens = _pixels(model), model.tokenize(CAPTIONS)
    if not model.has_itm:
        with pytest.raises(NotImplementedError):
            model.image_features(pixels)
        return
    pixels.requires_grad_(True)
    out = model(pixels, tokens, image_features=True)
    assert out.image_features is not None and out.image_features.shape[0] == 3
    torch.testing.assert_close(out.image_emb, model.embed_image_features(out.image_features))
    logits = model.itm_logits(out.image_features, tokens)
    assert logits.shape == (3,)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(logits.sum(), [pixels, *params], allow_unused=True)
    assert grads[0].abs().sum() > 0  # reaches the pixels
    assert sum(int(g is not None and bool(g.abs().sum() > 0)) for g in grads[1:]) > len(params) // 2
    with torch.no_grad():
        scores = model.itm_scores(pixels.detach(), CAPTIONS)
        torch.testing.assert_close(scores, torch.sigmoid(logits.detach()))
        swapped = model.itm_logits(out.image_features.detach(), tokens[[1, 2, 0]])
    assert not torch.allclose(swapped, logits.detach())  # the pair matters, not only the image
    with pytest.raises(ValueError):
        model.itm_logits(out.image_features.detach()[:2], tokens)


# ---------------------------------------------------------------------------------------------
# training hooks
# ---------------------------------------------------------------------------------------------


def test_tower_parameters_partition_the_model(twin):
    _, model = twin
    image = {id(p) for p in model.tower_parameters("image")}
    text = {id(p) for p in model.tower_parameters("text")}
    everything = {id(p): p for p in model.parameters()}
    assert image and text and not image & text
    rest = [p for key, p in everything.items() if key not in image | text]
    scale = {id(p) for p in _scale_parameters(model)}
    bias = model.logit_bias_param()
    assert {id(p) for p in rest} == scale | ({id(bias)} if bias is not None else set())
    assert all(p.numel() == 1 for p in rest)
    groups = model.parameter_groups(weight_decay=0.1)
    assert sum(len(g["params"]) for g in groups) == len(everything)
    no_decay = {id(p) for p in groups[0]["params"]}
    assert scale <= no_decay and groups[1]["weight_decay"] == 0.1
    # position embeddings are not decayed in any family (open_clip's were, before its no_weight_decay() was read)
    positions = {id(p) for name, p in model.named_parameters() if "position" in name or "pos_embed" in name}
    assert positions and positions <= no_decay
    # every projection matrix is decayed: a 2-d weight counted as a gain would leave the model undecayed
    projections = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad}
    assert projections and projections <= {id(p) for p in groups[1]["params"]}
    with pytest.raises(ValueError):
        model.tower_parameters("audio")


def test_after_optimizer_step_keeps_the_scale_in_range(twin):
    _, model = twin
    model = copy.deepcopy(model)
    low, high = SCALE_RANGE[model.family]
    (param,) = _scale_parameters(model)
    if model.itc_loss == "sigmoid":  # SigLIP's learnt scale is left alone (released ones exceed 100)
        for value in (1e-6, 50.0):
            with torch.no_grad():
                param.fill_(value)
            model.after_optimizer_step()
            assert float(param.detach()) == pytest.approx(value)
        return
    seen = []
    for value in (1e-6, 50.0):  # too hot or too cold, whichever the parameter stores
        with torch.no_grad():
            param.fill_(value)
        model.after_optimizer_step()
        seen.append(float(model.logit_scale))
        assert low - 1e-3 <= seen[-1] <= high * (1 + 1e-5), seen
    assert pytest.approx(high) in seen or pytest.approx(low) in seen  # one of them was clamped


def test_text_tokens_batch_index_and_concatenate(twin):
    _, model = twin
    first, second = model.tokenize(CAPTIONS), model.tokenize(MORE_CAPTIONS)
    both = TextTokens.cat([first, second])
    assert len(both) == len(CAPTIONS) + len(MORE_CAPTIONS)
    assert both.input_ids.device == model.device
    with torch.no_grad():
        together = model.encode_tokens(both)
        apart = torch.cat([model.encode_tokens(first), model.encode_tokens(second)])
        picked = model.encode_tokens(both[[3, 0]])
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)  # padding changes nothing
    torch.testing.assert_close(picked, apart[[3, 0]], rtol=1e-4, atol=1e-5)
    assert len(both[1:3]) == 2 and both.to("cpu").input_ids.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------


def _changed_copy(model):
    """A copy whose scale (and weights) differ from the twin's, so reloading must read them."""
    changed = copy.deepcopy(model)
    (param,) = _scale_parameters(changed)
    with torch.no_grad():
        param.mul_(0.9)
        next(iter(changed.tower_parameters("image"))).add_(0.01)
    changed.after_optimizer_step()
    return changed


def test_save_and_reload_through_load_model(twin, tmp_path):
    _, model = twin
    changed = _changed_copy(model)
    umask = os.umask(0o022)  # a known umask, so the files' modes below can be checked
    try:
        folder = models.save_model(changed, tmp_path / "saved")
    finally:
        os.umask(umask)
    info = json.loads((folder / models.MODEL_INFO_NAME).read_text())
    assert info["family"] == model.family and info["image_size"] == model.image_size
    assert not list(folder.glob(".*tmp*")) and not list(folder.glob(".save-*"))  # nothing half-written
    # every file as umask 022 makes plain files, the weights too (safetensors writes them 0600)
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.rglob("*") if path.is_file()}
    assert set(modes.values()) == {0o644}, modes
    pixels = _pixels(model)
    expected = _outputs(changed, pixels)
    with pytest.raises(AssertionError):
        _assert_same(expected, _outputs(model, pixels))  # the change is visible
    reloaded = load_model(str(folder))
    assert type(reloaded) is type(model) and not reloaded.training
    _assert_same(_outputs(reloaded, pixels), expected)
    # the native layout alone (no matplus_model.json) still finds the family
    (folder / models.MODEL_INFO_NAME).unlink()
    assert models.family_of(str(folder)) == model.family
    _assert_same(_outputs(load_model(f"local-dir:{folder}"), pixels), expected)


def _native_open_clip(folder, model, pixels, tokens):
    import open_clip

    native = open_clip.create_model(f"local-dir:{folder}").eval()
    image = native.encode_image(model.normalize(pixels), normalize=True)
    text = native.encode_text(tokens.input_ids, normalize=True)
    logits = native.logit_scale.exp() * image @ text.T
    if getattr(native, "logit_bias", None) is not None:
        logits = logits + native.logit_bias
    return {"image": image, "text": text, "logits": logits}


def _native_blip(folder, model, pixels, tokens):
    from transformers import BlipForImageTextRetrieval

    native = BlipForImageTextRetrieval.from_pretrained(str(folder), local_files_only=True).eval()
    normalized = model.normalize(pixels)
    cosine = native(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=normalized,
                    use_itm_head=False).itm_score
    itm = native(input_ids=model.itm_input_ids(tokens.input_ids), attention_mask=tokens.attention_mask,
                 pixel_values=normalized, use_itm_head=True).itm_score
    return {"cosine": cosine, "itm": itm[:, 1] - itm[:, 0],
            "scale": torch.tensor(1.0 / native.config.itc_temperature)}


def _native_hf_clip(folder, model, pixels, tokens):
    from transformers import CLIPModel

    native = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    out = native(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                 pixel_values=model.normalize(pixels))
    return {"logits": out.logits_per_image}


# family -> what the family's own library computes from the saved folder
def _native_albef(folder, model, pixels, tokens):
    from safetensors.torch import load_file

    from tests.albef_reference import reference_albef

    # no ALBEF library to load with: ALBEF's forward written out in plain torch, on the saved
    # weights (ALBEF's own key names)
    state = load_file(str(folder / "albef_model.safetensors"))
    config = json.loads((folder / "albef_config.json").read_text())
    image, text, itm = reference_albef(state, config, model.normalize(pixels), tokens.input_ids,
                                       tokens.attention_mask)
    return {"image": image, "text": text, "itm": itm[:, 1] - itm[:, 0], "scale": 1.0 / state["temp"]}


NATIVE_CHECKS = {"open_clip": _native_open_clip, "blip": _native_blip, "hf_clip": _native_hf_clip,
                 "albef": _native_albef}


def test_native_loader_reads_the_saved_folder(twin, tmp_path):
    _, model = twin
    changed = _changed_copy(model)
    folder = changed.save(tmp_path / "native")
    pixels = _pixels(model)
    with torch.no_grad():
        tokens = changed.tokenize(CAPTIONS)
        native = NATIVE_CHECKS[model.family](folder, changed, pixels, tokens)
        image, text = changed.encode_image(pixels), changed.encode_tokens(tokens)
        ours = {"image": image, "text": text, "logits": changed.similarity(image, text),
                "cosine": image @ text.T, "scale": changed.logit_scale}
        if model.has_itm:
            ours["itm"] = changed.itm_logits(changed.image_features(pixels), tokens)
    for key, value in native.items():
        torch.testing.assert_close(value, ours[key], rtol=1e-4, atol=1e-5, msg=key)


# ---------------------------------------------------------------------------------------------
# names (not per family): which family a name belongs to, clear failures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, family", [
    ("Salesforce/blip-itm-base-coco", "blip"),
    ("Salesforce/blip-itm-large-flickr", "blip"),
    ("blip-itm-base-flickr", "blip"),
    ("transformers:openai/clip-vit-base-patch32", "hf_clip"),
    ("tiny-blip", "blip"),
    ("tiny-hf-clip", "hf_clip"),
    ("tiny-albef", "albef"),
    ("checkpoints/albef_retrieval_flickr.pth", "albef"),
    ("ViT-B-16", "open_clip"),
])
def test_family_of_names(name, family):
    assert models.family_of(name) == family


def test_uncached_hub_models_fail_with_one_line_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from augment.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    for name in ("blip-itm-large-coco", "transformers:openai/clip-vit-base-patch16"):
        with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as caught:
            load_model(name)
        assert "\n" not in str(caught.value)
    with pytest.raises(ModelLoadError, match="pretrained tag"):
        load_model("tiny-blip", pretrained="openai")
    with pytest.raises(ModelLoadError, match="not a BLIP model"):
        models.family_module("blip").load("tiny-hf-clip")
    # open_clip: a tag with a model that has its own weights would be dropped without a word
    with pytest.raises(ModelLoadError, match=r"'tiny-clip' has random weights of its own: --pretrained openai applies "
                                             r"to an open_clip architecture name \(ViT-B-16 --pretrained openai\) only"):
        load_model("tiny-clip", pretrained="openai")
    folder = tmp_path / "saved-clip"
    load_model("tiny-clip").save(folder)
    with pytest.raises(ModelLoadError, match="is a saved model with its own weights: --pretrained laion2b"):
        load_model(str(folder), pretrained="laion2b")
    weights = next(folder.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match=f"{re.escape(str(weights))} is a file: give the folder that holds it"):
        load_model(str(weights))


def test_missing_model_folders_fail_with_one_line_naming_them(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from augment.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.chdir(tmp_path)
    # paths (absolute, relative, deeper than a Hub id) that do not exist: the folder is named, no Hub lookup
    for name in (str(tmp_path / "run" / "ckpt"), "runs/nothing/ckpt", "./ckpt"):
        with pytest.raises(ModelLoadError, match="does not exist") as caught:
            load_model(name)
        assert "\n" not in str(caught.value)
    # one slash: a folder or a Hub id; offline and uncached, both are said (not "unknown CLIP model")
    for name in ("missing/ckpt", "a b/c"):
        with pytest.raises(ModelLoadError, match="no folder .* and no Hub model") as caught:
            load_model(name)
        assert "\n" not in str(caught.value)


def test_a_blip_captioner_is_not_a_retrieval_model(tmp_path):
    from augment import tiny
    from augment.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="BlipForConditionalGeneration, not a BlipForImageTextRetrieval"):
        models.family_module("blip").load(str(tiny.tiny_dir("tiny-captioner")))


@pytest.mark.parametrize("temperature", ["abc", float("nan"), 0])
def test_a_saved_blip_with_a_bad_temperature_is_one_line(tmp_path, temperature):
    """A hand-edited config.json, or a diverged run's saved NaN: every score would be NaN, recall 0."""
    import json

    from augment.errors import ModelLoadError

    folder = tmp_path / "blip"
    load_model("tiny-blip").save(folder)
    config = json.loads((folder / "config.json").read_text())
    config["itc_temperature"] = temperature
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="config.json's itc_temperature is .*, not a positive number"):
        load_model(str(folder))


def test_blip_enc_token_follows_blip_tokenizer_layout():
    from types import SimpleNamespace

    from models.blip import enc_token_id

    class Tokenizer:  # bert-base-uncased size, with or without BLIP's added tokens
        unk_token_id = 100

        def __init__(self, size, enc=None):
            self.size, self.enc = size, enc

        def __len__(self):
            return self.size

        def convert_tokens_to_ids(self, token):
            return self.enc if token == "[ENC]" and self.enc is not None else self.unk_token_id

    blip_text = SimpleNamespace(vocab_size=30524, bos_token_id=30522)
    assert enc_token_id(Tokenizer(30524, enc=30523), blip_text) == 30523  # BLIP's own tokenizer
    assert enc_token_id(Tokenizer(30523), blip_text) == 30523  # converted: [DEC] kept, [ENC] dropped
    assert enc_token_id(Tokenizer(30522), blip_text) == 30523  # converted: neither kept
    assert enc_token_id(Tokenizer(30522), SimpleNamespace(vocab_size=30522, bos_token_id=101)) is None


# ----------------------------------------------------------------------------- open_clip text shortcuts
# `OpenClipModel.fast_text`: the trimmed text tower and the per-word token ids must give exactly
# what open_clip's own tokenizer and full-context `encode_text` give.

SHORTCUT_CAPTIONS = [
    "a dog.",
    "A man in a red shirt rides a bicycle down a busy city street while people watch from the side",
    " ".join(["many words"] * 60),  # past 77 tokens: truncated, ends on the end-of-text token
    "two  cats,sleeping on a [UNK] sofa!",
    "the woman's hat (blue) -- 3.5 m tall; isn't it?",
    "",
]


def _open_clip_wrapped(text_cfg: dict, clean: str = "lower"):
    """OpenClipModel around a random-weight open_clip CLIP with `text_cfg` and a tiny image tower."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from models.open_clip_family import OpenClipModel

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "patch_size": 16, "width": 32,
                                                          "layers": 1, "head_width": 16}, text_cfg=text_cfg).eval()
    tokenizer = SimpleTokenizer(context_length=clip.context_length, clean=clean)
    return OpenClipModel(clip, tokenizer, name="random", pretrained=None, preprocess_train=None,
                         preprocess_eval=None, model_cfg={}, preprocess_cfg={"size": 32, "mean": (0.5,) * 3,
                                                                               "std": (0.5,) * 3})


TINY_TEXT = {"context_length": 77, "width": 64, "heads": 4, "layers": 2}


def _open_clip_release() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version("open_clip_torch").split(".")[:2])


# open_clip 3.1 added the `eos` text pool (at the text config's `eos_id`); 3.0, pyproject's lowest, has neither
# (its CLIPTextCfg refuses `eos_id`), and `OpenClipModel._causal_end_pooled` reads `text_eos_id` only where it exists
EOS_TEXT = pytest.param({**TINY_TEXT, "pool_type": "eos", "eos_id": 49407}, True, marks=pytest.mark.skipif(
    _open_clip_release() < (3, 1), reason="open_clip < 3.1 has no eos text pooling"))


def _vit_b_16_text() -> dict:
    import open_clip

    return dict(open_clip.get_model_config("ViT-B-16")["text_cfg"])


@pytest.mark.parametrize("text_cfg, trims", [
    (TINY_TEXT, True),
    (_vit_b_16_text, True),  # ViT-B-16's text tower shape (12 x 512, context 77), random weights
    EOS_TEXT,
    ({**TINY_TEXT, "pool_type": "first"}, False),
    ({**TINY_TEXT, "pool_type": "last"}, False),
    ({**TINY_TEXT, "no_causal_mask": True}, False),  # every token sees the padding: not trimmable
], ids=["tiny", "vit-b-16-text", "eos", "first", "last", "no-causal-mask"])
def test_trimmed_text_tower_equals_open_clip(text_cfg, trims):
    model = _open_clip_wrapped(text_cfg() if callable(text_cfg) else text_cfg)
    for texts in (SHORTCUT_CAPTIONS, SHORTCUT_CAPTIONS[:1], SHORTCUT_CAPTIONS[3:5]):
        ids = model.tokenizer(texts)
        with torch.no_grad():
            expected = model.model.encode_text(ids)
            trimmed = model._encode_trimmed(ids)
            assert (trimmed is not None) == trims, "trimmed where it is not exact, or not where it is"
            fast = model.encode_tokens(TextTokens(ids), normalize=False)
            model.fast_text = False
            slow = model.encode_tokens(TextTokens(ids), normalize=False)
            model.fast_text = True
        torch.testing.assert_close(slow, expected, rtol=0, atol=0)  # the switch gives open_clip's own path
        torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
        if trims:
            assert not torch.equal(model._text_tower(ids[:, :3], ids[:, :3].argmax(-1)), expected), \
                "a tower cut before the pooled token must differ (the comparison can fail)"


@pytest.mark.parametrize("text_cfg", [TINY_TEXT, _vit_b_16_text], ids=["tiny", "vit-b-16-text"])
def test_trimmed_tower_runs_its_last_block_at_the_pooled_token_only(text_cfg):
    """The last block's MLP sees one row per text (the pooled token), the others every position."""
    model = _open_clip_wrapped(text_cfg() if callable(text_cfg) else text_cfg)
    ids = model.tokenizer(SHORTCUT_CAPTIONS)
    rows = []
    hooks = [block.mlp.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
             for block in model.model.transformer.resblocks]
    with torch.no_grad():
        model._text_tower(ids, ids.argmax(-1))
    for hook in hooks:
        hook.remove()
    blocks = len(model.model.transformer.resblocks)
    assert rows[:blocks - 1] == [ids.numel()] * (blocks - 1) and rows[-1] == len(ids)


def test_trimmed_text_tower_keeps_gradients():
    model = _open_clip_wrapped(TINY_TEXT)
    ids = model.tokenizer(SHORTCUT_CAPTIONS)
    model.encode_tokens(TextTokens(ids)).square().sum().backward()
    fast = [p.grad.clone() for p in model.model.transformer.parameters()]
    model.zero_grad()
    model.model.encode_text(ids, normalize=True).square().sum().backward()
    for a, b in zip(fast, (p.grad for p in model.model.transformer.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_length_groups_partition_sorted_lengths():
    from models.length_groups import length_groups

    lengths = [3, 3, 4, 9, 9, 9, 20, 21]
    assert length_groups(lengths, overhead=0) == [(0, 2), (2, 3), (3, 6), (6, 7), (7, 8)]  # one per length
    assert length_groups(lengths, overhead=10_000) == [(0, 8)]
    groups = length_groups(lengths, overhead=5)
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert groups == [(0, 3), (3, 6), (6, 8)]  # cost 3x4 + 3x9 + 2x21 + 3x5 = 96, the least
    assert length_groups([]) == []  # no texts: no pass (the cost table would read lengths[-1])


def test_text_towers_cut_passes_by_their_devices_overhead(monkeypatch):
    """A GPU pass costs its launches, so a tower there cuts fewer passes than on a CPU; the trimmed
    open_clip tower and the text prefix cache each ask for their own device's overhead."""
    import models.length_groups as groups_module
    import models.open_clip_family as family_module
    import models.text_prefix as prefix_module
    from models.length_groups import GPU_GROUP_OVERHEAD_TOKENS, GROUP_OVERHEAD_TOKENS, pass_overhead, sorted_length_groups

    assert pass_overhead("cpu") == GROUP_OVERHEAD_TOKENS < pass_overhead("cuda") == GPU_GROUP_OVERHEAD_TOKENS
    assert pass_overhead(torch.device("cuda", 1)) == GPU_GROUP_OVERHEAD_TOKENS
    lengths = torch.tensor([2] * 40 + [9] * 40 + [30] * 40)
    assert len(sorted_length_groups(lengths, overhead=pass_overhead("cpu"))[2]) == 3
    assert sorted_length_groups(lengths, overhead=pass_overhead("cuda"))[2] == [(0, 120)]

    asked = []

    def recording(device):
        asked.append(torch.device(device).type)
        return groups_module.pass_overhead(device)

    monkeypatch.setattr(family_module, "pass_overhead", recording)
    monkeypatch.setattr(prefix_module, "pass_overhead", recording)
    model = load_model("tiny-clip")
    model.encode_text(["a red cube", "two small blue spheres on the left"])
    assert asked == ["cpu"]
    model.text_prefix_cache(PREFIX_REFERENCES).encode(["a red cube"], [0])
    assert asked[1:] and set(asked) == {"cpu"}


def _tokenizer_texts() -> list[str]:
    """Captions that stress the tokenizer's cleaning: punctuation, case, unicode, HTML, mojibake,
    control characters, odd whitespace, truncation; plus random strings."""
    import random

    texts = SHORTCUT_CAPTIONS + [
        "Dog's BALL isn't red.", "a café, naïve façade", "Ã© mojibake Ã\xa0 here", "a &amp; b &lt;c&gt; &amp;amp;",
        "<b>bold</b> & <i>it</i>", "<b> &amp;amp;amp;",  # ftfy unescapes a word alone, not next to "<"
        "a\x0bb vertical\x1ctab",  # whitespace to str.split, removed by ftfy: one word, not two
        "tab\tand\nnewline\r\nhere", "nbsp\u00a0word", "emoji 🐶🐱 dog",
        "中文 字幕 測試", "ﬁne ligature", "ｆｕｌｌ width", "curly “quotes” ‘here’", "ctrl\x07bell\x1bcode",
        "  leading and trailing  ", "x" * 300, "<start_of_text> literal <end_of_text>", "123 4,567.89 1st",
    ]
    rng = random.Random(0)
    alphabet = "abcdefghij KLMNO .,;:!?'\"-()[]&<>#@$%^*_+=~`/\\|{}0123456789  é中🐶\t"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(300)]
    words = "a man woman dog's riding red blue bicycle, street. the of (tall) UNK [UNK]".split()
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 90))) for _ in range(300)]
    return texts


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_word_cached_tokenizer_equals_open_clip(clean):
    model = _open_clip_wrapped(TINY_TEXT, clean=clean)
    texts = _tokenizer_texts()
    expected = model.tokenizer(texts)
    first = model.tokenize(texts).input_ids  # fills the word cache
    assert len(model._word_ids) > 0, "the per-word path was not taken"
    again = model.tokenize(list(reversed(texts))).input_ids.flip(0)  # from the cache
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert (expected[:, -1] == model.tokenizer.eot_token_id).any(), "no text reached the truncation"
    model._word_ids["dog's"] = [1, 2, 3]  # a wrong cache entry must show: the comparison can fail
    assert not torch.equal(model.tokenize(["a dog's ball"]).input_ids, model.tokenizer(["a dog's ball"]))


def test_open_clip_bpe_tokenizer_is_built_once_per_text_config(tmp_path):
    import open_clip

    from models.open_clip_family import _tokenizer

    assert load_model("tiny-clip").tokenizer is load_model("tiny-clip").tokenizer
    folders = {}
    for name, text_cfg in {"a": {"context_length": 20}, "b": {"context_length": 20},
                           "c": {"context_length": 24}, "d": {"context_length": 20, "tokenizer_kwargs": {"clean": "whitespace"}}}.items():
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": text_cfg}}))
    a, b, c, d = (_tokenizer(f"local-dir:{folders[n]}", open_clip.get_model_config(f"local-dir:{folders[n]}"), None)
                  for n in "abcd")
    assert a is b and a is not c and a is not d
    for tokenizer, folder in ((a, folders["a"]), (c, folders["c"]), (d, folders["d"])):  # what open_clip builds
        built = open_clip.get_tokenizer(f"local-dir:{folder}")
        text = "A  Dog's   ball!"
        assert tokenizer.context_length == built.context_length and torch.equal(tokenizer([text]), built([text]))
    assert not torch.equal(a(["A  Dog's   ball!"]), d(["A  Dog's   ball!"]))  # the kwargs reach the tokenizer


def test_tiny_clip_text_shortcuts_match_open_clip():
    model = load_model("tiny-clip")  # context 32: the captions' truncation differs from 77
    texts = _tokenizer_texts()[:200]
    assert torch.equal(model.tokenize(texts).input_ids, model.tokenizer(texts))
    with torch.no_grad():
        fast = model.encode_text(texts)
        model.fast_text = False
        slow = model.encode_text(texts)
        model.fast_text = True
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


# `models.text_prefix`: texts that begin like a reference text reuse its keys and values; the
# result must be the whole tower's, and the shared positions must really be skipped.

PREFIX_REFERENCES = ["a man in a red shirt rides a bicycle down a busy street", "a dog.",
                     " ".join(["many words"] * 60), "two cats sleeping on a sofa"]
PREFIX_VARIANTS = [
    (0, "a man in a blue shirt rides a bicycle down a busy street"),
    (0, "a woman in a red shirt rides a bicycle down a busy street"),  # changed at the first word
    (0, "a man in a red shirt rides a bicycle down a busy road"),  # changed at the last word
    (0, "a man in a red shirt rides a bicycle down a busy street"),  # the reference itself
    (0, "a man"),  # a beginning of it
    (0, "a man in a red shirt rides a bicycle down a busy street with two friends"),  # longer
    (1, "a cat."),
    (1, "something else entirely"),  # nothing shared but the start-of-text token
    (2, " ".join(["many words"] * 30 + ["few"] + ["many words"] * 29)),  # truncated at the context
    (3, "two cats sleeping on a [UNK] sofa"),
    (3, ""),
]


@pytest.mark.parametrize("text_cfg, caches", [
    (TINY_TEXT, True),
    (_vit_b_16_text, True),
    EOS_TEXT,
    ({**TINY_TEXT, "ls_init_value": 0.5}, True),  # layer scale inside each block
    ({**TINY_TEXT, "pool_type": "first"}, False),
    ({**TINY_TEXT, "no_causal_mask": True}, False),
], ids=["tiny", "vit-b-16-text", "eos", "layer-scale", "first", "no-causal-mask"])
def test_text_prefix_cache_equals_the_whole_tower(text_cfg, caches):
    model = _open_clip_wrapped(text_cfg() if callable(text_cfg) else text_cfg)
    cache = model.text_prefix_cache(PREFIX_REFERENCES, batch_size=3)  # the references in passes of 3 and 1
    assert (cache is not None) == caches, "a prefix cache where it is not exact, or none where it is"
    if cache is None:
        return
    owners, texts = [o for o, _ in PREFIX_VARIANTS], [t for _, t in PREFIX_VARIANTS]
    with torch.no_grad():
        expected = model.model.encode_text(model.tokenizer(texts), normalize=False)
        references = model.model.encode_text(model.tokenizer(PREFIX_REFERENCES), normalize=False)
        raw = cache.encode(texts, owners, normalize=False)
        unit = cache.encode(texts, owners)
        in_passes_of_two = cache.encode(texts, owners, normalize=False, batch_size=2)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(in_passes_of_two, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(expected, dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.reference_embeddings(normalize=False), references, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no texts: the tower's empty (0, D), as open_clip gives (it was an IndexError)
        assert cache.encode([], []).shape == model.encode_tokens(model.tokenize([])).shape == (0, expected.shape[1])
    cache.keys[0].add_(1.0)  # the variants must read the cached keys: a wrong cache must show
    with torch.no_grad():
        assert not torch.allclose(cache.encode(texts[:3], owners[:3], normalize=False), expected[:3], atol=1e-3)


def test_text_prefix_cache_projects_each_token_at_each_position_once_in_the_first_block():
    """The first block's norm and q, k, v projection depend on (token, position) alone: the cache
    computes them once per distinct pair of a call, the later blocks once per new position, and
    the embeddings stay the whole tower's."""
    model = _open_clip_wrapped(TINY_TEXT)
    reference = PREFIX_REFERENCES[0]
    words = reference.split()
    # one word replaced at a time: every variant's followers sit where the others' do
    texts = [" ".join(words[:k] + [substitute] + words[k + 1:]) for k in range(len(words)) for substitute in ("big", "old")]
    cache = model.text_prefix_cache([reference])
    rows = {}

    def counter(name):
        return lambda module, args, output: rows.__setitem__(name, rows.get(name, 0) + args[0].shape[0])

    blocks = model.model.transformer.resblocks
    handles = [blocks[0].ln_1.register_forward_hook(counter("first")), blocks[-1].ln_1.register_forward_hook(counter("last"))]
    try:
        with torch.no_grad():
            raw = cache.encode(texts, [0] * len(texts), normalize=False)
    finally:
        for handle in handles:
            handle.remove()
    ids = model.tokenize(texts).input_ids
    pooled = model._pooled_positions(ids)
    reference_ids = model.tokenize([reference]).input_ids[0]
    pairs, positions = set(), 0
    for row, last in zip(ids.tolist(), pooled.tolist()):
        start = next((k for k in range(last + 1) if row[k] != reference_ids[k]), last)
        pairs.update((row[k], k) for k in range(start, last + 1))
        positions += last + 1 - start
    assert rows == {"first": len(pairs), "last": positions} and len(pairs) < positions
    with torch.no_grad():
        expected = model.model.encode_text(model.tokenizer(texts), normalize=False)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("past", [0, 3])
def test_pooled_attention_on_packed_keys_equals_attention_laid_out(past):
    """The last block's attention with its new keys and values packed equals `_attention` over them
    laid out with padding (and the cached ones first, where a text sees them)."""
    from models.text_prefix import _attention, _pooled_attention

    torch.manual_seed(0)
    count, heads, head_width, span = 3, 2, 4, 5
    lengths = torch.tensor([5, 2, 3])  # new positions per text; the pooled token is each one's last
    real = (torch.arange(span)[None, :] < lengths[:, None]).view(-1).nonzero().squeeze(1)
    k, v = torch.randn(len(real), heads, head_width), torch.randn(len(real), heads, head_width)
    q = torch.randn(count, heads, head_width)
    seen_past = torch.arange(past)[None, :] < torch.tensor([past, 1, 0])[:, None]  # [N, P]
    cached = (torch.randn(count, heads, past, head_width), torch.randn(count, heads, past, head_width)) if past else None
    packed = _pooled_attention(q, k, v, real, real // span, span, cached, seen_past)

    def laid(rows):  # [N, heads, S, head width], padding zero
        return rows.new_zeros(count * span, heads, head_width).index_copy_(0, real, rows).view(count, span, heads, head_width).transpose(1, 2)

    keys, values = laid(k), laid(v)
    allowed = torch.arange(span)[None, :] < lengths[:, None]  # [N, S]
    if past:
        keys, values = torch.cat([cached[0], keys], dim=2), torch.cat([cached[1], values], dim=2)
        allowed = torch.cat([seen_past, allowed], dim=1)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None, None, :]
    expected = _attention(q.unsqueeze(2), keys, values, mask).squeeze(2)
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["tiny-clip", "tiny-hf-clip"])
def test_text_prefix_cache_runs_under_autocast(name, dtype):
    """`train eval --precision amp|amp_bf16` and the trainer's amp_bf16 run the word attacks under
    autocast, where the linear layers return half precision: the cache must run there too and stay
    close to the whole tower under the same autocast (it once failed: fp32 buffers, half inputs)."""
    model = load_model(name)
    owners, texts = [o for o, _ in PREFIX_VARIANTS], [t for _, t in PREFIX_VARIANTS]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        cache = model.text_prefix_cache(PREFIX_REFERENCES, batch_size=3)
        expected = model.encode_text(texts)
        unit = cache.encode(texts, owners)
    assert torch.isfinite(unit).all()
    torch.testing.assert_close(unit.float(), expected.float(), rtol=0, atol=0.03)


def test_hf_clip_text_prefix_cache_equals_the_whole_tower():
    """transformers' CLIP text tower is causal too: the cache (its q, k, v projections packed) gives
    `encode_text`'s embeddings, reads the cached keys, and is off with `fast_text = False`."""
    model = load_model("tiny-hf-clip")
    cache = model.text_prefix_cache(PREFIX_REFERENCES, batch_size=3)
    assert cache is not None
    owners, texts = [o for o, _ in PREFIX_VARIANTS], [t for _, t in PREFIX_VARIANTS]
    with torch.no_grad():
        expected = model.encode_text(texts, normalize=False)
        references = model.encode_text(PREFIX_REFERENCES, normalize=False)
        raw = cache.encode(texts, owners, normalize=False, batch_size=2)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.reference_embeddings(normalize=False), references, rtol=1e-5, atol=1e-5)
    cache.values[1].add_(1.0)  # the last block's cached values must be read
    with torch.no_grad():
        assert not torch.allclose(cache.encode(texts[:3], owners[:3], normalize=False), expected[:3], atol=1e-3)
    model.fast_text = False
    assert model.text_prefix_cache(PREFIX_REFERENCES) is None
    model.fast_text = True
    model.train()
    model.model.text_model.config.attention_dropout = 0.1  # dropout in effect: not the same computation
    assert model.text_prefix_cache(PREFIX_REFERENCES) is None


def test_text_prefix_cache_attention_on_cpu_equals_the_fused_kernel():
    """The cache's CPU attention (plain kernels, chosen for speed) computes what torch's fused kernel
    does, masked keys (-inf, broadcast over heads) included; the single-query last-block case too."""
    from models.text_prefix import _attention

    generator = torch.Generator().manual_seed(0)
    for queries in (5, 1):
        q, k, v = (torch.randn(3, 4, n, 8, generator=generator) for n in (queries, 7, 7))
        allowed = torch.rand(3, 1, queries, 7, generator=generator) > 0.4
        allowed[..., 0] = True  # every query sees at least one key, as in the cache
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-6)


def test_text_prefix_cache_computes_only_the_positions_after_the_shared_beginning():
    model = _open_clip_wrapped(TINY_TEXT)
    cache = model.text_prefix_cache(PREFIX_REFERENCES[:1])
    text = "a man in a red shirt rides a bicycle down a busy road"  # 14 tokens: 12 shared, 2 new
    rows = []
    hook = model.model.transformer.resblocks[0].mlp.register_forward_hook(
        lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        cache.encode([text], [0])
    hook.remove()
    assert rows == [2], f"the first block computed {rows} positions, not the 2 after the shared beginning"


def test_text_prefix_cache_passes_hold_at_most_batch_size_texts(monkeypatch):
    from models.text_prefix import TextPrefixCache

    model = _open_clip_wrapped(TINY_TEXT)
    cache = model.text_prefix_cache(PREFIX_REFERENCES)
    passes = []
    run = TextPrefixCache._run
    monkeypatch.setattr(TextPrefixCache, "_run", lambda self, ids, *a: passes.append(len(ids)) or run(self, ids, *a))
    with torch.no_grad():
        cache.encode([t for _, t in PREFIX_VARIANTS], [o for o, _ in PREFIX_VARIANTS], batch_size=3)
    assert sum(passes) == len(PREFIX_VARIANTS) and max(passes) <= 3 and len(passes) >= 4


def test_text_prefix_cache_is_off_with_the_text_shortcuts():
    model = _open_clip_wrapped(TINY_TEXT)
    model.fast_text = False  # the benches' "as before" baseline: open_clip's own path, no cache
    assert model.text_prefix_cache(PREFIX_REFERENCES) is None
    model.fast_text = True
    model.train()
    model.model.transformer.resblocks[0].attn.dropout = 0.1  # dropout in effect: not the same computation
    assert model.text_prefix_cache(PREFIX_REFERENCES) is None


def test_hf_clip_eval_transform_follows_its_processors_flags():
    """A CLIPImageProcessor that squashes to height x width without a centre crop (common for fine-tuned
    CLIPs), or resamples bilinearly, is followed as CLIPProcessor follows it; one making another size than
    the vision model reads is refused in one line (it crashed mid-run: 224 px crop_size default)."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor

    from augment.errors import ModelLoadError
    from models import hf_clip, load_model

    base = load_model("tiny-hf-clip")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 160, 3), dtype=np.uint8))
    for flags in ({"size": {"height": 64, "width": 64}, "do_center_crop": False, "resample": 2},
                  {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}, "resample": 2},
                  {"size": {"shortest_edge": 64}, "do_center_crop": False, "resample": 3}):
        processor = CLIPImageProcessor(image_mean=list(base.mean), image_std=list(base.std), **flags)
        base.processor.image_processor = processor
        model = hf_clip.HFClipModel(base.model, base.processor, name="flags")
        ours = model.normalize(model.preprocess_eval(image))
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        if theirs.shape[-1] != theirs.shape[-2]:  # the processor keeps the aspect: we read its centre square
            offset = (theirs.shape[-1] - theirs.shape[-2]) // 2
            theirs = theirs[..., offset:offset + theirs.shape[-2]]
        assert model.image_size == 64 and ours.shape == theirs.shape, flags
        assert (ours - theirs).abs().mean() < 2e-2, flags
        model.encode_image(model.preprocess_eval(image)[None])  # the vision model reads it
    base.processor.image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    with pytest.raises(ModelLoadError, match="makes 224 px images, its vision model reads 64 px"):
        hf_clip.HFClipModel(base.model, base.processor, name="mismatch")
    base.processor.image_processor = CLIPImageProcessor(size={"height": 64, "width": 96}, do_center_crop=False)
    with pytest.raises(ModelLoadError, match="resizes to 64 x 96: the vision model reads square images"):
        hf_clip.HFClipModel(base.model, base.processor, name="oblong")


def test_eval_transform_of_a_processor_without_resize_flags_resizes_bicubic():
    """Guards mutations (audit BZ): an image processor without `do_resize` or `resample` (older or custom
    processors) read as not resizing, or as resampling bilinearly, passed every test (each set both): it
    resizes, bicubic, as transformers' processors default to."""
    import types

    import numpy as np
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    from models.transformers_io import processor_eval_transform

    processor = types.SimpleNamespace(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    size, transform = processor_eval_transform(processor, default_size=224)
    expected = transforms.CenterCrop(32)(transforms.Resize(32, interpolation=InterpolationMode.BICUBIC)(image))
    assert size == 32
    torch.testing.assert_close(transform(image), transforms.functional.to_tensor(expected), rtol=0, atol=0)


def test_a_processor_size_other_than_the_vision_models_is_refused_or_followed_by_family():
    """Guards mutations (audit BZ): hf_clip refusing only processors larger than its vision model (`>` for `!=`),
    and BLIP taking its vision config's size over its processor's, passed every test (each tried one size
    only). transformers CLIP reads its one size (a smaller one crashed mid-run); BLIP reads the processor's."""
    from transformers import CLIPImageProcessor

    from augment.errors import ModelLoadError
    from models import hf_clip

    clip = load_model("tiny-hf-clip")
    clip.processor.image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(ModelLoadError, match="makes 32 px images, its vision model reads 64 px"):
        hf_clip.HFClipModel(clip.model, clip.processor, name="smaller")
    blip = load_model("tiny-blip")
    blip.processor.image_processor.size = {"height": 32, "width": 32}
    resized = type(blip)(blip.model, blip.processor, name="resized", temperature=0.07)
    from PIL import Image

    assert resized.image_size == 32 and resized.preprocess_eval(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_transformers_prefix_names_the_same_tiny_twin_and_run_folder(tmp_path):
    """`transformers:NAME` is NAME read with transformers: a tiny twin (or a folder trained from one) keeps
    its tiny defaults (the offline masked LM) and its record, as without the prefix."""
    from models import load_model, save_model
    from train.config import default_mlm

    assert load_model("transformers:tiny-hf-clip").tiny_twin == "tiny-hf-clip"
    folder = save_model(load_model("tiny-hf-clip"), tmp_path / "ckpt")
    for name in ("transformers:tiny-hf-clip", f"transformers:{folder}", str(folder)):
        assert default_mlm(name) == "tiny-mlm", name
    assert load_model(f"transformers:{folder}").tiny_twin == "tiny-hf-clip"


def test_open_clip_folder_without_its_weights_file_is_refused(tmp_path):
    """A saved open_clip folder copied without open_clip_model.safetensors (RUN/best half-copied): open_clip
    would build the architecture with random weights; one line naming the missing file instead."""
    from augment.errors import ModelLoadError
    from models import load_model, save_model

    folder = save_model(load_model("tiny-clip"), tmp_path / "model")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no weights file \\(open_clip_model.safetensors\\)"):
        load_model(str(folder))
