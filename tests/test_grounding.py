"""Visual grounding (issue 15): world expressions, the RefCOCO+ loader, box scoring, evaluation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from augment.errors import SourceError
from augment.world.expressions import canonical_expression
from augment.world.render import object_box, render_scene
from augment.world.scene import COLOURS, Scene, SceneObject
from augment.world.truth import check_expression, referents
from augment.world.writer import build_grounding_item, write_sample
from augment.referring import load_grounding, load_refcoco, world_grounding
from models.base import TextTokens
from tasks.grounding import box_iou, box_scores, choose_box, ground, oracle_accuracy, random_box_accuracy

# ----------------------------------------------------------------------------- the sample world


def test_world_expressions_single_out_their_object_with_the_drawn_box():
    for index in range(40):
        scene, image, objects = build_grounding_item(3, index)
        assert objects == build_grounding_item(3, index)[2]  # deterministic
        pixels = np.asarray(image)
        for obj in objects:
            assert len(obj["expressions"]) == 3 and len(set(obj["expressions"])) == 3
            assert obj["expressions"][0] == canonical_expression(scene, obj["object"])
            for text in obj["expressions"]:
                assert check_expression(text, scene, obj["object"]) is True, text
                others = [k for k in range(len(scene.objects)) if k != obj["object"]]
                assert all(check_expression(text, scene, k) is False for k in others), text
            if len(scene.objects) == 1 and scene.background == "plain":
                ys, xs = np.nonzero((pixels != 128).any(-1))
                assert obj["box"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.mark.parametrize("text, target, expected", [
    ("the red circle", 0, True),
    ("the circle", 0, False),  # two circles: does not single one out
    ("the blue circle on the left", 0, False),  # no such object
    ("the circle to the left of the blue circle", 0, True),
    ("the circle to the left of the blue circle", 1, False),
    ("the shape in the middle", 2, True),
    ("the big square", 2, True),
    ("the crimson banana", 0, False),  # out-of-world claim: refers to nothing
    ("hello there", 0, None),
    ("not the red circle", 0, None),
])
def test_check_expression_hand_made_cases(text, target, expected):
    scene = Scene((SceneObject("circle", "red", "small", "left"), SceneObject("circle", "blue", "small", "right"),
                   SceneObject("square", "green", "large", "centre")))
    assert check_expression(text, scene, target) is expected


def test_world_folder_and_in_memory_forms(tmp_path):
    folder = write_sample(tmp_path / "world", n=8, seed=1, val_frac=0.25, test_frac=0.25)
    data = load_grounding(folder)
    assert len(data.images) == 8 and data.splits() == ["test", "train", "val"]
    test = data.select("test")
    assert {e.split for e in test.expressions} == {"test"} and len(test.images) == 2
    for expression in data.expressions:
        image = data.images[expression.image]
        scene = Scene.from_dict(image.scene)
        assert expression.box == list(map(float, object_box(scene.objects[expression.target])))
        assert expression.box in image.candidates and len(image.candidates) == len(scene.objects)
    assert [e.text for e in load_grounding(folder).expressions] == [e.text for e in data.expressions]
    memory = world_grounding(seed=1, n=3)
    assert [i.scene for i in memory.images] == [i.scene for i in data.images[:3]]


def test_world_images_are_decoded_when_used_and_a_bad_one_is_named(tmp_path):
    """A sample world's grounding images stay on disk until used: a corrupt image outside the
    evaluated split and limit is never read; a used one is one line naming it; --image-root is read."""
    import shutil

    folder = write_sample(tmp_path / "world", n=8, seed=1, val_frac=0.25, test_frac=0.25)
    data = load_grounding(folder)
    train_image = next(i for i in data.images if i.split == "train")
    test_image = next(i for i in data.images if i.split == "test")
    Path(train_image.path).write_bytes(b"not an image")
    chosen = load_grounding(folder).select("test", 1)
    assert chosen.images[0].image_id == test_image.image_id and chosen.images[0].load().size == (test_image.width, test_image.height)
    with pytest.raises(SourceError, match=rf"^image '{train_image.image_id}' \(.*{Path(train_image.path).name}\): unreadable or corrupt image"):
        load_grounding(folder).select("train").images[0].load()
    copy = tmp_path / "good-images"
    shutil.copytree(write_sample(tmp_path / "again", n=8, seed=1, val_frac=0.25, test_frac=0.25) / "images", copy)
    assert load_grounding(folder, image_root=str(copy)).select("train").images[0].load().size == (train_image.width, train_image.height)


def test_make_sample_with_expressions_is_a_training_source(tmp_path):
    from augment.sources import load_source

    folder = write_sample(tmp_path / "world", n=6, seed=2, val_frac=0.0, test_frac=0.5, expressions=2)
    data = load_grounding(folder)
    memory = world_grounding(seed=2, n=6, n_expressions=2)
    assert [e.text for e in data.expressions] == [e.text for e in memory.expressions]
    assert [e.box for e in data.expressions] == [e.box for e in memory.expressions]
    source, _ = load_source(str(folder))  # what the trainer reads: captions = the expressions
    assert [c for captions in source["captions"] for c in captions] == [e.text for e in data.expressions]


# ----------------------------------------------------------------------------- RefCOCO+ in ALBEF's layout


def _write_refcoco(root, *, bad_ref=False):
    from PIL import Image

    (root / "refcoco+").mkdir(parents=True)
    (root / "images" / "train2014").mkdir(parents=True)
    for image_id, size in ((581857, (40, 30)), (42, (20, 20))):
        Image.new("RGB", size, (10, 20, 30)).save(root / "images" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    records = [
        {"image": "train2014/COCO_train2014_000000581857.jpg", "text": "man on the left", "ref_id": 7},
        {"image": "train2014/COCO_train2014_000000581857.jpg", "text": "red shirt guy", "ref_id": 8},
        {"image": "train2014/COCO_train2014_000000000042.jpg", "text": "the dog", "ref_id": 9 if not bad_ref else 99},
    ]
    (root / "refcoco+_val.json").write_text(json.dumps(records))
    refs = [{"ref_id": 7, "ann_id": 70, "image_id": 581857, "split": "testA"},
            {"ref_id": 8, "ann_id": 71, "image_id": 581857, "split": "testB"},
            {"ref_id": 9, "ann_id": 90, "image_id": 42, "split": "val"}]
    (root / "refcoco+" / "refs(unc).json").write_text(json.dumps(refs))
    instances = {"images": [{"id": 581857, "width": 40, "height": 30}, {"id": 42, "width": 20, "height": 20}],
                 "annotations": [{"id": 70, "bbox": [1, 2, 10, 12]}, {"id": 71, "bbox": [20, 5, 15, 20]},
                                 {"id": 90, "bbox": [3, 3, 8, 8]}]}
    (root / "refcoco+" / "instances.json").write_text(json.dumps(instances))
    dets = {"581857": [[1, 2, 10, 12, 0.9, 1], [20, 5, 15, 20, 0.8, 1], [0, 0, 5, 5, 0.2, 3]], "42": [[3, 4, 8, 7, 0.7, 18]]}
    (root / "refcoco+" / "dets.json").write_text(json.dumps(dets))
    return root / "refcoco+_val.json"


def test_refcoco_loader_reads_albef_layout(tmp_path):
    data = load_refcoco(_write_refcoco(tmp_path), image_root=tmp_path / "images")
    assert [e.text for e in data.expressions] == ["man on the left", "red shirt guy", "the dog"]
    assert [e.box for e in data.expressions] == [[1, 2, 10, 12], [20, 5, 15, 20], [3, 3, 8, 8]]
    assert [e.split for e in data.expressions] == ["testA", "testB", "val"]
    assert [e.image for e in data.expressions] == [0, 0, 1]
    assert data.images[0].candidates == [[1, 2, 10, 12], [20, 5, 15, 20], [0, 0, 5, 5]]
    assert (data.images[0].width, data.images[0].height) == (40, 30) and data.images[1].load().size == (20, 20)
    assert len(data.select("test")) == 2 and len(data.select("val")) == 1
    # the same boxes: random choice hits 1 of 3 for the first two, the single candidate for the dog
    truth = [e.box for e in data.expressions]
    candidates = [data.images[e.image].candidates for e in data.expressions]
    assert random_box_accuracy(candidates, truth) == pytest.approx(100 * (1 / 3 + 1 / 3 + 1) / 3)
    assert oracle_accuracy(candidates, truth) == 100.0


def test_refcoco_splits_image_ids_from_file_names_boxes_and_limits(tmp_path):
    """Guards mutations (audit CH) of the RefCOCO+ reader that passed every test: the record's split taking
    precedence over its ref's, `test` matched before `testA` in a file's name, a COCO file name's id kept with its
    leading zeros (no detections found under it), a box of zero width accepted, and `select`'s limit letting one
    image more through."""
    ann = _write_refcoco(tmp_path)
    records = json.loads(ann.read_text())
    records[0]["split"] = "val"  # its ref says testA
    ann.write_text(json.dumps(records))
    data = load_refcoco(ann, image_root=tmp_path / "images")
    assert [e.split for e in data.expressions] == ["testA", "testB", "val"]
    assert len(data.select(None, 1).images) == 1 and len(data.select(None, 1)) == 2
    by_name = tmp_path / "refcoco+_testA.json"  # records with their box: no ref, the split from the file's name
    by_name.write_text(json.dumps([{"image": "train2014/COCO_train2014_000000000042.jpg", "text": "the dog",
                                    "bbox": [3, 3, 8, 8]}]))
    [dog] = load_refcoco(by_name, image_root=tmp_path / "images").expressions
    assert dog.split == "testA"
    by_name.write_text(json.dumps([{"image": "train2014/COCO_train2014_000000000042.jpg", "text": "the dog",
                                    "bbox": [3, 3, 0, 8]}]))
    with pytest.raises(SourceError, match=r"refcoco\+_testA.json: \[0\]: box \[3, 3, 0, 8\] has no area"):
        load_refcoco(by_name, image_root=tmp_path / "images")


def test_refcoco_loader_names_the_bad_record(tmp_path):
    ann = _write_refcoco(tmp_path, bad_ref=True)
    with pytest.raises(SourceError, match=r"refcoco\+_val.json: \[2\]: ref_id 99"):
        load_refcoco(ann, image_root=tmp_path / "images")
    ann.write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(SourceError, match=r"\[0\]: a record needs 'image' and 'text'"):
        load_refcoco(ann)


@pytest.mark.parametrize("where, box", [("dets", [float("nan"), 0, 5, 5]), ("dets", [0, 0, float("inf"), 5]),
                                        ("instances", [1, 2, 10, float("nan")])])
def test_refcoco_loader_refuses_a_box_that_is_not_finite(tmp_path, where, box):
    """JSON's NaN and Infinity (Python's reader takes them) in a box: a NaN candidate stopped the
    evaluation with "cannot convert float NaN to integer", naming nothing; a NaN or infinite true
    box was scored as a miss without a word."""
    ann = _write_refcoco(tmp_path)
    folder = tmp_path / "refcoco+"
    if where == "dets":
        (folder / "dets.json").write_text(json.dumps({"581857": [[1, 2, 10, 12], box], "42": [[3, 4, 8, 7]]}))
        expected = r"dets.json: 581857\[1\]: a box needs finite numbers"
    else:
        instances = json.loads((folder / "instances.json").read_text())
        instances["annotations"][0]["bbox"] = box
        (folder / "instances.json").write_text(json.dumps(instances))
        expected = r"instances.json: annotation 70: a box needs finite numbers"
    with pytest.raises(SourceError, match=expected):
        load_refcoco(ann, image_root=tmp_path / "images")


def test_world_object_box_that_is_not_finite_is_one_line(tmp_path):
    from augment.referring import load_grounding
    from augment.world.writer import write_sample

    world = write_sample(tmp_path / "world", n=4, seed=2, expressions=1)
    dataset = next(world.glob("dataset_*.json"))
    data = json.loads(dataset.read_text())
    data["images"][1]["objects"][0]["box"][2] = float("nan")
    dataset.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"images\[1\]: objects\[0\]: 'box' must be 4 finite numbers"):
        load_grounding(world)


@pytest.mark.parametrize("file, content, message", [
    ("refs(unc).json", {"7": {"ann_id": 70}}, r"refs must be a list .* got a JSON dict"),
    ("refs(unc).json", [{"ann_id": 70}], r"\[0\] is not a ref with a 'ref_id'"),
    ("instances.json", [], r"COCO instances must be an object .* got a JSON list"),
    ("instances.json", {"images": [{"id": 42, "width": 20}]}, r"images\[0\] needs 'id', 'width' and 'height'"),
    ("instances.json", {"annotations": [{"bbox": [1, 2, 3, 4]}]}, r"annotations\[0\] needs an 'id'"),
    ("instances.json", {"annotations": {"70": {}}}, r"'annotations' must be a list"),
])
def test_refcoco_loader_names_a_hand_converted_file_of_the_wrong_shape(tmp_path, file, content, message):
    ann = _write_refcoco(tmp_path)
    (tmp_path / "refcoco+" / file).write_text(json.dumps(content))
    with pytest.raises(SourceError, match=re.escape(file) + ": " + message):
        load_refcoco(ann, image_root=tmp_path / "images")


# ----------------------------------------------------------------------------- box scoring


def test_iou_follows_albefs_inclusive_rule():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0
    # the reference's guard: an overlap of one pixel or less on an axis is none (continuous IoU: 10 / 190)
    assert box_iou([0, 0, 10, 10], [9, 0, 10, 10]) == 0.0
    assert box_iou([0, 0, 10, 10], [0, 9.5, 10, 10]) == 0.0
    assert box_iou([0, 0, 10, 10], [8, 0, 10, 10]) == pytest.approx(20 / 180)
    # otherwise the continuous IoU, fractional coordinates included: 4.5 x 7.5 over 10 x 10 + 6 x 8 - it
    assert box_iou([0.0, 0.0, 10.0, 10.0], [5.5, 2.5, 6.0, 8.0]) == pytest.approx(33.75 / (100 + 48 - 33.75))
    assert box_iou([3, 4, 5, 6, "extra"], [3, 4, 5, 6]) == 1.0  # RefCOCO rows may carry more than the box


def test_box_scores_pick_the_heat_and_normalise_by_area():
    heat = torch.zeros(32, 32)
    heat[4:10, 20:28] = 1.0  # rows 4..9, columns 20..27
    boxes = [[0, 0, 8, 8], [20, 4, 8, 6], [16, 0, 16, 16], [0, 0, 32, 32]]
    scores = box_scores(heat, boxes)
    assert int(scores.argmax()) == 1
    assert scores[1] == pytest.approx(48 / 48 ** 0.5) and scores[3] == pytest.approx(48 / 32)
    assert choose_box(heat[::4, ::4], boxes, 32, 32) == 1  # patch heat upsampled to the image first


class _ColourGrounder(nn.Module):
    """Test double (scoring and attack mechanics, not the end-to-end check): heat = how much each
    8x8 patch has the colour the expression names; ITM = a soft maximum of that over patches."""

    family, name, kind, has_itm, has_grounding, image_size = "fake", "colour-grounder", "retrieval", True, True, 64

    def __init__(self):
        super().__init__()
        self.words = {word: k + 1 for k, word in enumerate(COLOURS)}
        colours = torch.tensor([[0.5, 0.5, 0.5], *[[c / 255 for c in rgb] for rgb in COLOURS.values()]]) - 0.5
        self.register_buffer("colours", colours)

    @property
    def device(self):
        return self.colours.device

    def describe(self):
        return {"family": self.family, "name": self.name, "pretrained": None}

    def preprocess_eval(self, image):
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255

    def tokenize(self, texts):
        ids = [[self.words.get(w, 0) for w in text.split()] or [0] for text in texts]
        length = max(len(i) for i in ids)
        return TextTokens(torch.tensor([i + [0] * (length - len(i)) for i in ids]))

    def image_features(self, pixels):
        return (nn.functional.avg_pool2d(pixels, 8) - 0.5).flatten(2).transpose(1, 2)  # [B, 64, 3]

    def encode_image(self, pixels):
        return nn.functional.normalize(self.image_features(pixels).flatten(1), dim=-1)

    def itm_logits(self, features, tokens):
        wanted = self.colours[tokens.input_ids].sum(1)  # [N, 3]
        return (10 * features @ wanted[:, :, None]).squeeze(-1).logsumexp(1)

    def grounding_heatmap(self, pixels, tokens):
        wanted = self.colours[tokens.input_ids].sum(1)
        heat = (self.image_features(pixels) @ wanted[:, :, None]).squeeze(-1).clamp_min(0)
        return heat.view(len(pixels), 8, 8)


def test_ground_with_a_heat_model_beats_the_random_box():
    data = world_grounding(seed=0, n=30)
    model = _ColourGrounder()
    pixels = torch.stack([model.preprocess_eval(data.images[e.image].load()) for e in data.expressions])
    candidates = [data.images[e.image].candidates for e in data.expressions]
    sizes = [(64, 64)] * len(data)
    chosen = ground(model, pixels, [e.text for e in data.expressions], candidates, sizes)
    truth = [e.box for e in data.expressions]
    hits = [box_iou(candidates[k][c], truth[k]) >= 0.5 for k, c in enumerate(chosen)]
    # the double reads colour words only: expressions naming one colour are grounded by it
    named = [k for k, e in enumerate(data.expressions) if sum(w in COLOURS for w in e.text.split()) == 1]
    accuracy = 100 * sum(hits[k] for k in named) / len(named)
    assert accuracy > random_box_accuracy([candidates[k] for k in named], [truth[k] for k in named]) + 25


def _one_colour(data):
    return [k for k, e in enumerate(data.expressions) if sum(w in COLOURS for w in e.text.split()) == 1]


def test_a_grounding_text_part_of_budget_zero_loads_no_masked_lm(monkeypatch):
    import augment.registry
    from train.attacks.grounding import build_grounding_attack

    def no_loading(*args, **kwargs):
        raise AssertionError("a masked LM was loaded")

    monkeypatch.setattr(augment.registry, "load_mlm", no_loading)
    model = _ColourGrounder()
    for name in ("bert-attack", "sep", "co-attack", "sga"):
        params = build_grounding_attack(name, model, mlm="no-such-mlm", budget=0).params()
        assert params.get("text", params)["source"] == "none", name
    with pytest.raises(AssertionError, match="a masked LM was loaded"):
        build_grounding_attack("sep", model, mlm="no-such-mlm", budget=1)


def test_grounding_attacks_lower_the_itm_score_within_budget():
    from augment.registry import load_mlm
    from train.attacks.grounding import build_grounding_attack

    data = world_grounding(seed=4, n=6)
    model = _ColourGrounder()
    images = torch.stack([model.preprocess_eval(i.load()) for i in data.images])
    texts = [e.text for e in data.expressions]
    pairing = torch.tensor(data.image_of_text())
    with torch.no_grad():
        clean = model.itm_logits(model.image_features(images)[pairing], model.tokenize(texts))
    mlm = (*load_mlm("tiny-mlm"), "tiny-mlm")
    for name in ("pgd", "bert-attack", "sep", "co-attack", "sga"):
        result = build_grounding_attack(name, model, eps=8 / 255, steps=5, step_size=2 / 255, mlm=mlm, seed=0)(
            images, texts, pairing)
        assert float((result.images - images).abs().max()) <= 8 / 255 + 1e-6
        for change in result.info.get("words_changed", []):
            assert len(change) <= 1
        with torch.no_grad():
            attacked = model.itm_logits(model.image_features(result.images)[pairing], model.tokenize(result.texts))
        assert float(attacked.mean()) < float(clean.mean()) - 0.1, name
        if name in ("pgd", "bert-attack"):  # one modality: no expression gets easier to ground
            assert (attacked <= clean + 1e-4).float().mean() > 0.9, name
    # the PGD step defaults to eps / 4 as everywhere (it was 0.5/255 whatever the budget)
    assert build_grounding_attack("pgd", model, eps=8 / 255).step_size == pytest.approx(2 / 255)
    assert build_grounding_attack("pgd", model, eps=8 / 255).params()["random_start"] is True


def test_the_heat_objective_is_the_heat_share_inside_the_true_box():
    """The "heat" objective's share of the Grad-CAM heat on the true box ([x, y, w, h] on an image of
    (height, width)), on a hand-made heat map: all of it in the grid's first column, the box that column.
    Found by audit BS: the box's mask with x and y swapped passed every test."""
    from train.attacks.grounding import GroundingVictim

    class HeatInTheFirstColumn:
        device = torch.device("cpu")

        def tokenize(self, texts):
            return texts

        def grounding_heatmap(self, pixels, tokens):
            heat = torch.zeros(len(tokens), 2, 4)  # [n, h, w]: 2 rows, 4 columns of patches
            heat[:, :, 0] = 1.0
            return heat

    victim = GroundingVictim(HeatInTheFirstColumn(), objective="heat")
    pixels, pairing = torch.zeros(1, 3, 8, 8), torch.zeros(2, dtype=torch.long)
    boxes = [[0, 0, 10, 20], [10, 0, 30, 20]]  # the first quarter of the width at full height; the rest
    shares = victim.scores(pixels, ["left", "right"], pairing, boxes=boxes, sizes=[(20, 40), (20, 40)])
    assert shares.tolist() == pytest.approx([1.0, 0.0])


