"""The ALBEF family: official checkpoints by key mapping, ALBEF's text conventions, momentum
distillation and Grad-CAM grounding, all on tiny-albef (random weights, offline)."""
from __future__ import annotations

import argparse
import json
import re
import zipfile

import pytest
import torch
import torch.nn.functional as F

from augment.errors import ModelLoadError
from augment.words import pre_caption
from models import family_of, load_model
from models.albef.checkpoint import official_state_dict
from tasks.momentum_distillation import momentum_distilled_itc_loss
from tests.albef_reference import reference_albef

CAPTIONS = ["A dog, running on the GRASS!", "a red circle left of a blue square"]

# key names of ALBEF's models/model_retrieval.py ALBEF.state_dict() (xbert.BertModel, timm-style ViT)
OFFICIAL_KEYS = [
    "visual_encoder.cls_token", "visual_encoder.pos_embed", "visual_encoder.patch_embed.proj.weight",
    "visual_encoder.blocks.1.attn.qkv.weight", "visual_encoder.blocks.1.mlp.fc2.bias", "visual_encoder.norm.weight",
    "text_encoder.embeddings.word_embeddings.weight", "text_encoder.embeddings.position_ids",
    "text_encoder.embeddings.LayerNorm.weight", "text_encoder.encoder.layer.0.attention.self.query.weight",
    "text_encoder.encoder.layer.3.crossattention.self.key.weight",
    "text_encoder.encoder.layer.3.crossattention.output.LayerNorm.bias",
    "text_encoder.encoder.layer.3.intermediate.dense.weight", "vision_proj.weight", "text_proj.bias", "temp",
    "itm_head.weight", "visual_encoder_m.pos_embed", "text_encoder_m.encoder.layer.2.crossattention.self.value.bias",
    "vision_proj_m.weight", "text_proj_m.weight", "image_queue", "text_queue", "idx_queue", "queue_ptr",
]


@pytest.fixture(scope="module")
def tiny_albef():
    return load_model("tiny-albef")


@pytest.fixture(scope="module")
def official(tiny_albef, tmp_path_factory):
    """tiny-albef written as ALBEF writes checkpoints, plus its ALBEF config files."""
    folder = tmp_path_factory.mktemp("albef_official")
    state = official_state_dict(tiny_albef)
    # momentum copies that differ from the main weights (as after ALBEF's pre-training), and queues of
    # momentum features: the main weights must not be read from them, the momentum encoders must
    state = {k: (v + 1.0 if k.startswith("visual_encoder_m.") and v.is_floating_point() else v)
             for k, v in state.items()}
    generator = torch.Generator().manual_seed(3)
    for name in ("image_queue", "text_queue"):
        state[name] = torch.nn.functional.normalize(torch.randn(state[name].shape, generator=generator), dim=0)
    state["idx_queue"] = torch.arange(state["idx_queue"].numel()).view(1, -1)
    state["queue_ptr"] = torch.tensor([5])
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "config": {"image_res": 64},
                "epoch": 3}, folder / "flickr30k.pth")
    cfg = tiny_albef.config
    (folder / "config_bert.json").write_text(json.dumps(cfg["bert"]))
    yaml_keys = ("image_res", "vision_width", "embed_dim", "temp", "queue_size", "patch_size", "vision_depth",
                 "vision_heads")
    (folder / "Retrieval_flickr.yaml").write_text("".join(f"{k}: {cfg[k]}\n" for k in yaml_keys))
    return folder, state


def _load_official(folder, name="flickr30k.pth", name_in=None, **options):
    """`folder/name` (or the file `name_in`) with the ALBEF config files of `folder`."""
    from augment.tiny import tiny_dir

    return load_model(str(name_in or folder / name), config=str(folder / "Retrieval_flickr.yaml"),
                      bert_config=str(folder / "config_bert.json"), tokenizer=str(tiny_dir("tiny-albef")), **options)


def _outputs(model, pixels):
    tokens = model.tokenize(CAPTIONS)
    with torch.no_grad():
        features = model.image_features(pixels)
        return (model.embed_image_features(features), model.encode_tokens(tokens),
                model.itm_pair_logits(features, tokens))


