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