def test_each_expression_is_grounded_in_its_own_copy_under_co_attacks_protocol(monkeypatch):
    """Co-Attack's grounding code attacks one copy of the image per expression: each expression is grounded in
    the copy attacked for it, not in its image's row of the copies. Found by audit BS: the copies indexed by
    the image of each expression again passed every test (they are the same shape)."""
    import contextlib

    from train import evaluate_grounding as module

    class ReadsCaptionsAsGiven(_ColourGrounder):  # the protocol cleans the expressions itself
        @contextlib.contextmanager
        def captions_as_given(self):
            yield

    data = world_grounding(seed=4, n=2)
    assert len(set(data.image_of_text())) < len(data.expressions)  # an image with two expressions
    attacked, grounded = [], []
    chosen_images = module._GroundingRun.grounded_images

    def kept(self, attack, views, result):
        images = chosen_images(self, attack, views, result)
        attacked.append(images)
        return images

    real_ground = module.ground

    def recorded(model, pixels, texts, *args, **kwargs):
        grounded.append(pixels)
        return real_ground(model, pixels, texts, *args, **kwargs)

    monkeypatch.setattr(module._GroundingRun, "grounded_images", kept)
    monkeypatch.setattr(module, "ground", recorded)
    module.evaluate_grounding(ReadsCaptionsAsGiven(), data, attacks=["pgd"], batch_size=len(data.images),
                              attack_options={"protocol": "co-attack", "eps": 8 / 255, "steps": 2})
    copies = attacked[-1]  # pgd's batch (the clean one came first)
    assert copies.shape[0] == len(data.expressions)  # one copy per expression
    assert any(torch.equal(pixels, copies) for pixels in grounded)