def test_official_checkpoint_loads_identically(tiny_albef, official):
    folder, state = official
    assert all(key in state for key in OFFICIAL_KEYS)
    assert family_of(str(folder / "flickr30k.pth")) == "albef"
    loaded = _load_official(folder, momentum_distillation=True)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for expected, got in zip(_outputs(tiny_albef, pixels), _outputs(loaded, pixels)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the momentum encoders and queues are the checkpoint's, as ALBEF's Retrieval.py loads the whole file
    assert not torch.equal(loaded.visual_encoder_m.pos_embed, loaded.visual_encoder.pos_embed)
    torch.testing.assert_close(loaded.visual_encoder_m.pos_embed, state["visual_encoder_m.pos_embed"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.visual_encoder_m.blocks[0].attn.qkv.weight,
                               state["visual_encoder_m.blocks.0.attn.qkv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.image_queue, state["image_queue"].T, rtol=0, atol=0)
    torch.testing.assert_close(loaded.text_queue, state["text_queue"].T, rtol=0, atol=0)
    assert torch.equal(loaded.idx_queue, state["idx_queue"].view(-1)) and int(loaded.queue_ptr) == 5
    # without distillation, nothing of them is held; turned on later (the trainer), they are read then
    plain = _load_official(folder)
    assert not plain.momentum_distillation and not hasattr(plain, "visual_encoder_m")
    plain.set_momentum_distillation(True)
    torch.testing.assert_close(plain.visual_encoder_m.pos_embed, state["visual_encoder_m.pos_embed"], rtol=0, atol=0)
    torch.testing.assert_close(plain.text_queue, state["text_queue"].T, rtol=0, atol=0)
    # the tokenizer it was given is part of its identity (reports, an evaluation's resume tag)
    from augment.tiny import tiny_dir

    assert loaded.describe()["tokenizer"] == str(tiny_dir("tiny-albef"))


def test_pretraining_layout_with_bert_prefix_and_mlm_head(tiny_albef, official):
    folder, state = official
    renamed = {k.replace("text_encoder.", "text_encoder.bert.", 1) if k.startswith("text_encoder.") else k: v
               for k, v in state.items()}
    renamed["text_encoder.cls.predictions.bias"] = torch.zeros(3)
    torch.save({"model": renamed}, folder / "ALBEF.pth")
    pixels = torch.rand(2, 3, 64, 64)
    expected, got = _outputs(tiny_albef, pixels), _outputs(_load_official(folder, "ALBEF.pth"), pixels)
    torch.testing.assert_close(got[2], expected[2], rtol=0, atol=1e-6)
    # pre-training's momentum BERT is a BertForMaskedLM too (`text_encoder_m.bert.*`), and it has no idx_queue; its
    # weights moved apart from the main ones (here: +1), so copies of the main weights cannot pass for them (audit BY)
    renamed = {k.replace("text_encoder_m.", "text_encoder_m.bert.", 1) if k.startswith("text_encoder_m.") else k:
               v + 1 if k.startswith("text_encoder_m.") and v.is_floating_point() else v
               for k, v in renamed.items() if k != "idx_queue"}
    renamed["text_encoder_m.cls.predictions.bias"] = torch.zeros(3)
    torch.save({"model": renamed}, folder / "ALBEF_m.pth")
    loaded = _load_official(folder, "ALBEF_m.pth", momentum_distillation=True)
    key = "encoder.layer.2.crossattention.self.value.bias"
    torch.testing.assert_close(loaded.text_encoder_m.state_dict()[key], state["text_encoder_m." + key] + 1, rtol=0, atol=0)
    torch.testing.assert_close(loaded.image_queue, state["image_queue"].T, rtol=0, atol=0)
    assert bool((loaded.idx_queue == -100).all())  # ALBEF's start: no slot holds a positive


def test_checkpoint_without_momentum_copies_starts_them_from_the_main_weights(official, tmp_path, caplog):
    folder, state = official
    main = {k: v for k, v in state.items()
            if not k.startswith(("visual_encoder_m.", "vision_proj_m.", "text_encoder_m.", "text_proj_m."))
            and k not in ("image_queue", "text_queue", "idx_queue", "queue_ptr")}
    torch.save(main, tmp_path / "main_only.pth")
    with caplog.at_level("WARNING"):
        loaded = _load_official(folder, momentum_distillation=True, name_in=tmp_path / "main_only.pth")
    torch.testing.assert_close(loaded.visual_encoder_m.pos_embed, loaded.visual_encoder.pos_embed, rtol=0, atol=0)
    assert bool((loaded.idx_queue == -100).all()) and int(loaded.queue_ptr) == 0
    assert "no momentum encoders (copied from the main weights) and no queues" in caplog.text


def test_checkpoint_of_another_size_needs_its_config(official):
    folder, _ = official
    config = (folder / "Retrieval_flickr.yaml").read_text().replace("embed_dim: 16", "embed_dim: 8")
    (folder / "other.yaml").write_text(config)
    with pytest.raises(ModelLoadError, match="vision_proj.weight is \\(16, 48\\) in the checkpoint") as info:
        load_model(str(folder / "flickr30k.pth"), config=str(folder / "other.yaml"),
                   bert_config=str(folder / "config_bert.json"), tokenizer="unused")
    assert "\n" not in str(info.value)
    # a config of a smaller model leaves weights of the file unread: refused, not evaluated truncated
    config = (folder / "Retrieval_flickr.yaml").read_text()
    depth = int(re.search(r"vision_depth: (\d+)", config).group(1))
    (folder / "shallower.yaml").write_text(config.replace(f"vision_depth: {depth}", f"vision_depth: {depth - 1}"))
    with pytest.raises(ModelLoadError, match=f"holds 1[0-9] weights the model has no place for "
                                             f"\\(visual_encoder.blocks.{depth - 1}.") as info:
        load_model(str(folder / "flickr30k.pth"), config=str(folder / "shallower.yaml"),
                   bert_config=str(folder / "config_bert.json"), tokenizer="unused")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (("Retrieval_flickr.yaml", "image_res: 64", "image_res: big"), r"Retrieval_flickr.yaml / .*config_bert.json has a bad value"),
    (("config_bert.json", '"fusion_layer": 2', '"fusion_layer": null'), r"config_bert.json has a bad value"),
])
def test_a_bad_value_in_the_albef_configs_is_one_line(official, tmp_path, edit, message):
    folder, _ = official
    for name in ("Retrieval_flickr.yaml", "config_bert.json"):
        text = (folder / name).read_text()
        if name == edit[0]:
            assert edit[1] in text, text
            text = text.replace(edit[1], edit[2])
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelLoadError, match=message) as info:
        _load_official_from(folder, "flickr30k.pth", tmp_path)
    assert "\n" not in str(info.value)


def test_check_config_refuses_a_fusion_layer_outside_the_text_encoder_a_width_mismatch_and_a_partial_patch():
    """Guards check_config's refusals (each bound at its edge: the layers 1 and 11 of 12 are accepted): a
    fusion_layer of 0 or num_hidden_layers, a BERT encoder_width other than the vision width (it was
    overwritten by the vision width without a word), an image_res that is no multiple of patch_size."""
    from models.albef.config import make_config

    for fusion in (0, 12):
        with pytest.raises(ModelLoadError, match=f"^ALBEF fusion_layer {fusion} must lie between 1 and "
                                                 r"num_hidden_layers - 1 \(11\)$"):
            make_config(bert_config={"fusion_layer": fusion})
    assert [make_config(bert_config={"fusion_layer": f})["bert"]["fusion_layer"] for f in (1, 11)] == [1, 11]
    with pytest.raises(ModelLoadError, match="^ALBEF encoder_width 1024 differs from vision_width 768$"):
        make_config(bert_config={"fusion_layer": 6, "encoder_width": 1024})
    with pytest.raises(ModelLoadError, match="^ALBEF image_res 100 is not a multiple of patch_size 16$"):
        make_config(image_size=100)
    assert make_config(image_size=96)["image_res"] == 96


def test_a_bert_config_without_encoder_width_takes_the_vision_width():
    """Guards check_config's write of encoder_width: an albef_config.json whose BERT part lacks it (the key is
    ALBEF's addition to BERT's config) is read with the vision width, not refused for a missing key."""
    from models.albef.config import DEFAULT_BERT_CONFIG, DEFAULT_CONFIG, check_config

    bert = {k: v for k, v in DEFAULT_BERT_CONFIG.items() if k != "encoder_width"}
    assert check_config({**DEFAULT_CONFIG, "vision_width": 1024, "bert": bert})["bert"]["encoder_width"] == 1024


def test_the_grounding_layer_is_two_past_the_fusion_layer_clipped_to_the_last_unless_set():
    """Guards grounding_layer: ALBEF's Grounding.py reads block 8 = fusion_layer 6 + 2, clipped to the last
    layer for a shallow text encoder; a config's own grounding_layer wins, 0 included."""
    from models.albef.config import grounding_layer, make_config

    assert grounding_layer(make_config()) == 8
    assert grounding_layer(make_config(bert_config={"fusion_layer": 3})) == 5
    assert grounding_layer(make_config(bert_config={"fusion_layer": 10})) == 11
    assert grounding_layer(make_config({"grounding_layer": 7})) == 7
    assert grounding_layer({**make_config(), "grounding_layer": 0}) == 0


# ALBEF's configs/Retrieval_flickr.yaml and configs/config_bert.json as released (commit 91de3c1; keys the model does not
# read included, the YAML's blank lines and comment left out)
RELEASED_RETRIEVAL_YAML = """\
train_file: ['data/flickr30k_train.json']
val_file: 'data/flickr30k_val.json'
test_file: 'data/flickr30k_test.json'
image_root: '/export/share/datasets/vision/flickr30k/'
bert_config: 'configs/config_bert.json'
image_res: 384
batch_size_train: 32
batch_size_test: 64
queue_size: 65536
momentum: 0.995
vision_width: 768
embed_dim: 256
temp: 0.07
k_test: 128
alpha: 0.4
distill: True
warm_up: True
optimizer: {opt: adamW, lr: 1e-5, weight_decay: 0.02}
schedular: {sched: cosine, lr: 1e-5, epochs: 10, min_lr: 1e-6, decay_rate: 1, warmup_lr: 1e-5, warmup_epochs: 1, cooldown_epochs: 0}
"""
RELEASED_BERT_CONFIG = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30522, "fusion_layer": 6,
    "encoder_width": 768}


