"""Visual grounding (issue 15): world expressions, the RefCOCO+ loader, box scoring, evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from augment import sample_world as sw
from augment.errors import SourceError
from augment.referring import load_grounding, load_refcoco, world_grounding
from models.base import TextTokens
from tasks.grounding import box_iou, box_scores, choose_box, ground, oracle_accuracy, random_box_accuracy

# ----------------------------------------------------------------------------- the sample world


def test_world_expressions_single_out_their_object_with_the_drawn_box():
    for index in range(40):
        scene, image, objects = sw.build_grounding_item(3, index)
        assert objects == sw.build_grounding_item(3, index)[2]  # deterministic
        pixels = np.asarray(image)
        for obj in objects:
            assert len(obj["expressions"]) == 3 and len(set(obj["expressions"])) == 3
            assert obj["expressions"][0] == sw.canonical_expression(scene, obj["object"])
            for text in obj["expressions"]:
                assert sw.check_expression(text, scene, obj["object"]) is True, text
                others = [k for k in range(len(scene.objects)) if k != obj["object"]]
                assert all(sw.check_expression(text, scene, k) is False for k in others), text
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
    scene = sw.Scene((sw.SceneObject("circle", "red", "small", "left"), sw.SceneObject("circle", "blue", "small", "right"),
                      sw.SceneObject("square", "green", "large", "centre")))
    assert sw.check_expression(text, scene, target) is expected


def test_world_folder_and_in_memory_forms(tmp_path):
    folder = sw.write_sample(tmp_path / "world", n=8, seed=1, val_frac=0.25, test_frac=0.25)
    data = load_grounding(folder)
    assert len(data.images) == 8 and data.splits() == ["test", "train", "val"]
    test = data.select("test")
    assert {e.split for e in test.expressions} == {"test"} and len(test.images) == 2
    for expression in data.expressions:
        image = data.images[expression.image]
        scene = sw.Scene.from_dict(image.scene)
        assert expression.box == list(map(float, sw.object_box(scene.objects[expression.target])))
        assert expression.box in image.candidates and len(image.candidates) == len(scene.objects)
    assert [e.text for e in load_grounding(folder).expressions] == [e.text for e in data.expressions]
    memory = world_grounding(seed=1, n=3)
    assert [i.scene for i in memory.images] == [i.scene for i in data.images[:3]]


def test_make_sample_with_expressions_is_a_training_source(tmp_path):
    from augment.sources import load_source

    folder = sw.write_sample(tmp_path / "world", n=6, seed=2, val_frac=0.0, test_frac=0.5, expressions=2)
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


def test_refcoco_loader_names_the_bad_record(tmp_path):
    ann = _write_refcoco(tmp_path, bad_ref=True)
    with pytest.raises(SourceError, match=r"refcoco\+_val.json: \[2\]: ref_id 99"):
        load_refcoco(ann, image_root=tmp_path / "images")
    ann.write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(SourceError, match=r"\[0\]: a record needs 'image' and 'text'"):
        load_refcoco(ann)


# ----------------------------------------------------------------------------- box scoring


def test_iou_follows_albefs_inclusive_rule():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0


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
        self.words = {word: k + 1 for k, word in enumerate(sw.COLOURS)}
        colours = torch.tensor([[0.5, 0.5, 0.5], *[[c / 255 for c in rgb] for rgb in sw.COLOURS.values()]]) - 0.5
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
    named = [k for k, e in enumerate(data.expressions) if sum(w in sw.COLOURS for w in e.text.split()) == 1]
    accuracy = 100 * sum(hits[k] for k in named) / len(named)
    assert accuracy > random_box_accuracy([candidates[k] for k in named], [truth[k] for k in named]) + 25


def _one_colour(data):
    return [k for k, e in enumerate(data.expressions) if sum(w in sw.COLOURS for w in e.text.split()) == 1]


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


def test_evaluate_grounding_report_and_truth_checked_rows():
    from train.evaluate_grounding import evaluate_grounding, markdown_grounding_report, world_expression_checker

    data = world_grounding(seed=5, n=8)
    report = evaluate_grounding(_ColourGrounder(), data, attacks=["clean", "pgd", "synonym"],
                                attack_options={"eps": 16 / 255, "steps": 3, "step_size": 6 / 255},
                                expression_checker=world_expression_checker)
    clean, pgd, synonym = (report["attacks"][n] for n in ("clean", "pgd", "synonym"))
    assert clean["accuracy"] > report["baselines"]["random_box"]
    assert 0 <= pgd["asr"] <= 100 and 0 < pgd["linf"] <= 16 / 255 + 1e-6
    judged = synonym["meaning_preserved"]
    assert judged["true"] + judged["false"] + judged["unknown"] == synonym["texts_changed"] > 0
    # an expression made false (another colour) counts as not attacked: never below the raw accuracy
    assert synonym["accuracy_meaning_preserved"] >= synonym["accuracy"]
    table = markdown_grounding_report(report)
    assert "| pgd |" in table and "Random box" in table


def test_eval_command_refuses_a_model_that_cannot_ground(tmp_path, capsys):
    from train.cli import main

    folder = sw.write_sample(tmp_path / "world", n=4, seed=1, val_frac=0.0, test_frac=0.5, expressions=1)
    code = main(["eval", "tiny-clip", "--task", "grounding", "--source", str(folder), "--out", str(tmp_path / "eval")])
    assert code == 2
    assert "needs a model with an ITM head and grounding_heatmap" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