def test_co_attack_and_sga_images_lower_the_itm_score_of_the_expressions_they_return():
    """The image part of each multimodal attack on its own: the attacked pixels ground the returned
    expressions worse than the clean pixels do. Found by audit BS: a sign flipped in Co-Attack's or SGA's
    image objective (the image pushed toward the expressions) passed every test, the word attack alone
    lowering the score both modalities together are held to."""
    from augment.registry import load_mlm
    from train.attacks.grounding import build_grounding_attack

    data = world_grounding(seed=4, n=6)
    model = _ColourGrounder()
    images = torch.stack([model.preprocess_eval(i.load()) for i in data.images])
    texts = [e.text for e in data.expressions]
    pairing = torch.tensor(data.image_of_text())

    def itm(pixels, expressions):
        with torch.no_grad():
            return model.itm_logits(model.image_features(pixels)[pairing], model.tokenize(list(expressions)))

    mlm = (*load_mlm("tiny-mlm"), "tiny-mlm")
    for name in ("co-attack", "sga"):
        result = build_grounding_attack(name, model, eps=8 / 255, steps=5, step_size=2 / 255, mlm=mlm, seed=0)(
            images, texts, pairing)
        lowered = itm(images, result.texts) - itm(result.images, result.texts)
        assert float(lowered.mean()) > 0.05, (name, lowered)