def test_the_default_albef_config_is_albefs_released_retrieval_config(tmp_path):
    """Guards the defaults a .pth without config files is built with: every value the model reads from ALBEF's
    released YAML and BERT JSON equals the default (alpha, queue size, momentum, fusion layer, ...), and the
    YAML's keys that do not size the model (batch sizes, files) stay out."""
    from models.albef.config import make_config

    (tmp_path / "Retrieval_flickr.yaml").write_text(RELEASED_RETRIEVAL_YAML)
    (tmp_path / "config_bert.json").write_text(json.dumps(RELEASED_BERT_CONFIG))
    released = make_config(tmp_path / "Retrieval_flickr.yaml", tmp_path / "config_bert.json")
    defaults = make_config()
    assert {k: released["bert"][k] for k in defaults["bert"]} == defaults["bert"]
    assert {k: v for k, v in released.items() if k != "bert"} == {k: v for k, v in defaults.items() if k != "bert"}


def test_albef_config_files_set_each_model_key_and_refuse_what_is_not_albefs(tmp_path):
    """Guards the config readers: every YAML key that sizes the model (the project's vision-size and max_words
    extensions too) is read, the others are dropped; a YAML that is no mapping and a BERT JSON without
    fusion_layer (plain BERT's, not ALBEF's) are refused."""
    from models.albef.config import read_bert_config, read_yaml_config

    sizes = {"image_res": 224, "vision_width": 1024, "embed_dim": 128, "temp": 0.05, "queue_size": 1024,
             "momentum": 0.99, "alpha": 0.3, "patch_size": 14, "vision_depth": 24, "vision_heads": 16,
             "mlp_ratio": 2.0, "max_words": 40}
    (tmp_path / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in {**sizes, "batch_size_train": 8}.items()))
    assert read_yaml_config(tmp_path / "config.yaml") == sizes
    (tmp_path / "list.yaml").write_text("- image_res\n")
    with pytest.raises(ModelLoadError, match="list.yaml is not a YAML mapping$"):
        read_yaml_config(tmp_path / "list.yaml")
    (tmp_path / "bert.json").write_text(json.dumps({k: v for k, v in RELEASED_BERT_CONFIG.items() if k != "fusion_layer"}))
    with pytest.raises(ModelLoadError, match=r"bert.json has no 'fusion_layer' \(expected ALBEF's config_bert.json\)$"):
        read_bert_config(tmp_path / "bert.json")


