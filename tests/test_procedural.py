"""The sample world's own generators agree with its scenes (and the shuffle control does not)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from augment.pool import load_pool
from augment.world.render import render_scene
from augment.world.scene import Scene
from augment.world.truth import check_caption
from augment.sources import load_source, select_split


def _generate(method, source, out, *extra):
    result = subprocess.run(
        [sys.executable, "-m", "augment.cli", "generate", "--method", method, "--source", str(source),
         "--out", str(out), "--limit", "20", "--n", "2", "--no-progress", *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return load_pool(out)


def _scenes(source):
    dataset = select_split(load_source(str(source))[0], "train")
    return {row["image_id"]: (Scene.from_dict(json.loads(row["meta"])["scene"]), row["captions"]) for row in dataset}


def test_render_keeps_content_changes_pixels(sample_world_dir, tmp_path):
    pool = _generate("t2i-render", sample_world_dir, tmp_path / "render")
    scenes = _scenes(sample_world_dir)
    assert len(pool) == 20 * 5 * 2 and set(pool.dataset["modality"]) == {"image"}
    for row in pool.dataset.select(range(0, len(pool), 7)):
        scene, captions = scenes[row["source_image_id"]]
        variant = Scene.from_dict(json.loads(row["provenance"])["scene"])
        assert variant.content() == scene.content()
        assert check_caption(captions[row["source_caption_index"]], variant) is True
        original = np.asarray(render_scene(scene), dtype=int)
        assert np.abs(np.asarray(row["image"], dtype=int) - original).sum() > 0
        assert np.array_equal(np.asarray(row["image"]), np.asarray(render_scene(variant)))


def test_scene_captions_true_and_new(sample_world_dir, tmp_path):
    scenes = _scenes(sample_world_dir)
    for style in ("full", "partial"):
        pool = _generate("i2t-scene", sample_world_dir, tmp_path / style, "--caption-style", style)
        assert len(pool) >= 30
        for row in pool.dataset:
            scene, captions = scenes[row["source_image_id"]]
            assert check_caption(row["caption"], scene) is True, row["caption"]
            assert row["caption"].lower() not in {c.lower() for c in captions}


def test_shuffle_is_misaligned(sample_world_dir, tmp_path):
    pool = _generate("shuffle", sample_world_dir, tmp_path / "shuffle")
    scenes = _scenes(sample_world_dir)
    verdicts = [check_caption(row["caption"], scenes[row["source_image_id"]][0]) for row in pool.dataset]
    assert all(json.loads(r)["from_image_id"] != i for r, i in zip(pool.dataset["provenance"], pool.dataset["source_image_id"]))
    assert sum(v is True for v in verdicts) < 0.2 * len(verdicts)


def test_a_scene_caption_pool_is_not_finished_in_another_caption_style(sample_world_dir, tmp_path, capsys):
    """Guards a mutation (audit CS): i2t-scene recording no params (its caption style left out of the pool's
    identity) passed every test; a `full` pool rerun with `--caption-style partial` was then finished with
    one-object captions, two styles in one pool."""
    from augment.cli import main as augment_main

    argv = ["generate", "--method", "i2t-scene", "--source", str(sample_world_dir), "--out", str(tmp_path / "pool"),
            "--n", "1", "--limit", "2", "--no-progress"]
    assert augment_main(argv) == 0
    capsys.readouterr()
    assert augment_main([*argv, "--caption-style", "partial"]) == 2
    assert "different params ['caption_style']" in capsys.readouterr().err


def test_a_render_pool_records_its_captions_per_image_in_its_params():
    """Guards a mutation (audit CS): t2i-render recording no params passed every test; `--captions-per-image` was
    then left out of the pool's identity (its params, compared on every rerun, as the caption style's test above
    shows end to end), and a pool rerun with another cap was finished under the new one."""
    from augment.generators.procedural import build

    for cap in (None, 1, 2):
        assert build("t2i-render", argparse.Namespace(captions_per_image=cap)).params() == {"captions_per_image": cap}


def test_scene_captions_of_one_image_are_all_different(tmp_path):
    """Guards i2t-scene's `seen.add`: without it each row was new only against the source captions, and an
    image's one-object wordings came back several times among its rows."""
    from augment.generators.procedural import SceneCaptionGenerator
    from augment.world.writer import write_sample

    source, _ = load_source(str(write_sample(tmp_path / "world", n=4, seed=0)))
    item = source[0]
    rows = SceneCaptionGenerator("partial").generate([item], 40, seed=0)
    captions = [row["caption"].lower() for row in rows]
    assert captions and len(set(captions)) == len(captions)