def test_evaluate_grounding_report_and_truth_checked_rows(capsys):
    from train.evaluate_grounding import evaluate_grounding, markdown_grounding_report, world_expression_checker

    data = world_grounding(seed=5, n=8)
    report = evaluate_grounding(_ColourGrounder(), data, attacks=["clean", "pgd", "synonym"],
                                attack_options={"eps": 16 / 255, "steps": 3, "step_size": 6 / 255},
                                expression_checker=world_expression_checker, progress=True)
    # no line per attack on stdout (in-training validation printed them beside its own), as the other tasks
    assert "accuracy" not in capsys.readouterr().out
    clean, pgd, synonym = (report["attacks"][n] for n in ("clean", "pgd", "synonym"))
    assert clean["accuracy"] > report["baselines"]["random_box"]
    assert 0 <= pgd["asr"] <= 100 and 0 < pgd["linf"] <= 16 / 255 + 1e-6
    judged = synonym["meaning_preserved"]
    assert judged["true"] + judged["false"] + judged["unknown"] == synonym["texts_changed"] > 0
    # an expression made false (another colour) counts as not attacked: never below the raw accuracy
    assert synonym["accuracy_meaning_preserved"] >= synonym["accuracy"]
    table = markdown_grounding_report(report)
    assert "| pgd |" in table and "Random box" in table
    # the rows a grounder can get wrong: images with two or more candidates, a lower random box
    multi = [e for e in data.expressions if len(data.images[e.image].candidates) >= 2]
    assert report["baselines"]["expressions_multi"] == len(multi) > 0
    assert report["baselines"]["random_box_multi"] == pytest.approx(
        random_box_accuracy([data.images[e.image].candidates for e in multi], [e.box for e in multi]))
    assert report["baselines"]["random_box_multi"] < report["baselines"]["random_box"]
    single = len(data) - len(multi)  # a single candidate is always right
    assert clean["accuracy"] == pytest.approx((clean["accuracy_multi"] * len(multi) + 100 * single) / len(data))
    assert "accuracy_by_split" not in clean  # one split: its accuracy is the accuracy

    # expressions of two splits (RefCOCO+ --split test: testA and testB, reported apart by ALBEF)
    import dataclasses

    data.expressions[:] = [dataclasses.replace(e, split="testA" if k % 2 else "testB")
                           for k, e in enumerate(data.expressions)]
    mixed = evaluate_grounding(_ColourGrounder(), data, attacks=["clean"])["attacks"]["clean"]
    by_split = mixed["accuracy_by_split"]
    assert sorted(by_split) == ["testA", "testB"] and mixed["accuracy"] == clean["accuracy"]
    count_a = len(data) // 2
    assert mixed["accuracy"] == pytest.approx((by_split["testA"] * count_a + by_split["testB"] * (len(data) - count_a))
                                              / len(data))
    assert "Accuracy by split: clean testA " in markdown_grounding_report(
        {**report, "attacks": {"clean": mixed}})


def _without_seconds(report: dict) -> dict:
    return {**report, "attacks": {name: {k: v for k, v in entry.items() if k != "seconds"}
                                  for name, entry in report["attacks"].items()}}


def test_killed_grounding_evaluation_resumes_to_the_same_report(tmp_path, monkeypatch):
    """Finished (attack, batch)es are kept in progress_dir; a run killed mid-attack resumes to the uninterrupted
    report, each batch it attacks again drawing what it drew before (its seed is (seed, attack, batch)), and
    images decoded by 2 DataLoader workers give the same numbers."""
    from train.attacks.grounding import GroundingPGD
    from train.evaluate_grounding import evaluate_grounding, world_expression_checker

    data = world_grounding(seed=5, n=8)  # 4 batches of 2 images
    kwargs = dict(attacks=["clean", "synonym", "pgd"], batch_size=2, expression_checker=world_expression_checker,
                  attack_options={"eps": 16 / 255, "steps": 2, "step_size": 6 / 255})
    adversarial = []
    run = GroundingPGD.run

    def kept(self, *args):  # every attacked batch's adversarial images, in order
        result = run(self, *args)
        adversarial.append(result.images)
        return result

    def dying(self, *args):  # the third pgd batch never finishes
        if len(adversarial) == 2:
            raise KeyboardInterrupt
        return kept(self, *args)

    monkeypatch.setattr(GroundingPGD, "run", kept)
    whole = evaluate_grounding(_ColourGrounder(), data, **kwargs)
    whole_images = list(adversarial)
    adversarial.clear()
    monkeypatch.setattr(GroundingPGD, "run", dying)
    progress = tmp_path / "progress"
    with pytest.raises(KeyboardInterrupt):
        evaluate_grounding(_ColourGrounder(), data, progress_dir=progress, **kwargs)
    assert [len(list((progress / name).glob("batch-*.pt"))) for name in ("clean", "synonym", "pgd")] == [4, 4, 2]
    monkeypatch.setattr(GroundingPGD, "run", kept)
    resumed = evaluate_grounding(_ColourGrounder(), data, progress_dir=progress, workers=2, **kwargs)
    assert len(adversarial) == 4  # only pgd's last two batches were attacked again, as in the whole run
    assert all(torch.equal(a, b) for a, b in zip(adversarial[2:], whole_images[2:]))
    assert resumed["attacks"]["synonym"]["meaning_preserved"]["false"] > 0  # verdicts came back from the files
    assert _without_seconds(resumed) == _without_seconds(whole)