def test_albef_file_options_are_refused_for_a_saved_folder(tiny_albef, tmp_path):
    """--albef-config/--albef-bert-config/--albef-tokenizer shape a .pth; a folder has its own."""
    tiny_albef.save(tmp_path / "albef")
    for options, flags in (({"tokenizer": "other"}, "--albef-tokenizer"),
                           ({"config": "c.yaml", "bert_config": "b.json"}, "--albef-config, --albef-bert-config")):
        with pytest.raises(ModelLoadError, match=f"saved ALBEF/TCL folder .*: {flags} appl(y|ies) to a .pth checkpoint only"):
            load_model(str(tmp_path / "albef"), **options)
        with pytest.raises(ModelLoadError, match=f"{flags} appl(y|ies) to a .pth checkpoint only"):
            load_model("tiny-albef", **options)


def test_pickle_checkpoint_is_refused_in_one_line(official, tmp_path):
    _, state = official
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-5)}, tmp_path / "needs_pickle.pth")
    with pytest.raises(ModelLoadError, match="refusing to load .*needs_pickle.pth") as info:
        _load_official_from(tmp_path, "needs_pickle.pth", official[0])
    assert "\n" not in str(info.value)


def test_a_file_that_is_no_checkpoint_is_named_so(official, tmp_path):
    """Not the pickle refusal (whose advice, re-save the state dict, cannot help here)."""
    (tmp_path / "garbage.pth").write_bytes(b"garbage\n" + bytes(range(256)))
    with pytest.raises(ModelLoadError, match="garbage.pth: not a PyTorch checkpoint") as info:
        _load_official_from(tmp_path, "garbage.pth", official[0])
    assert "\n" not in str(info.value)


