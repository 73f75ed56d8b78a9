"""Guards from mutation audit CR of the scorers (augment/scoring/scorers.py): each test fails under a plausible
bug that every earlier test let pass (named in its docstring)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _noise(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_a_resize_is_skipped_only_for_an_image_whose_short_side_is_already_the_size():
    """`prepare_batch` skips a shortest-side Resize where the image's short side already is the size:
    deciding that by the long side (`max` for `min`) left a 64 x 48 image unresized, and the centre crop
    padded it with black instead of cropping the resized image."""
    from augment.scoring.scorers import prepare_batch
    from models import transformers_io

    transform = transformers_io.resize_crop_transform(64, 64)
    images = [_noise(64, 48, 1), _noise(48, 64, 2)]
    assert torch.equal(prepare_batch(transform, images), torch.stack([transform(image) for image in images]))


def test_a_centre_crop_is_skipped_only_for_an_image_of_the_crops_height_and_width():
    """torchvision's CenterCrop size is (height, width), PIL's image size (width, height): comparing them
    the wrong way round skipped an oblong crop on the image of the transposed size."""
    from torchvision import transforms as T

    from augment.scoring.scorers import prepare_batch

    transform = T.Compose([T.CenterCrop((48, 64)), T.ToTensor()])
    images = [_noise(48, 64, 3), _noise(48, 64, 4)]
    batch = prepare_batch(transform, images)
    assert batch.shape == (2, 3, 48, 64)
    assert torch.equal(batch, torch.stack([transform(image) for image in images]))


def test_a_scorer_whose_tag_is_a_weights_file_is_identified_by_the_files_content(tmp_path):
    """`--pretrained FILE` names weights by a path: the id hashes the file, so a file rewritten in place
    is another scorer (its cached embeddings are not reused) and the same bytes elsewhere are the same one.
    Keeping the path as the tag reused stale embeddings after the file was retrained."""
    from augment.scoring.scorers import _model_id

    weights = tmp_path / "epoch_1.pt"
    weights.write_bytes(b"first weights")

    class TaggedModel:
        family, pretrained = "open_clip", str(weights)

        def describe(self):
            return {}

    before = _model_id("ViT-B-32", TaggedModel())
    weights.write_bytes(b"retrained weights")
    after = _model_id("ViT-B-32", TaggedModel())
    assert before != after and str(weights) not in after
    moved = tmp_path / "moved.pt"
    moved.write_bytes(b"retrained weights")
    TaggedModel.pretrained = str(moved)
    assert _model_id("ViT-B-32", TaggedModel()) == after


def test_a_model_scorers_name_carries_the_pretrained_tag():
    """The scores entry records the scorer as `ARCH:TAG` (`ViT-B-16:openai`, what `find_scorer_entry`
    matches a bare `--scorer ViT-B-16` against): a scorer named by its architecture alone described
    two different weights of one architecture by one name."""
    from types import SimpleNamespace

    from augment.scoring.scorers import ModelScorer

    tagged = ModelScorer(SimpleNamespace(name="ViT-B-16", pretrained="openai", family="open_clip"), "id")
    assert tagged.name == "ViT-B-16:openai" and tagged.describe()["name"] == "ViT-B-16:openai"
    untagged = ModelScorer(SimpleNamespace(name="tiny-hf-clip", pretrained=None, family="hf_clip"), "id")
    assert untagged.name == "tiny-hf-clip" and untagged.groups_texts and not tagged.groups_texts


def test_scorer_embeddings_are_unit_vectors_by_batches_and_from_prepared_pixels():
    """A scorer's rows have unit norm whichever way they are computed (the alignment is their dot product,
    a cosine): `_batched` or `encode_prepared` returning the model's raw features (normalisation dropped)
    passed every test, and scaled every alignment and distance by the features' norms."""
    from augment.scoring.scorers import load_scorer

    scorer = load_scorer("tiny-hf-clip", batch_size=2)
    images = [_noise(64, 64, seed) for seed in range(3)]
    captions = ["a red cube", "a blue sphere next to a green cone", "a lamp"]
    raw = scorer._encode_text_batch(captions).float()
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-3)  # the model's features are not unit
    for rows in (scorer.encode_texts(captions), scorer.encode_images(images),
                 scorer.encode_prepared(scorer.prepare_images(images))):
        torch.testing.assert_close(rows.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(scorer.encode_prepared(scorer.prepare_images(images)), scorer.encode_images(images))


def test_a_scorers_slug_changes_with_its_id_under_one_name():
    """The slug keys a scorer's stored scores folder: one name with other weights (another id: a folder
    retrained in place, another tag file) must get another slug. Hashing the name instead of the id passed
    every test and would have reused the stale scores."""
    from augment.scoring.scorers import ScorerIdentity, scorer_slug

    assert scorer_slug("tiny-hf-clip", "hf_clip:0123") != scorer_slug("tiny-hf-clip", "hf_clip:4567")
    assert scorer_slug("tiny-hf-clip", "hf_clip:0123") == ScorerIdentity("tiny-hf-clip", "hf_clip:0123").slug
    assert scorer_slug("tiny-hf-clip", "hf_clip:0123").startswith("tiny-hf-clip-")


def test_images_of_other_sizes_are_never_copied_into_one_batch_array():
    """The one-array path needs every prepared image of the first one's size: without that check a 64 x 48
    and a 48 x 64 image (the same number of bytes) were reshaped into one array, pixels scrambled, where
    stacking the per-image tensors refuses them."""
    import pytest
    from torchvision import transforms as T

    from augment.scoring.scorers import prepare_batch

    with pytest.raises(RuntimeError):
        prepare_batch(T.Compose([T.ToTensor()]), [_noise(64, 48, 5), _noise(48, 64, 6)])