def test_eval_command_refuses_a_model_that_cannot_ground(tmp_path, capsys):
    from train.cli import main

    folder = write_sample(tmp_path / "world", n=4, seed=1, val_frac=0.0, test_frac=0.5, expressions=1)
    code = main(["eval", "tiny-clip", "--task", "grounding", "--source", str(folder), "--out", str(tmp_path / "eval")])
    assert code == 2
    assert "needs a model with an ITM head and grounding_heatmap" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()

    # an option that shapes a released .pth, given with a model that carries its own: refused, not ignored
    code = main(["eval", "tiny-albef", "--task", "grounding", "--source", str(folder), "--albef-tokenizer", "other",
                 "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "--albef-tokenizer applies to a .pth checkpoint only" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


# ----------------------------------------------------------------------------- training for grounding


def test_equal_expressions_of_different_images_are_positives():
    from tasks.grounding import expression_positives

    keys = torch.tensor([0, 0, 1, 2])
    positives = expression_positives(keys, ["the star", "the red circle", "The  star", "the square"])
    assert positives.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    assert expression_positives(keys, None).tolist()[0] == [1, 1, 0, 0]


def test_true_pairs_label_an_expression_true_of_another_image_positive():
    from tasks.grounding import GroundingTask, scenes_of_rows

    scenes = [Scene((SceneObject("star", "red", "small", "left"),)),
              Scene((SceneObject("star", "blue", "large", "right"), SceneObject("circle", "red", "small", "top"))),
              Scene((SceneObject("square", "green", "large", "centre"),))]
    metas = [json.dumps({"scene": scene.to_dict()}) for scene in scenes]
    task = GroundingTask()
    task.scenes = scenes_of_rows(metas)
    assert scenes_of_rows(metas + [None]) is None  # only when every row has a scene
    keys = torch.tensor([0, 1, 2])
    texts = ["the star", "the red circle", "the square"]
    # image rows x text rows: 'the star' of image 0 is true of image 1 (its blue star) too
    assert task.true_pairs(keys, texts).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert GroundingTask().true_pairs(keys, texts) is None  # no scenes: today's labels


def test_counterfactual_edits_are_checked_and_change_only_their_object():
    from tasks.grounding import counterfactual_scenes

    scene = Scene((SceneObject("circle", "red", "small", "left"), SceneObject("circle", "blue", "small", "right"),
                   SceneObject("square", "green", "large", "centre")), "noisy", 7)
    original = np.asarray(render_scene(scene)).astype(int)
    false, true = counterfactual_scenes("the red circle", scene)
    # removed, recoloured, reshaped; resized it is still the red circle
    assert [len(s.objects) for s in false[0]] == [2] and [len(g) for g in false[1:]] == [len(COLOURS) - 1, 5]
    assert len(true) == 8  # each other object: removed or one attribute changed, where it stays true

    def changed_box(edited):
        ys, xs = np.nonzero((np.asarray(render_scene(edited)).astype(int) != original).any(-1))
        return xs.min(), ys.min(), xs.max(), ys.max()

    def inside(corners, edited, index):
        """Whether the changed pixels lie in object `index`'s box before or after the edit."""
        boxes = [object_box(scene.objects[index])]
        boxes += [object_box(o) for o in edited.objects if o.position == scene.objects[index].position]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        return x0 <= corners[0] and y0 <= corners[1] and corners[2] < x1 and corners[3] < y1

    for edited in (s for group in false for s in group):
        assert referents("the red circle", edited) == []
        assert inside(changed_box(edited), edited, 0)  # the same noise and other objects
    for edited in (s for group in true for s in group):
        found = referents("the red circle", edited)
        assert len(found) == 1 and edited.objects[found[0]].content() == scene.objects[0].content()
        assert any(inside(changed_box(edited), edited, k) for k in (1, 2))
    assert not any(obj.colour == "red" and obj.shape == "circle" for group in true for s in group
                   for obj in s.objects[1:])  # a second red circle would make the expression ambiguous
    assert counterfactual_scenes("the circle", scene) == ([], [])  # refers to two objects
    assert counterfactual_scenes("the yellow star", scene) == ([], [])  # refers to none


def test_counterfactual_pixels_label_edits_by_the_checker():
    from models import load_model
    from tasks.grounding import GroundingTask, scenes_of_rows

    scenes = [Scene((SceneObject("star", "red", "small", "left"), SceneObject("circle", "blue", "large", "top"))),
              Scene((SceneObject("square", "green", "large", "centre"),))]
    model = load_model("tiny-albef")
    task = GroundingTask(counterfactual_every=1)
    task.scenes = scenes_of_rows([json.dumps({"scene": scene.to_dict()}) for scene in scenes])
    keys = torch.tensor([0, 1, 1])
    rows, pixels, labels = task.counterfactual_pixels(model, keys, ["the star", "the square", "hello there"])
    # the star: a false edit and a true one; the lone square: only false edits; an unreadable text: none
    assert rows.tolist() == [0, 0, 1] and labels.tolist() == [0.0, 1.0, 0.0]
    assert pixels.shape == (3, 3, model.image_size, model.image_size)
    for pixel, row in zip(pixels, rows.tolist()):
        assert not torch.equal(pixel, model.preprocess_eval(render_scene(scenes[keys[row]])))
    task.counterfactual_every = 2  # rows 0, 2, ...: the star's pairs, none for row 2's unreadable text
    assert task.counterfactual_pixels(model, keys, ["the star", "the square", "hello there"])[0].tolist() == [0, 0]
    assert GroundingTask(counterfactual_pairs=False).counterfactual_pixels(model, keys, ["the star"] * 3) is None
    assert GroundingTask().counterfactual_pixels(model, keys, ["the star"] * 3) is None  # no scenes (real data)


def test_true_counterfactual_edits_follow_the_target_past_a_removal():
    """Guards a mutation (audit CD): `counterfactual_scenes` dropping the target's index shift passed every test
    (the test scene's target came first); removing an object listed before the target was then never a true edit,
    though the expression still singles out the same object."""
    from tasks.grounding import counterfactual_scenes

    scene = Scene((SceneObject("square", "blue", "small", "left"), SceneObject("circle", "red", "large", "right")))
    _, true = counterfactual_scenes("the red circle", scene)
    assert Scene(scene.objects[1:], scene.background, scene.noise_seed) in [s for group in true for s in group]


def test_grounding_checks_kept_per_expression_stay_bounded_as_attacked_expressions_arrive(monkeypatch):
    """`true_pairs` and `counterfactual_pixels` keep each (row, text)'s check for the pairs that recur; under mat /
    mat+ the texts are each step's attacked expressions, new at almost every step, and both kept every one for the
    whole run (audit AU: `train mat --task grounding`, tiny-albef, batch 8: ~100 verdicts and ~8 edited scenes more
    a step, RSS +37 MB in 180 steps; a batch of 64 adds 64 x 64 verdicts a step). At most the latest so many now."""
    from types import SimpleNamespace

    import tasks.grounding as grounding

    monkeypatch.setattr(grounding, "TRUTH_CACHE_SIZE", 10, raising=False)
    monkeypatch.setattr(grounding, "COUNTERFACTUAL_CACHE_SIZE", 3, raising=False)
    scenes = [Scene((SceneObject("star", "red", "small", "left"),)),
              Scene((SceneObject("star", "blue", "large", "right"), SceneObject("circle", "red", "small", "top")))]
    task = grounding.GroundingTask(counterfactual_every=1)
    task.scenes = grounding.scenes_of_rows([json.dumps({"scene": scene.to_dict()}) for scene in scenes])
    model = SimpleNamespace(preprocess_eval=lambda image: torch.zeros(3, 4, 4))
    keys = torch.tensor([0, 1])
    for step in range(20):  # each step's attacked expressions: unreadable, new ones (checked, kept)
        texts = [f"the zork {step}", f"the blip {step}"]
        assert task.true_pairs(keys, texts).tolist() == [[0, 0], [0, 0]]
        assert task.counterfactual_pixels(model, keys, texts) is None
        assert len(task._truth) <= 10 and len(task._counterfactuals) <= 3
    # what is kept is still the checker's verdict, and a pair dropped is checked again alike
    assert task.true_pairs(keys, ["the star", "the red circle"]).tolist() == [[1, 0], [1, 1]]
    assert task.true_pairs(keys, ["the star", "the red circle"]).tolist() == [[1, 0], [1, 1]]
    rows, _, labels = task.counterfactual_pixels(model, keys, ["the star", "the red circle"])
    assert rows.tolist() == [0, 1, 1] and labels.tolist() == [0.0, 0.0, 1.0]  # the lone star: a false edit only


def test_grounding_trains_on_unflipped_uncropped_images():
    from PIL import Image

    from models import load_model
    from tasks.grounding import GroundingTask

    model = load_model("tiny-albef")
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 16, 64))  # a red band on the left: a flip or crop would move it
    transform = GroundingTask().train_transform(model)
    for _ in range(8):
        assert torch.equal(transform(image), model.preprocess_eval(image))


