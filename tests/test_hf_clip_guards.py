"""Guards from mutation audit CR of the transformers CLIP family (models/hf_clip.py): each test fails
under a plausible bug that every earlier test let pass (named in its docstring), on tiny-hf-clip."""
from __future__ import annotations

import copy

import torch

from models import load_model


def test_hf_clip_pools_the_token_transformers_pools_for_a_non_legacy_eos():
    """A CLIPModel config with a real `eos_token_id` (not the legacy 2) pools the first end-of-text token,
    not the highest id: `_pooled_positions` taking the argmax of the ids for every config pooled another
    token than `CLIPTextTransformer` for a vocabulary whose end-of-text is not its highest id."""
    model = copy.deepcopy(load_model("tiny-hf-clip"))
    tokens = model.tokenize(["a red cube on a blue sphere"])
    text = model.model.text_model
    text.eos_token_id = int(tokens.input_ids[0, 2])  # a word's id stands for end-of-text: not the highest id
    with torch.no_grad():
        out = text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        positions = model._pooled_positions(tokens.input_ids)
    assert positions.tolist() == [2]
    torch.testing.assert_close(out.last_hidden_state[torch.arange(1), positions], out.pooler_output)


def test_hf_clip_reads_texts_up_to_its_whole_position_table():
    """A long caption is cut to the text model's `max_position_embeddings` tokens (77), as CLIPProcessor
    cuts it, ending in end-of-text: a context one short (`- 1`) passed every test, whose expectation was
    the model's own `context_length`, and gave long captions other embeddings than transformers'."""
    model = load_model("tiny-hf-clip")
    long_caption = "a red cube " * 60
    tokens = model.tokenize([long_caption])
    theirs = model.processor(text=[long_caption], truncation=True, max_length=77, return_tensors="pt")
    assert model.context_length == model.model.config.text_config.max_position_embeddings == 77
    assert torch.equal(tokens.input_ids, theirs["input_ids"])
