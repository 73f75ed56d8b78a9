"""world-mlm: a masked LM trained on sample-world captions, cached like the tiny twins."""
from __future__ import annotations

import json

import pytest

import augment.world_mlm as world_mlm
from augment.errors import ModelLoadError


@pytest.fixture
def small_recipe(monkeypatch, tmp_path):
    """A small recipe (its own fingerprint) in a fresh cache: built in seconds."""
    monkeypatch.setenv("MATPLUS_TINY_DIR", str(tmp_path / "tiny"))
    monkeypatch.setitem(world_mlm.TRAINING, "steps", 40)
    monkeypatch.setitem(world_mlm.TRAIN_WORLD, "n", 80)
    return tmp_path / "tiny" / "world-mlm"


def test_train_captions_are_the_train_split_of_its_own_world():
    captions = world_mlm.train_captions({"seed": 1, "n": 40, "captions_per_scene": 5})
    assert len(captions) == 30 * 5  # 75% of 40 scenes, five captions each
    assert captions != world_mlm.train_captions({"seed": 0, "n": 40, "captions_per_scene": 5})


def test_world_mlm_loads_by_name_learns_and_is_cached(small_recipe):
    from augment.registry import load_mlm

    model, tokenizer = load_mlm("world-mlm")
    assert type(model).__name__ == "BertForMaskedLM" and tokenizer.mask_token == "[MASK]"
    manifest = json.loads((small_recipe / "tiny.json").read_text())
    assert manifest["fingerprint"] == world_mlm.fingerprint()
    summary = manifest["training_summary"]
    assert summary["final_loss"] < summary["first_loss"]  # it learned something from the captions
    built = (small_recipe / "model.safetensors").stat().st_mtime_ns
    load_mlm("world-mlm")
    assert (small_recipe / "model.safetensors").stat().st_mtime_ns == built  # loaded from the cache, not rebuilt


def test_world_mlm_is_only_a_masked_lm():
    from augment.registry import load_captioner

    with pytest.raises(ModelLoadError, match="masked LM"):
        load_captioner("world-mlm")


@pytest.mark.parametrize("part, key, value", [
    ("TRAINING", "steps", 41), ("TRAINING", "lr", 1e-3), ("TRAIN_WORLD", "seed", 2), ("TRAIN_WORLD", "n", 81),
    ("MODEL_CONFIG", "hidden_size", 32),
])
def test_every_part_of_the_recipe_keys_the_cached_model(monkeypatch, tmp_path, part, key, value):
    """A cached world-mlm built by another recipe (training, world or BERT size) is stale: built again,
    never loaded as the current one."""
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "world-mlm", "fingerprint": world_mlm.fingerprint()}))
    assert world_mlm.is_current(tmp_path)
    monkeypatch.setitem(getattr(world_mlm, part), key, value)
    assert not world_mlm.is_current(tmp_path)