ALBEF_CODE = tuple(f"models/albef/{name}.py" for name in ("__init__", "checkpoint", "config", "model", "text"))
# the twin learns from its own world of 2,000 scenes (seed 1: none of the evaluation world's 50 test scenes) with
# counterfactual ITM pairs (GroundingTask.counterfactual_pixels); measured: README, "Grounding"
GROUNDING_STEPS, GROUNDING_LR, GROUNDING_TRAIN_SCENES = 600, 2e-3, 2000


@pytest.fixture(scope="module")
def grounding_train_world(request):
    """The world the grounding twin trains on: 2,000 scenes with 2 expressions per object, all train, cached.

    With the evaluation world's 300 training scenes the twin learns those scenes: at 600 steps (with the
    counterfactual pairs) its ITM tells the referred object's removal from another's in 71% of the
    training pairs and 52% of the test ones."""
    from tests.conftest import WORLD_CODE, _code_key, cached_folder

    return cached_folder(request, f"grounding-train-world-{GROUNDING_TRAIN_SCENES}-{_code_key(*WORLD_CODE)}",
                         lambda folder: write_sample(folder, n=GROUNDING_TRAIN_SCENES, seed=1, val_frac=0.0,
                                                     test_frac=0.0, expressions=2))


@pytest.fixture(scope="module")
def grounding_twin(request, grounding_train_world):
    """tiny-albef trained by `train clean --task grounding` on the training world's expressions, cached across runs."""
    from tests.conftest import train_twin

    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield train_twin(request, grounding_train_world, "tiny-albef", *ALBEF_CODE, "tasks/grounding.py", "tasks/base.py",
                     steps=GROUNDING_STEPS, lr=GROUNDING_LR, task="grounding")
    torch.set_num_threads(previous)


def _eval_report(folder) -> dict:
    return json.loads((folder / "eval.json").read_text())


def test_mat_and_mat_plus_train_for_grounding_and_their_checkpoints_evaluate(grounding_twin, grounding_world_dir,
                                                                              tmp_path):
    from augment.cli import main as augment_main
    from train.cli import main as train_main

    pool = tmp_path / "eda"
    assert augment_main(["generate", "--method", "eda", "--source", str(grounding_world_dir), "--split", "train",
                         "--n", "2", "--out", str(pool), "--no-progress"]) == 0
    common = ["--task", "grounding", "--model", str(grounding_twin), "--train-data", str(grounding_world_dir),
              "--max-steps", "2", "--batch-size", "8", "--pgd-steps", "1", "--lr", "1e-5", "--no-progress"]
    assert train_main(["mat", *common, "--out", str(tmp_path / "mat")]) == 0
    assert train_main(["mat+", *common, "--pools", str(pool), "--out", str(tmp_path / "mat+")]) == 0
    summary = json.loads((tmp_path / "mat+" / "summary.json").read_text())
    assert summary["task"] == "grounding" and sum(summary["pool_draws"].values()) == 16
    assert any(name != "original" for name in summary["pool_draws"]), summary["pool_draws"]
    for run in ("mat", "mat+"):
        out = tmp_path / f"eval-{run}"
        assert train_main(["eval", str(tmp_path / run / "ckpt"), "--task", "grounding", "--source",
                           str(grounding_world_dir), "--split", "test", "--limit", "4", "--attacks", "clean,pgd",
                           "--pgd-steps", "1", "--out", str(out)]) == 0
        report = _eval_report(out)
        assert report["task"] == "grounding" and report["data"]["images"] == 4
        assert 0 <= report["attacks"]["pgd"]["accuracy"] <= 100


