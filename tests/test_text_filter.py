"""MAT's meaning-preserving inner text attack (train/text_filter.py) and the noisy scene pool."""
from __future__ import annotations

import random

import pytest


def _substitutions(tmp_path, world, name, **settings):
    """(changed caption, its train row) for every caption MAT's inner attack changed in 2 steps."""
    from augment.sources import load_source, select_split
    from train.trainer import train_run

    records = []
    train_run({"train_data": str(world), "out": str(tmp_path / name), "method": "mat", "max_steps": 2, "batch_size": 16,
               "lr": 1e-4, "pgd_steps": 0, "word_budget": 1, "top_k": 20, "progress": False, "seed": 1, **settings},
              callbacks=[records.append])
    source, _ = load_source(str(world))
    train = select_split(source, "train").select_columns(["image_id", "captions", "meta"])
    return [(adv, train[int(key)]) for r in records
            for clean, adv, key in zip(r.batch.texts, r.output.adv_texts, r.batch.keys) if adv != clean]


def test_truth_filter_keeps_only_true_substitutions(tmp_path, sample_world_dir):
    from augment.world.truth import check_caption_of_row

    unfiltered = _substitutions(tmp_path, sample_world_dir, "plain")
    filtered = _substitutions(tmp_path, sample_world_dir, "truth", text_attack_filter="truth")
    assert any(check_caption_of_row(caption, row) is not True for caption, row in unfiltered)
    assert filtered  # the filtered attack still substitutes words
    assert all(check_caption_of_row(caption, row) is True for caption, row in filtered)


def test_accepted_prefix_stops_at_the_first_rejected_change():
    from train.text_filter import accepted_prefix

    changes = [{"position": 1, "to": "big"}, {"position": 2, "to": "blue"}]
    accept = lambda caption, row: "blue" not in caption  # noqa: E731
    assert accepted_prefix("a large red circle", changes, {}, accept) == "a big red circle"
    assert accepted_prefix("a large red circle", changes, {}, lambda c, r: True) == "a big blue circle"


def test_accepted_prefix_keeps_no_change_after_a_rejected_one():
    # a filter that rejects one combination but would accept a longer one: the caption stays at the prefix
    # before the rejection, never the longer change that carries the rejected substitution within it
    from train.text_filter import accepted_prefix

    changes = [{"position": 1, "to": "big"}, {"position": 2, "to": "blue"}, {"position": 3, "to": "square"}]
    accept = lambda caption, row: caption != "a big blue circle"  # noqa: E731
    assert accepted_prefix("a large red circle", changes, {}, accept) == "a big red circle"


def test_truth_filter_rejects_a_caption_it_cannot_judge():
    # check_caption_of_row's None (no scene, an unparseable caption) is no verdict of truth: accepting it
    # would let MAT train on substitutions nobody checked
    import json

    from augment.world.scene import sample_scene
    from train.text_filter import get_caption_filter

    truth = get_caption_filter("truth")
    scene_row = {"meta": json.dumps({"scene": sample_scene(random.Random(0)).to_dict()})}
    assert truth("zzz qqq", scene_row) is False
    assert truth("a red circle", {"meta": "{}"}) is False


def test_unknown_filter_is_refused():
    from train.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match="text-attack-filter"):
        resolve_config({"method": "mat", "train_data": "x", "out": "y", "text_attack_filter": "nope"})


def test_noisy_scene_captions_are_false_of_their_scene():
    from augment.generators.procedural import SceneCaptionGenerator
    from augment.world.scene import sample_scene
    from augment.world.truth import check_caption

    generator, verdicts = SceneCaptionGenerator("noisy"), []
    for i in range(100):
        rng = random.Random(i)
        scene = sample_scene(rng)
        verdicts.append(check_caption(generator._draw(scene, rng), scene))
    assert sum(v is False for v in verdicts) >= 90  # a few captions have no corruptible word


def test_noisy_rows_record_whether_their_caption_is_false(tmp_path):
    """A noisy caption no swap could make false is kept, but its row says it is true of its image."""
    import json

    from augment.generators.procedural import SceneCaptionGenerator
    from augment.world.scene import Scene, SceneObject
    from augment.world.truth import check_caption

    scene = Scene((SceneObject("square", "green", "large", "centre"),), "plain")
    item = {"image_id": "img0", "captions": ["a large green square"], "split": "train",
            "meta": json.dumps({"scene": scene.to_dict()})}
    rows = SceneCaptionGenerator("noisy").generate([item], 6, seed=0)
    records = [json.loads(r["provenance"]) for r in rows]
    assert rows and all(r["false_of_image"] == (check_caption(row["caption"], scene) is False)
                        for r, row in zip(records, rows))
    assert any(r["false_of_image"] for r in records)
    # a caption with no attribute word to swap stays true: its row says so
    generator = SceneCaptionGenerator("noisy")
    generator._draw = lambda scene, rng: f"a picture {rng.random()}"
    [kept, *_] = [json.loads(r["provenance"]) for r in generator.generate([item], 2, seed=0)]
    assert kept["false_of_image"] is False and "no attribute swap" in kept["note"]
    plain = json.loads(SceneCaptionGenerator("full").generate([item], 1, seed=0)[0]["provenance"])
    assert "false_of_image" not in plain