def test_a_damaged_or_truncated_checkpoint_is_refused_before_it_loads(official, tmp_path):
    """torch.load checks no checksum: bytes damaged inside a tensor loaded as wrong weights, exit 0."""
    folder, _ = official
    data = bytearray((folder / "flickr30k.pth").read_bytes())
    with zipfile.ZipFile(folder / "flickr30k.pth") as archive:  # the middle of the largest tensor's bytes
        entry = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
        start = entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + entry.file_size // 2
    data[start:start + 8] = bytes(8) if data[start:start + 8] != bytes(8) else b"\xff" * 8
    (tmp_path / "damaged.pth").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"damaged.pth: its entry {re.escape(entry.filename)} fails its "
                                             "checksum") as info:
        _load_official_from(tmp_path, "damaged.pth", folder)
    assert "\n" not in str(info.value)
    (tmp_path / "truncated.pth").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelLoadError, match="truncated.pth: a damaged archive") as info:
        _load_official_from(tmp_path, "truncated.pth", folder)
    assert "\n" not in str(info.value)


def test_an_architecture_name_without_a_checkpoint_asks_for_one():
    for name, pretrained in (("albef", None), ("tcl", "weights.safetensors")):
        with pytest.raises(ModelLoadError, match=f"'{name}' names an architecture, not weights: give its checkpoint "
                                                 "file as --pretrained FILE.pth"):
            load_model(name, pretrained)


def _load_official_from(folder, name, config_folder):
    return load_model(str(folder / name), config=str(config_folder / "Retrieval_flickr.yaml"),
                      bert_config=str(config_folder / "config_bert.json"), tokenizer="unused")