def test_transfer_attacks_craft_on_the_attacker_and_ground_with_the_victim(grounding_twin, grounding_world_dir,
                                                                           tmp_path, capsys):
    from train.cli import main as train_main

    common = ["--task", "grounding", "--source", str(grounding_world_dir), "--split", "test", "--limit", "6",
              "--attacks", "clean,pgd,sep", "--pgd-steps", "3", "--attack-eps", "8/255"]
    assert train_main(["eval", str(grounding_twin), *common, "--out", str(tmp_path / "white")]) == 0
    assert train_main(["eval", str(grounding_twin), *common, "--attacker-model", "tiny-albef",
                       "--out", str(tmp_path / "transfer")]) == 0
    white, transfer = _eval_report(tmp_path / "white"), _eval_report(tmp_path / "transfer")
    assert white["settings"]["mode"] == "white-box" and transfer["settings"]["mode"] == "transfer"
    assert transfer["attacker"]["name"] == "tiny-albef" and transfer["model"]["name"] != "tiny-albef"
    # the clean row is the victim's own; the attacked rows differ from white-box ones (another attacker)
    assert transfer["attacks"]["clean"]["accuracy"] == white["attacks"]["clean"]["accuracy"]
    for name in ("pgd", "sep"):
        assert 0 < transfer["attacks"][name]["linf"] <= 8 / 255 + 1e-6
    assert "Transfer attacks crafted on tiny-albef" in (tmp_path / "transfer" / "eval.md").read_text()
    capsys.readouterr()
    code = train_main(["eval", str(grounding_twin), *common, "--attacker-model", "tiny-clip",
                       "--out", str(tmp_path / "refused")])
    assert code == 2 and "has no ITM head" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_killed_grounding_eval_command_resumes_and_restarts(grounding_twin, grounding_world_dir, tmp_path,
                                                            monkeypatch, capsys):
    from train.attacks.grounding import GroundingPGD
    from train.cli import main as train_main

    def argv(out, *extra):
        return ["eval", str(grounding_twin), "--task", "grounding", "--source", str(grounding_world_dir), "--split",
                "test", "--limit", "4", "--batch-size", "2", "--attacks", "clean,pgd", "--pgd-steps", "1",
                "--no-progress", "--out", str(out), *extra]

    calls = {"pgd": 0}
    run = GroundingPGD.run

    def counted(self, *args):
        calls["pgd"] += 1
        return run(self, *args)

    def dying(self, *args):  # the second pgd batch never finishes
        if calls["pgd"] == 1:
            raise KeyboardInterrupt
        return counted(self, *args)

    assert train_main(argv(tmp_path / "whole")) == 0
    monkeypatch.setattr(GroundingPGD, "run", dying)
    out = tmp_path / "killed"
    assert train_main(argv(out, "--workers", "0")) == 130  # Ctrl-C's exit status
    assert not (out / "eval.json").exists()
    assert [len(list((out / ".progress" / name).glob("batch-*.pt"))) for name in ("clean", "pgd")] == [2, 1]
    # another seed on the same folder: refused in one line, the finished batches kept
    assert train_main(argv(out, "--seed", "1")) == 2
    assert "holds 3 finished batches of an evaluation with other settings (differ: " in capsys.readouterr().err
    assert len(list((out / ".progress").rglob("batch-*.pt"))) == 3
    monkeypatch.setattr(GroundingPGD, "run", counted)
    assert train_main(argv(out, "--workers", "2")) == 0
    assert calls["pgd"] == 2  # pgd's first batch came from .progress
    assert _without_seconds(_eval_report(out)) == _without_seconds(_eval_report(tmp_path / "whole"))
    assert not (out / ".progress").exists()
    # the finished report is not replaced without --restart
    assert train_main(argv(out)) == 2 and "holds a finished evaluation" in capsys.readouterr().err
    # killed again (replacing it), then --restart throws the finished batches away: both pgd batches run again
    calls["pgd"] = 0
    monkeypatch.setattr(GroundingPGD, "run", dying)
    assert train_main(argv(out, "--restart")) == 130
    monkeypatch.setattr(GroundingPGD, "run", counted)
    assert train_main(argv(out, "--restart")) == 0
    assert calls["pgd"] == 3 and not (out / ".progress").exists()


def test_grounding_eval_precision_is_autocast_over_fp32_weights(grounding_world_dir, tmp_path, monkeypatch):
    """--precision amp_bf16 means what it means for retrieval: autocast, the weights stay fp32; --albef-* reach the loader."""
    import models
    from models.half_precision import active_precision
    from train import evaluate_grounding as grounding
    from train.cli import main as train_main

    loaded, seen = [], []
    load_model, evaluate = models.load_model, grounding.evaluate_grounding

    def loading(*args, **kwargs):
        loaded.append(kwargs)
        return load_model(*args, **kwargs)

    def evaluating(model, *args, **kwargs):
        seen.append((next(model.parameters()).dtype, active_precision(model.device)))
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", loading)
    monkeypatch.setattr(grounding, "evaluate_grounding", evaluating)
    out = tmp_path / "bf16"
    assert train_main(["eval", "tiny-albef", "--task", "grounding", "--source", str(grounding_world_dir), "--split",
                       "test", "--limit", "2", "--attacks", "clean,sep", "--pgd-steps", "1", "--precision", "amp_bf16",
                       "--no-progress", "--out", str(out)]) == 0
    assert seen == [(torch.float32, "amp_bf16")]
    assert loaded[0].get("precision", "fp32") == "fp32"
    report = _eval_report(out)
    assert report["settings"]["precision"] == "amp_bf16" and report["settings"]["device"] == "cpu"
    assert 0 < report["attacks"]["sep"]["linf"] <= 2 / 255 + 1e-6 and 0 <= report["attacks"]["sep"]["accuracy"] <= 100


# ----------------------------------------------------------------------------- the study's grounding arm


def test_grounding_arm_writes_the_world_evaluates_and_gives_the_headline(grounding_twin, grounding_world_dir,
                                                                         tmp_path):
    from analysis import grounding_arm as arm

    assert arm.MODEL == "tiny-albef" and arm.METHODS == ("clean", "mat", "mat+")
    arm.write_world(tmp_path / "world", n=8, seed=3)
    world = load_grounding(tmp_path / "world")
    assert len(world.images) == 8 and all(len(world.images[e.image].candidates) >= 1 for e in world.expressions)
    assert len(world) == 2 * sum(len(image.candidates) for image in world.images)
    settings = {"limit": 5, "batch_size": 5, "pgd_steps": 2, "attacks": ["clean", "pgd", "synonym", "sga"],
                "captions_per_image": 2}  # a retrieval key: ignored
    report = arm.evaluate_checkpoint(grounding_twin, grounding_world_dir, settings, seed=0, folder=tmp_path / "eval")
    assert _eval_report(tmp_path / "eval")["attacks"].keys() == report["attacks"].keys() == {"clean", "pgd", "synonym", "sga"}
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert table.startswith("# Grounding robustness") and "- `pgd`: " in table and "steps 2," in table
    assert report["settings"]["attack_options"]["steps"] == 2
    headline = arm.headline(report)
    assert headline["metric"] == "accuracy" and headline["attack"] == "sga"
    assert headline["clean"] == report["attacks"]["clean"]["accuracy"]
    # robust: meaning-preserving expressions only (a rejected one is grounded by its clean text), beside
    # the raw number; which is higher depends on the twin's weights (they moved in the 7th digit when
    # it was trained on busy cores, and this once read 50 vs 55), so only the fields are checked
    assert headline["robust"] == report["attacks"]["sga"]["accuracy_meaning_preserved"]
    assert headline["robust_all"] == report["attacks"]["sga"]["accuracy"]
    assert headline["random_box"] == report["baselines"]["random_box"]
    assert arm.headline({**report, "attacks": {"clean": report["attacks"]["clean"]}})["attack"] == "clean"
    json.dumps(report)  # JSON-able


