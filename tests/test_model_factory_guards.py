"""Mutation guards of the model factory (`models.family_of`, `load_model`) and world-mlm's cache key:
each test fails under a bug that every other test let through (audit CI)."""
from __future__ import annotations

import pytest

import models
from augment import tiny


@pytest.mark.parametrize("twin", ["tiny-blip", "tiny-hf-clip", "tiny-captioner"])
def test_a_transformers_twins_architecture_names_its_family(twin):
    """A Hub id or folder is given its family by its config.json's architecture: a BLIP captioner's
    architecture read as BLIP retrieval would be loaded as a retrieval model and refused."""
    config = tiny.tiny_dir(twin) / "config.json"
    assert models._architecture_family(config, twin) == models.TINY_FAMILY[twin]


def test_load_models_revision_reaches_the_hub_family_lookup(monkeypatch):
    """`load_model(hub_id, revision=R)` gives R to its family's loader; the family itself must be read
    from R's config.json too: offline, a cache holding only R had no `main` and was refused as uncached."""
    from augment.errors import ModelLoadError

    asked = []

    def hub_family(repo_id, revision):
        asked.append((repo_id, revision))
        raise ModelLoadError("looked up")

    monkeypatch.setattr(models, "_hub_family", hub_family)
    with pytest.raises(ModelLoadError, match="looked up"):
        models.load_model("some-org/some-model", revision="0123abc")
    assert asked == [("some-org/some-model", "0123abc")]


def test_a_model_of_the_other_kind_is_refused_before_its_options_are_checked():
    """A captioning option given with a retrieval model (`--task captioning --model tiny-blip --prompt ...`):
    the kind is what is wrong, not the option, and nothing is loaded to find that out."""
    from augment.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"'tiny-blip' is a retrieval model \(blip\), not a captioning model"):
        models.load_model("tiny-blip", kind="captioning", prompt="a picture of")


@pytest.mark.parametrize("twin", ["tiny-clip", "tiny-hf-clip"])
def test_load_models_precision_reaches_the_weights(twin):
    """`--precision bf16` loads the weights in bf16 in every family (open_clip keeps its norms in fp32)."""
    import torch

    model = models.load_model(twin, precision="bf16")
    assert torch.bfloat16 in {parameter.dtype for parameter in model.parameters()}


def test_a_transformers_encoder_names_its_hub_commit_and_truncates_at_its_context():
    """The Hub commit keys cached scores and reports (a re-uploaded model is another model); texts longer
    than the model's context are cut to it, not to the tokenizer's own limit."""
    model = models.load_model("tiny-hf-clip")
    assert "commit" not in model.describe()  # a twin has no Hub commit
    model.model.config._commit_hash = "0123abc"
    assert model.describe()["commit"] == "0123abc"
    model.tokenizer.model_max_length = 10 * model.context_length
    tokens = model.tokenize(["red " * (3 * model.context_length)])
    assert tokens.input_ids.shape[1] == model.context_length


def test_a_frozen_copy_is_in_eval_mode_even_from_a_model_in_training():
    """FARE's reference model is copied from the model being trained: its dropout must be off, or the
    reference embeddings FARE pulls towards are noise."""
    model = models.load_model("tiny-hf-clip").train()
    reference = model.frozen_copy()
    assert not any(module.training for module in reference.modules())
    assert not any(parameter.requires_grad for parameter in reference.parameters())
    assert model.training  # the trained model itself is left as it was


@pytest.mark.parametrize("recorded, twin", [("tiny-clip", "tiny-clip"), ("world-mlm", None), ("my-own-model", None)])
def test_a_folders_tiny_json_makes_it_a_twin_only_for_a_twins_name(tmp_path, recorded, twin):
    """A tiny cache folder that is no vision-language twin (world-mlm's) is no twin: its name would
    choose the model's default masked LM."""
    import json

    from models.base import recorded_tiny_twin

    (tmp_path / tiny.MANIFEST_NAME).write_text(json.dumps({"name": recorded}))
    assert recorded_tiny_twin(tmp_path) == twin