def _resized_as_albef(pos: torch.Tensor) -> torch.Tensor:
    """[1, 1 + 4 * 4, W] -> [1, 1 + 6 * 6, W] as ALBEF's interpolate_pos_embed: [CLS] kept, the grid bicubic."""
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([pos[:, :1], resized], dim=1)


def test_position_embeddings_are_interpolated_as_albef(official):
    folder, state = official
    model = _load_official(folder, image_size=96)
    torch.testing.assert_close(model.visual_encoder.pos_embed.detach(), _resized_as_albef(state["visual_encoder.pos_embed"]))
    assert model.encode_image(torch.rand(1, 3, 96, 96)).shape == (1, 16)


def test_released_momentum_position_embeddings_are_interpolated_too(official):
    """Guards a mutation (audit BZ): resampling only the main encoder's pos_embed passed every test; the
    released momentum encoder, then of another shape, was silently replaced by a copy of the main weights."""
    folder, state = official
    model = _load_official(folder, image_size=96, momentum_distillation=True)
    torch.testing.assert_close(model.visual_encoder_m.pos_embed.detach(), _resized_as_albef(state["visual_encoder_m.pos_embed"]))


def test_tokens_are_cls_words_pad_without_sep(tiny_albef):
    tokens = tiny_albef.tokenize(CAPTIONS)
    tok = tiny_albef.tokenizer
    assert (tokens.input_ids[:, 0] == tok.cls_token_id).all()
    assert not (tokens.input_ids == tok.sep_token_id).any()
    length = int(tokens.attention_mask[0].sum())
    assert tok.convert_ids_to_tokens(tokens.input_ids[0, :length].tolist()) == ["[CLS]", "a", "dog", "running", "on",
                                                                                "the", "grass"]
    assert tokens.input_ids[0, length:].eq(tok.pad_token_id).all() and length < tokens.input_ids.shape[1]
    assert pre_caption("Two men-at work/play (outside)!", max_words=3) == "two men at"
    assert tiny_albef.tokenize(["word " * 80]).input_ids.shape[1] == 30  # [CLS] + 29 (ALBEF's max_length 30)


def test_the_text_attacks_mask_word_stays_one_unk_token(tiny_albef):
    """pre_caption lower-cases "[UNK]"; the tokenizer must still read the masked word as the [UNK] token
    (the word importance of every text attack on ALBEF reads these masked captions)."""
    tok = tiny_albef.tokenizer
    ids = tiny_albef.tokenize(["A dog [UNK] the grass."]).input_ids[0].tolist()
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "a", "dog", "[UNK]", "the", "grass"]


def test_momentum_distillation_update_and_queue(tiny_albef, tmp_path):
    import copy

    model = copy.deepcopy(tiny_albef)
    model.set_momentum_distillation(True)
    assert model.itc_loss == "momentum-distilled"
    model.train()
    pixels, keys = torch.rand(2, 3, 64, 64), torch.tensor([7, 9])
    output = model(pixels, model.tokenize(CAPTIONS))
    loss = momentum_distilled_itc_loss(output, keys)
    loss.backward()
    assert torch.isfinite(loss) and model.temp.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if "_m." in n)
    before_m = model.vision_proj_m.weight.detach().clone()
    with torch.no_grad():
        model.vision_proj.weight.add_(1.0)  # stands in for an optimizer step
    model.after_optimizer_step()
    torch.testing.assert_close(model.vision_proj_m.weight, 0.995 * before_m + 0.005 * model.vision_proj.weight)
    momentum = output.extras["momentum"]()
    torch.testing.assert_close(model.image_queue[:2], momentum["image_emb_m"])
    assert model.idx_queue[:2].tolist() == [7, 9] and int(model.queue_ptr) == 2
    assert (model.idx_queue[2:] == -100).all()
    # a training checkpoint keeps the momentum encoders and queues (resuming loads them strictly)
    reloaded = load_model(str(model.save(tmp_path / "ckpt")))
    assert reloaded.momentum_distillation and int(reloaded.queue_ptr) == 2
    model.load_state_dict(reloaded.state_dict(), strict=True)
    torch.testing.assert_close(reloaded.vision_proj_m.weight, model.vision_proj_m.weight)
    assert not load_model(str(tmp_path / "ckpt"), momentum_distillation=False).momentum_distillation
    with pytest.raises(ValueError, match="momentum distillation on"):
        momentum_distilled_itc_loss(tiny_albef(pixels, tiny_albef.tokenize(CAPTIONS)), keys)