def test_every_attack_lowers_the_trained_twins_grounding_objective(grounding_twin, grounding_world_dir):
    from augment.registry import load_mlm
    from models import load_model
    from train.attacks.grounding import build_grounding_attack

    model = load_model(str(grounding_twin))
    data = load_grounding(grounding_world_dir).select("test", 6)
    images = torch.stack([model.preprocess_eval(image.load()) for image in data.images])
    texts, pairing = [e.text for e in data.expressions], torch.tensor(data.image_of_text())

    def itm(pixels, expressions):
        with torch.no_grad():
            return model.itm_logits(model.image_features(pixels)[pairing], model.tokenize(expressions))

    clean = itm(images, texts)
    mlm = (*load_mlm("tiny-mlm"), "tiny-mlm")
    for name in ("pgd", "bert-attack", "sep", "co-attack", "sga"):
        result = build_grounding_attack(name, model, eps=2 / 255, steps=5, step_size=1 / 255, mlm=mlm, seed=0)(
            images, texts, pairing)
        assert float((result.images - images).abs().max()) <= 2 / 255 + 1e-6, name
        assert all(len(change) <= 1 for change in result.info.get("words_changed", [])), name
        assert float(itm(result.images, list(result.texts)).mean()) < float(clean.mean()) - 0.05, name


def test_trained_twin_grounds_above_the_random_box_and_the_attacks_lower_it(grounding_twin, grounding_world_dir,
                                                                              tmp_path):
    """The issue's Done-when on the world: measured 53.0-56.0% on the 168 test expressions with 2+ candidates
    (random box 39.3%; the same recipe on other training data and seeds: 56.5-58.3, README "Grounding"); the
    margin (10 points) is below all. The four attacks that change the expression lower it by 10.7-17.3 points.
    Image-only PGD at eps 2/255 moved it by -1.8 to +4.2 points on five twins of this recipe (with 2 threads on
    busy cores this training is not bit-reproducible, README "Training", so each fresh clone trains a slightly different twin): Grad-CAM's
    localisation barely moves when PGD lowers the match logit, so PGD is held to "not above clean + 6" (an
    expression is 0.6 points of the 2+-candidate accuracy: 6 points are 10 of 168; +4.2 was 7)."""
    from train.cli import main as train_main

    out = tmp_path / "eval"
    assert train_main(["eval", str(grounding_twin), "--task", "grounding", "--source", str(grounding_world_dir),
                       "--split", "test", "--out", str(out)]) == 0  # the default attacks, eps 2/255, one word
    report = _eval_report(out)
    baselines, attacks = report["baselines"], report["attacks"]
    assert baselines["expressions_multi"] > 150 and baselines["random_box_multi"] < baselines["random_box"]
    clean = attacks["clean"]
    assert clean["accuracy_multi"] >= baselines["random_box_multi"] + 10, (clean, baselines)
    assert clean["accuracy"] > baselines["random_box"]
    for name in ("bert-attack", "sep", "co-attack", "sga"):
        assert attacks[name]["accuracy"] < clean["accuracy"] - 3, name
        assert attacks[name]["accuracy_multi"] < clean["accuracy_multi"] - 3, name
    assert attacks["pgd"]["accuracy"] <= clean["accuracy"] + 6 and attacks["pgd"]["accuracy_multi"] <= clean["accuracy_multi"] + 6


def test_counterfactual_pairs_flag_reaches_the_grounding_task(grounding_world_dir, sample_world_dir, tmp_path,
                                                              monkeypatch, capsys):
    from tasks.grounding import GroundingTask
    from train.cli import main as train_main

    seen = []
    prepare = GroundingTask.prepare_training

    def spy(self, data, method):
        seen.append(self.counterfactual_pairs)
        return prepare(self, data, method)

    monkeypatch.setattr(GroundingTask, "prepare_training", spy)
    for flag in ("--counterfactual-pairs", "--no-counterfactual-pairs"):
        assert train_main(["clean", "--task", "grounding", "--model", "tiny-albef", "--train-data",
                           str(grounding_world_dir), "--max-steps", "1", "--batch-size", "4", "--no-progress", flag,
                           "--out", str(tmp_path / flag)]) == 0
    assert seen == [True, False]
    assert train_main(["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--max-steps", "1",
                       "--no-counterfactual-pairs", "--out", str(tmp_path / "retrieval")]) == 2
    assert "--no-counterfactual-pairs applies to --task grounding" in capsys.readouterr().err


def test_the_procedure_names_the_objective_the_attacks_lowered():
    from train.attacks.grounding import GROUNDING_OBJECTIVES
    from train.evaluate_grounding import OBJECTIVE_WORDS, PROCEDURE

    assert set(OBJECTIVE_WORDS) == set(GROUNDING_OBJECTIVES)
    assert "objective (share of the Grad-CAM heat on the true box)" in PROCEDURE.format(objective=OBJECTIVE_WORDS["heat"])


def test_undefined_grounding_rates_are_none_not_zero():
    """No expression correct when clean: the ASR is undefined (retrieval's None), not an attack
    that never succeeds; no expression with two candidates: no accuracy_multi."""
    from train.evaluate_grounding import _accuracy, _asr

    assert _asr([False, False], [False, False]) is None and _accuracy([]) is None
    assert _asr([True, True, False], [False, True, True]) == 50.0 and _accuracy([True, False]) == 50.0


def test_grounding_files_named_but_missing_or_unread_are_one_line(tmp_path):
    """A missing --refs / --instances was skipped (records with their own bbox) or blamed on its
    content ("annotation 70 ... is not in nope.json"); --dets/--refs/--instances on a sample world were
    ignored, even a missing file; a written world object without its box was a KeyError traceback."""
    from augment.referring import load_grounding
    from augment.world.writer import write_sample

    ann = _write_refcoco(tmp_path / "rc")
    for option, flag in (("refs_file", "--refs"), ("instances_file", "--instances")):
        with pytest.raises(SourceError, match=rf"^{flag} {tmp_path / 'nope.json'}: no such file$"):
            load_grounding(ann, image_root=tmp_path / "rc" / "images", **{option: tmp_path / "nope.json"})
    world = write_sample(tmp_path / "world", n=4, seed=2, expressions=1)
    with pytest.raises(SourceError, match=r"^--dets, --refs: read only for an ALBEF RefCOCO\+ JSON source, not the "
                                          r"sample world .*: leave them out$"):
        load_grounding(world, dets_file="d.json", refs_file="r.json")
    dataset = next(world.glob("dataset_*.json"))
    data = json.loads(dataset.read_text())
    del data["images"][1]["objects"][0]["box"]
    dataset.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"images\[1\]: objects\[0\]: needs 'object', 'box' and 'expressions'$"):
        load_grounding(world)


def test_each_batch_of_a_grounding_attack_is_seeded_by_its_own_index(monkeypatch):
    """Guards a mutation (audit BX): a batch's attack seed without the batch's index passed every grounding test;
    every batch's PGD then started from the same noise. Pinned as (seed, attack, batch index), what a resumed batch
    draws again."""
    import train.evaluate_grounding
    from augment.seeds import derive_seed

    seeds = []
    monkeypatch.setattr(train.evaluate_grounding, "reseed_attack", lambda attack, seed: seeds.append(seed))
    train.evaluate_grounding.evaluate_grounding(_ColourGrounder(), world_grounding(seed=5, n=4), attacks=["pgd"],
                                                batch_size=2, attack_options={"steps": 1}, seed=5)
    assert seeds[-2:] == [derive_seed(5, "pgd", 0), derive_seed(5, "pgd", 1)]  # after the clean row's two batches
