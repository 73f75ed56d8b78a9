"""`class_token_vision` (models/pooled_block.py): an open_clip ViT's last block at its class token only."""
from __future__ import annotations

import pytest
import torch

from models import load_model, save_model
from models.pooled_block import class_token_transformer_class, use_class_token_transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _features_and_gradients(model, pixels):
    model.zero_grad(set_to_none=True)
    pixels = pixels.clone().requires_grad_(True)
    features = model.encode_image(pixels)
    (features * torch.linspace(-1, 1, features.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.model.visual.named_parameters() if p.grad is not None}
    return features.detach(), pixels.grad.clone(), grads


def test_class_token_tower_equals_open_clip_with_gradients_and_keeps_checkpoints(tmp_path):
    model = load_model("tiny-clip")
    assert model.class_token_vision and type(model.model.visual.transformer) is class_token_transformer_class()
    pixels = torch.rand(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    ours = _features_and_gradients(model, pixels)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.class_token_vision = False
    assert not model.class_token_vision
    library = _features_and_gradients(model, pixels)
    torch.testing.assert_close(ours[0], library[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], library[1], rtol=1e-4, atol=1e-7)
    assert ours[2].keys() == library[2].keys() and ours[2]
    for name in ours[2]:
        torch.testing.assert_close(ours[2][name], library[2][name], rtol=1e-4, atol=1e-6)
    assert list(model.state_dict()) == list(state)
    model.class_token_vision = True
    reloaded = load_model(str(save_model(model, tmp_path / "saved")))
    assert reloaded.class_token_vision
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())


@pytest.mark.parametrize("vision_cfg", [{"pool_type": "avg"}, {"output_tokens": True}, {"attentional_pool": True}],
                         ids=["avg-pool", "tokens", "attentional-pool"])  # the pooler reads every token (CoCa)
def test_towers_that_read_other_tokens_keep_open_clips_transformer(vision_cfg):
    import open_clip

    clip = open_clip.model.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 2,
                                                          "head_width": 16, **vision_cfg},
                                text_cfg={"context_length": 8, "width": 16, "heads": 2, "layers": 1})
    assert use_class_token_transformer(clip) == 0
    assert type(clip.visual.transformer) is open_clip.transformer.Transformer


def test_a_masked_call_of_the_class_token_transformer_is_open_clips_whole_stack():
    """Only the ViT's own unmasked call is cut to the class token: a call with a mask gets every row, masked."""
    from open_clip.transformer import Transformer

    transformer = load_model("tiny-clip").model.visual.transformer
    assert type(transformer) is class_token_transformer_class()
    x = torch.randn(2, 5, transformer.width, generator=torch.Generator().manual_seed(0))
    mask = torch.full((5, 5), float("-inf")).triu(1)
    with torch.no_grad():
        got = transformer(x, attn_mask=mask)
        expected = Transformer.forward(transformer, x, attn_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_only_a_batch_first_stack_of_self_attention_blocks_is_cut_at_the_pooled_token():
    """`pooled_last_block` indexes rows as [N, L, D] and attends a block to its own input: a
    sequence-first stack, or one with a cross-attention block (`ln_1_kv`), is not what it computes."""
    from open_clip.transformer import ResidualAttentionBlock, Transformer

    from models.pooled_block import plain_block_stack

    assert plain_block_stack(Transformer(16, 2, 2))
    assert not plain_block_stack(Transformer(16, 2, 2, batch_first=False))
    crossing = Transformer(16, 2, 2)
    crossing.resblocks[0] = ResidualAttentionBlock(16, 2, is_cross_attention=True, batch_first=True)
    assert not plain_block_stack(crossing)