def test_grounding_heatmap_shape_and_text_dependence(tiny_albef):
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)).repeat(3, 1, 1, 1)
    texts = ["a red circle on the left", "two blue squares under a tree", CAPTIONS[1] + " and a green star"]
    tokens = tiny_albef.tokenize(texts)
    assert tokens.attention_mask[0].sum() == tokens.attention_mask[1].sum() < tokens.attention_mask[2].sum()
    heat = tiny_albef.grounding_heatmap(pixels, tokens)
    assert heat.shape == (3, 4, 4) and (heat >= 0).all() and heat.sum() > 0
    # same image, different words of the same length (random weights ground weakly: ~1e-3, deterministic)
    assert (heat[0] - heat[1]).abs().max() > 1e-4 * heat.max()
    alone = tiny_albef.grounding_heatmap(pixels[:1], tiny_albef.tokenize(texts[:1]))
    torch.testing.assert_close(alone[0], heat[0], rtol=1e-4, atol=1e-9)  # padding in the batch changes nothing
    assert not heat.requires_grad
    # evaluation keeps no image-encoder graph (no backward pass would use it: GBs at 384 px)
    grad_modes = []
    hook = tiny_albef.visual_encoder.blocks[0].register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    try:
        tiny_albef.grounding_heatmap(pixels[:1], tokens[:1])
        pixels = pixels[:1].clone().requires_grad_(True)  # attacks on the heat map differentiate it
        heat_of_attack = tiny_albef.grounding_heatmap(pixels, tokens[:1])
    finally:
        hook.remove()
    assert grad_modes == [False, True]
    torch.testing.assert_close(heat_of_attack.detach()[0], heat[0], rtol=1e-4, atol=1e-9)
    share = heat_of_attack[0, :2].sum()
    (gradient,) = torch.autograd.grad(share, pixels)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    assert all(p.grad is None for p in tiny_albef.parameters())


def test_saved_folder_round_trip(tiny_albef, tmp_path):
    tiny_albef.save(tmp_path / "albef")
    assert family_of(str(tmp_path / "albef")) == "albef"
    loaded = load_model(str(tmp_path / "albef"))
    pixels = torch.rand(2, 3, 64, 64)
    for expected, got in zip(_outputs(tiny_albef, pixels), _outputs(loaded, pixels)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_save_killed_before_its_weights_are_in_place_leaves_no_config(tiny_albef, tmp_path, monkeypatch):
    """albef_config.json marks a complete folder, so it is written last: a save killed while writing the weights,
    or while moving them into place, leaves a folder no loader takes for ALBEF's (audit BZ's C2 survivor)."""
    import safetensors.torch

    from models.albef import model as albef_model

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    for target, name in ((safetensors.torch, "save_file"), (albef_model.os, "replace")):
        folder = tmp_path / name
        folder.mkdir()
        with monkeypatch.context() as patch:
            patch.setattr(target, name, killed)
            with pytest.raises(KeyboardInterrupt):
                tiny_albef.save_native(folder)
        assert not (folder / albef_model.CONFIG_NAME).exists(), name
        assert not (folder / albef_model.WEIGHTS_NAME).exists(), name
        assert not type(tiny_albef).can_load(folder), name


def test_missing_checkpoint_file_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "absent.pth"))


def test_outputs_equal_albef_reference_math(official):
    folder, state = official
    model = _load_official(folder)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens = model.tokenize(CAPTIONS)
    with torch.no_grad():
        expected = reference_albef(state, model.config, model.normalize(pixels), tokens.input_ids,
                                    tokens.attention_mask)
    for want, got in zip(expected, _outputs(model, pixels)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