def test_shuffle_draws_again_until_the_caption_is_another_images():
    """Guards shuffle's `while` redraw: with `if`, a second draw of the row's own image was kept (a quarter of
    the rows of a two-image run captioned with their own image's captions)."""
    from augment.generators.procedural import ShuffleGenerator

    generator = ShuffleGenerator()
    generator.prepare({"image_id": ["a", "b"], "captions": [["a caption of a"], ["a caption of b"]]})
    rows = generator.generate([{"image_id": "a", "captions": ["a caption of a"]}], 40, seed=0)
    assert len(rows) == 40 and {json.loads(row["provenance"])["from_image_id"] for row in rows} == {"b"}


def test_procedural_refuses_sources_without_scenes(karpathy_dir, tmp_path):
    (karpathy_dir / "images.csv").write_text("image,caption\nimages/000.jpg,a cat\nimages/001.png,a dog\n")
    result = subprocess.run(
        [sys.executable, "-m", "augment.cli", "generate", "--method", "i2t-scene", "--source", str(karpathy_dir / "images.csv"),
         "--out", str(tmp_path / "p"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "image 'images/000' has no scene description" in result.stderr

    result = subprocess.run(
        [sys.executable, "-m", "augment.cli", "generate", "--method", "t2i-render", "--source", str(karpathy_dir),
         "--out", str(tmp_path / "q"), "--split", "all", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "image '000': malformed sample-world scene" in result.stderr


# ----------------------------------------------------------------------------- mutation guards (audit CD)


def _scene_item(captions: list[str]) -> dict:
    """A source item of the sample world: two objects on a plain background, `captions` as its captions."""
    from augment.world.scene import SceneObject

    scene = Scene((SceneObject("circle", "red", "large", "left"), SceneObject("square", "blue", "small", "right")))
    return {"image_id": "img0", "captions": captions, "split": "train", "meta": json.dumps({"scene": scene.to_dict()})}


@pytest.mark.parametrize("method", ["t2i-render", "i2t-scene"])
def test_prepare_refuses_an_item_whose_meta_holds_no_scene(method):
    """Guards a mutation (audit CS): the check before the pool is created refusing only items with no `meta` at all
    passed every test; an item whose `meta` held other keys and no scene then failed only in the middle of
    generation, after the pool's folder was made."""
    from datasets import Dataset

    from augment.errors import SourceError
    from augment.generators.procedural import build

    items = Dataset.from_dict({"image_id": ["has-scene", "no-scene"],
                               "meta": [_scene_item([])["meta"], json.dumps({"source_line": 3})]})
    generator = build(method, argparse.Namespace(caption_style="full"))
    with pytest.raises(SourceError, match="image 'no-scene' has no scene description"):
        generator.prepare(items)


def test_each_render_row_is_rebuilt_from_its_own_recorded_seed():
    """Guards a mutation (audit CD): t2i-render seeding every caption's rows with caption index 0 passed every test;
    the rows of an image's captions were then the same k images over again, and a row's recorded seed (which
    names its own caption) no longer rebuilt its image."""
    import random

    from augment.generators.procedural import RenderGenerator
    from augment.world.render import rerender_variant

    item = _scene_item(["a large red circle and a small blue square", "a red circle", "a blue square"])
    rows = RenderGenerator().generate([item], 2, seed=0)
    assert len(rows) == 6 and len({row["image"].tobytes() for row in rows}) == 6
    scene = Scene.from_dict(json.loads(item["meta"])["scene"])
    for row in rows:
        assert row["image"].tobytes() == rerender_variant(scene, random.Random(row["seed"]))[1].tobytes()


def test_render_reads_only_the_first_captions_per_image():
    """Guards a mutation (audit CD): t2i-render ignoring `--captions-per-image` passed every test (the tests ran
    without it); every caption of an image got its rows."""
    from augment.generators.procedural import RenderGenerator

    rows = RenderGenerator(captions_per_image=1).generate([_scene_item(["a red circle", "a blue square"])], 2, seed=0)
    assert [row["source_caption_index"] for row in rows] == [0, 0]


def test_a_caption_no_swap_made_false_comes_back_unchanged():
    """Guards a mutation (audit CD): `corrupt_attribute` returning its last (still true) candidate when no swap
    made the caption false passed every test; a noisy row then held a reworded true caption that its note calls
    "kept as drawn". With one try, a synonym swap ("big" for "large") is such a case."""
    import random

    from augment.generators.procedural import corrupt_attribute

    item = _scene_item(["a large red circle"])
    scene = Scene.from_dict(json.loads(item["meta"])["scene"])
    results = [corrupt_attribute("a large red circle", scene, random.Random(seed), tries=1) for seed in range(30)]
    assert all(text == "a large red circle" or check_caption(text, scene) is False for text in results)
    assert "a large red circle" in results and any(text != "a large red circle" for text in results)


def test_mixed_scene_captions_hold_whole_scene_and_one_object_captions():
    """Guards a mutation (audit CD): `--caption-style mixed` never drawing a one-object caption passed every test;
    the style was then `full` under another name."""
    from augment.generators.procedural import SceneCaptionGenerator
    from augment.world.captions import COLOUR_WORDS

    colour_words = {word for words in COLOUR_WORDS.values() for word in words}
    rows = SceneCaptionGenerator("mixed").generate([_scene_item(["a large red circle and a small blue square"])], 20,
                                                   seed=0)
    # a one-object caption names one colour; a whole-scene one names both objects' colours (or none: a count)
    named = [len(colour_words & set(row["caption"].replace(",", "").split())) for row in rows]
    assert 1 in named and any(count >= 2 for count in named), [row["caption"] for row in rows]


def test_noisy_scene_captions_corrupt_whole_scene_captions():
    """Guards a mutation (audit CS): `--caption-style noisy` drawing one-object captions (`partial` taken for
    every style but `full`) passed every test; the noisy pool then held corrupted one-object captions."""
    from augment.generators.procedural import SceneCaptionGenerator
    from augment.world.captions import COLOUR_WORDS

    colour_words = {word for words in COLOUR_WORDS.values() for word in words}
    rows = SceneCaptionGenerator("noisy").generate([_scene_item(["a large red circle and a small blue square"])], 20,
                                                   seed=0)
    # a whole-scene caption names a colour per object (or none: "a disk and a disk"); a one-object caption names one
    named = [sum(word in colour_words for word in row["caption"].replace(",", "").split()) for row in rows]
    assert len(rows) == 20 and 1 not in named, [row["caption"] for row in rows]


def test_a_scene_caption_row_with_no_new_wording_is_skipped_alone():
    """Guards a mutation (audit CS): `break` for the `continue` after a row's tries ran out passed every test; one
    row without a new wording then dropped every later row of its image, not just itself."""
    from augment.generators.procedural import SceneCaptionGenerator

    draws = iter(["new 0"] + ["the source caption"] * SceneCaptionGenerator.max_tries + ["new 2", "new 3"])

    class ScriptedDraws(SceneCaptionGenerator):
        def _draw(self, scene, rng):
            return next(draws)

    rows = ScriptedDraws("full").generate([_scene_item(["the source caption"])], 4, seed=0)
    assert [(row["row_id"].rsplit(":", 1)[1], row["caption"]) for row in rows] == [("0", "new 0"), ("2", "new 2"),
                                                                                    ("3", "new 3")]


def test_each_scene_caption_row_is_drawn_from_its_own_recorded_seed():
    """Guards a mutation (audit CS): i2t-scene seeding every row of an image with k = 0 passed every test; each row
    then replayed the first row's draws until one was new, and its recorded seed did not rebuild it."""
    import random

    from augment.generators.procedural import SceneCaptionGenerator

    item = _scene_item(["a large red circle and a small blue square"])
    generator = SceneCaptionGenerator("full")
    rows = generator.generate([item], 6, seed=3)
    scene = Scene.from_dict(json.loads(item["meta"])["scene"])
    seen = {caption.lower() for caption in item["captions"]}
    assert len({row["seed"] for row in rows}) == len(rows) == 6
    for row in rows:  # replayed by hand: each row's own seed, drawn until the wording is new to the image
        rng = random.Random(row["seed"])
        caption = generator._draw(scene, rng)
        while caption.lower() in seen:
            caption = generator._draw(scene, rng)
        assert row["caption"] == caption
        seen.add(caption.lower())


def test_shuffle_draws_its_captions_from_every_other_image():
    """Guards a mutation (audit CD): shuffle's first draw fixed to the bank's first image passed every test; every
    row of every other image then carried that one image's captions."""
    from augment.generators.procedural import ShuffleGenerator

    generator = ShuffleGenerator()
    generator.prepare({"image_id": ["a", "b", "c"], "captions": [["of a"], ["of b"], ["of c"]]})
    rows = generator.generate([{"image_id": "c", "captions": ["of c"]}], 20, seed=0)
    assert {json.loads(row["provenance"])["from_image_id"] for row in rows} == {"a", "b"}


def test_shuffle_draws_each_other_image_about_equally_often():
    """Guards a mutation (audit CS): shuffle's first draw never taking the bank's last image
    (`randrange(len(bank) - 1)`) passed every test: only a redraw reached it, and with three images the row's
    image's neighbour came three times as often as the last image (152 to 48 of 200 rows here, not about 100 each)."""
    from collections import Counter

    from augment.generators.procedural import ShuffleGenerator

    generator = ShuffleGenerator()
    generator.prepare({"image_id": ["a", "b", "c"], "captions": [["of a"], ["of b"], ["of c"]]})
    rows = generator.generate([{"image_id": "a", "captions": ["of a"]}], 200, seed=0)
    drawn = Counter(json.loads(row["provenance"])["from_image_id"] for row in rows)
    assert set(drawn) == {"b", "c"} and min(drawn.values()) >= 75, drawn  # binomial(200, 1/2): 75 is 3.5 sd below


def test_only_noisy_rows_record_whether_their_caption_is_false():
    """Guards a mutation (audit CD): the noise record written for every style but `full` passed every test; the
    true one-object captions of `partial` and `mixed` then carried a note that no swap had made them false."""
    from augment.generators.procedural import SceneCaptionGenerator

    for style in ("full", "partial", "mixed"):
        rows = SceneCaptionGenerator(style).generate([_scene_item(["a large red circle and a small blue square"])], 3,
                                                     seed=0)
        assert rows and not any({"false_of_image", "note"} & set(json.loads(row["provenance"])) for row in rows)


def test_a_corrupted_word_takes_the_article_it_needs():
    """`corrupt_attribute` swapped "emerald" for "red" after "an" and "red" for "orange" after "a" (audit CD: about
    7 noisy captions in 100 read "an scarlet triangle" or "a orange shape", which no true caption does, so the
    article alone told a model which captions were corrupted); now the article agrees with the new word."""
    import random

    from augment.generators.procedural import SceneCaptionGenerator, corrupt_attribute
    from augment.world.scene import SceneObject

    for colour, caption in (("green", "an emerald circle"), ("red", "a red circle")):
        scene = Scene((SceneObject("circle", colour, "large", "left"),))
        for seed in range(20):
            first, second = corrupt_attribute(caption, scene, random.Random(seed)).split()[:2]
            assert first == ("an" if second[0] in "aeiou" else "a"), (caption, seed)
    # a half-made noisy pool of the old rows is refused, not finished with the new ones; the other styles' rows
    # are the same
    assert [SceneCaptionGenerator(style).recipe for style in ("noisy", "full", "partial", "mixed")] == [2, 1, 1, 1]


def test_corrupt_attribute_swaps_one_word_of_any_attribute_kind():
    """Guards mutations (audit CD) of `corrupt_attribute` that passed every test: the size words left out of the
    swappable kinds (a caption whose only attribute is its size never made false), and the swap dropping the word
    after it (two things changed, not one)."""
    import random

    from augment.generators.procedural import corrupt_attribute
    from augment.world.scene import SceneObject

    scene = Scene((SceneObject("circle", "red", "large", "left"),))
    assert check_caption(corrupt_attribute("a large shape on the left", scene, random.Random(0)), scene) is False
    caption = "a large red circle on the left"
    for seed in range(20):
        corrupted = corrupt_attribute(caption, scene, random.Random(seed))
        changed = [k for k, (a, b) in enumerate(zip(caption.split(), corrupted.split())) if a != b]
        assert len(corrupted.split()) == len(caption.split()) and changed and changed[-1] in (1, 2, 3), corrupted
        assert changed == [changed[-1]] or changed == [0, 1], corrupted  # the article changes with its next word


def test_scene_captions_draw_again_until_each_row_is_new():
    """Guards a mutation (audit CD): i2t-scene giving each row one draw (`max_tries = 1`) passed every test; a row
    whose first wording repeated an earlier one was then dropped, though the scene had many more to offer."""
    from augment.generators.procedural import SceneCaptionGenerator

    rows = SceneCaptionGenerator("partial").generate([_scene_item(["a large red circle and a small blue square"])],
                                                     30, seed=0)
    assert len(rows) == 30


def test_shuffle_draws_any_caption_of_the_other_image():
    """Guards a mutation (audit CD): shuffle always taking the other image's first caption passed every test; its
    rows then never held the other captions of the images they drew."""
    from augment.generators.procedural import ShuffleGenerator

    generator = ShuffleGenerator()
    generator.prepare({"image_id": ["a", "b"], "captions": [["a0"], ["b0", "b1", "b2"]]})
    rows = generator.generate([{"image_id": "a", "captions": ["a0"]}], 20, seed=0)
    assert {row["caption"] for row in rows} == {"b0", "b1", "b2"}


def test_corrupt_attribute_keeps_trying_while_swaps_stay_true():
    """Guards a mutation (audit CD): `corrupt_attribute` giving up after 2 tries instead of 20 passed every test
    (most captions have a false swap at once). Here most swaps stay true ("small" and "blue" name other circles of
    the scene), and a noisy caption kept true is a noise row lost."""
    import random

    from augment.generators.procedural import corrupt_attribute
    from augment.world.scene import SceneObject

    scene = Scene((SceneObject("circle", "red", "large", "left"), SceneObject("circle", "red", "small", "right"),
                   SceneObject("circle", "blue", "large", "centre")))
    for seed in range(30):
        assert check_caption(corrupt_attribute("a large red circle", scene, random.Random(seed)), scene) is False, seed
