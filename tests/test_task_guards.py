"""Guards found by audit CC's mutation audit of the captioning and grounding tasks and the study's task
arms: each test kills a plausible bug that every other test let through.

Expected values are written here by hand, not computed by the code under test; models and attacks are
stubs of a few lines, so each test runs in well under a second.
"""
from __future__ import annotations

import types

import pytest
import torch


# ----------------------------------------------------------------------------- the task interface


def test_the_task_forward_hands_each_chunk_its_own_rows_and_fare_unnormalised_embeddings():
    """Guards mutations (audit CC) that passed every test: each chunk's loss given every row's keys or every row's
    texts (the adversarial chunk's texts for the clean chunk too), and FARE's embeddings normalised."""
    from models.base import TextTokens
    from tasks.base import TaskForward

    chunks = []

    def loss(model, pixels, tokens, keys, texts, inspect):
        chunks.append((pixels[:, 0].tolist(), tokens.input_ids[:, 0].tolist(), keys.tolist(), texts))
        return pixels.sum()

    encoded = []

    def encode_image(pixels, normalize=True):
        encoded.append(normalize)
        return pixels

    forward = TaskForward(types.SimpleNamespace(encode_image=encode_image), types.SimpleNamespace(loss=loss))
    pixels = torch.arange(4.0).view(4, 1)
    forward.forward(pixels, TextTokens(torch.arange(4).view(4, 1) + 10), torch.tensor([7, 8, 7, 8]), chunks=2,
                    texts=["adv a", "adv b", "a", "b"])
    assert chunks == [([0.0, 1.0], [10, 11], [7, 8], ["adv a", "adv b"]), ([2.0, 3.0], [12, 13], [7, 8], ["a", "b"])]
    embeddings = forward.forward(pixels, chunks=2, image_embeddings=True)
    assert encoded == [False] and [e.tolist() for e in embeddings] == [[[0.0], [1.0]], [[2.0], [3.0]]]


# ----------------------------------------------------------------------------- captioning


def test_a_captioning_reference_window_moves_by_max_references_a_step():
    """Guards a mutation (audit CC): the window starting at the step (mod the candidates) instead of at step x
    max_references passed every test; each step then scored 3 of the previous step's 4 extra references."""
    from tasks.captioning import CaptioningTask

    task = CaptioningTask(max_references=4)
    candidates = ["c0", "c1", "c2", "c3", "c4", "c5"]
    task.on_step(None, 1, 10)
    assert task.reference_window(candidates) == ["c4", "c5", "c0", "c1"]
    task.on_step(None, 2, 10)
    assert task.reference_window(candidates) == ["c2", "c3", "c4", "c5"]


def test_only_mat_plus_scores_the_reference_table_and_it_does_with_the_default_number_of_extras():
    """Guards two mutations (audit CC) that passed every test: `set_references` without a count keeping
    max_references 0 (MAT+'s table set but never scored), and `prepare_training` setting the table for mat too
    (mat then scored every source caption of an image, not the batch's)."""
    from tasks.captioning import CaptioningTask

    data = types.SimpleNamespace(captions=[["a red circle", "a circle"], ["a blue square"]], pools=[])
    plus = CaptioningTask()
    plus.prepare_training(data, "mat+")
    assert plus.reference_table == [["a red circle", "a circle"], ["a blue square"]]
    assert plus.max_references == CaptioningTask.POOL_REFERENCES
    for method in ("clean", "tecoa", "mat"):
        task = CaptioningTask()
        task.prepare_training(data, method)
        assert task.reference_table is None and task.max_references == 0, method


def test_the_captioning_text_attack_takes_the_configs_candidates_top_k_and_masked_lm(monkeypatch):
    """Guards mutations (audit CC) that passed every test: MAT's reference-caption attack built with the MLM's
    candidates whatever --text-candidates said, with top_k 10 whatever --top-k said, or with the default masked LM
    whatever --mlm said."""
    import train.attacks.captioning as captioning_attacks
    from tasks.captioning import CaptioningTask

    built = []
    monkeypatch.setattr(captioning_attacks, "ReferenceTextAttack", lambda model, **options: built.append(options))
    task = CaptioningTask()
    task.text_attack(None, types.SimpleNamespace(word_budget=2, text_candidates="wordnet", mlm=None, top_k=3))
    task.text_attack(None, types.SimpleNamespace(word_budget=1, text_candidates="mlm", mlm="tiny-mlm", top_k=7))
    assert built == [{"budget": 2, "candidates": "wordnet", "mlm": "default", "top_k": 3},
                     {"budget": 1, "candidates": "mlm", "mlm": "tiny-mlm", "top_k": 7}]


# ----------------------------------------------------------------------------- grounding


def test_grounding_itm_draws_image_negatives_by_text_and_labels_every_pair_image_by_text(monkeypatch):
    """Guards three mutations (audit CC) that passed every test, all with positives that are not symmetric (the
    checker's true pairs, image row x text row): the image negatives drawn against the positives untransposed, the
    negatives' labels read text x image, and the counterfactual images paired with the first rows' expressions
    instead of their own rows'."""
    import torch.nn.functional as F

    import tasks.grounding as grounding
    from models.base import EncoderOutput, TextTokens

    # a stand-in for the softmax draw: each row's first non-positive column (column 0 when every one is positive)
    monkeypatch.setattr(grounding, "hard_negatives", lambda similarity, positives: (positives == 0).float().argmax(1))
    positives = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 1]])  # image 1 holds what text 0 names too; ...
    true = {(i, j) for i in range(3) for j in range(3) if positives[i, j]} | {(4, 0)}  # images 3, 4: edits
    scored = []

    class Matcher:  # image row r's features are all r, text row r's ids all r; match logit +5 where true, else -5
        def image_features(self, pixels):
            return pixels

        def itm_logits(self, features, tokens):
            pairs = list(zip(features[:, 0, 0].long().tolist(), tokens.input_ids[:, 0].tolist()))
            scored.extend(pairs)
            return torch.tensor([5.0 if pair in true else -5.0 for pair in pairs])

    features = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 4)
    output = EncoderOutput(torch.ones(3, 4), torch.ones(3, 4), torch.tensor(10.0), image_features=features)
    tokens = TextTokens(torch.arange(3).view(3, 1).expand(3, 4))
    counterfactuals = (torch.tensor([2, 0]), torch.tensor([3.0, 4.0]).view(2, 1, 1).expand(2, 2, 4),
                       torch.tensor([0.0, 1.0]))  # text 2 with edit 3 (false), text 0 with edit 4 (true)
    loss = grounding.grounding_itm_loss(Matcher(), output, tokens, positives, counterfactuals)
    # the matches; each image with its first non-positive text; each text with its first non-positive image
    assert scored == [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0), (2, 0), (0, 1), (0, 2), (3, 2), (4, 0)]
    assert float(loss) == pytest.approx(float(F.softplus(torch.tensor(-5.0))), rel=1e-5)  # every label right


def test_true_counterfactual_edits_of_an_object_listed_before_the_target_keep_every_kind():
    """Guards a mutation (audit CC): the target's index shifted down for every edit of an earlier object, not only
    for its removal, passed every test (their scene's target was its first object); recoloured, reshaped and
    resized earlier objects were then all dropped from the true edits. Also pins README's default of counterfactual
    pairs on every second row."""
    from augment.world.scene import Scene, SceneObject
    from augment.world.truth import referents
    from tasks.grounding import GroundingTask, counterfactual_scenes

    scene = Scene((SceneObject("square", "blue", "small", "left"), SceneObject("circle", "red", "small", "right"),
                   SceneObject("star", "green", "large", "centre")), "noisy", 7)
    false, true = counterfactual_scenes("the red circle", scene)
    assert len(true) == 8  # each of the two other objects: removed, recoloured, reshaped, resized
    assert [len(group[0].objects) for group in true] == [2, 3, 3, 3, 2, 3, 3, 3]
    for group in true:
        for edited in group:
            [index] = referents("the red circle", edited)
            assert edited.objects[index] == scene.objects[1]
    assert GroundingTask().counterfactual_every == 2


def test_the_grounding_text_attack_takes_the_configs_candidates_top_k_budget_and_masked_lm(monkeypatch):
    """Guards mutations (audit CC) that passed every test: grounding's MAT word attack always bert-attack whatever
    --text-candidates said, and its word budget read from --top-k."""
    import train.attacks.grounding as grounding_attacks
    from tasks.grounding import GroundingTask

    built = []
    monkeypatch.setattr(grounding_attacks, "build_grounding_attack",
                        lambda name, model, **options: built.append((name, options)))
    task = GroundingTask()
    task.text_attack(None, types.SimpleNamespace(word_budget=2, text_candidates="wordnet", top_k=5, mlm=None))
    task.text_attack(None, types.SimpleNamespace(word_budget=1, text_candidates="mlm", top_k=3, mlm="tiny-mlm"))
    assert built == [("synonym", {"top_k": 5, "budget": 2}),
                     ("bert-attack", {"top_k": 3, "budget": 1, "mlm": "tiny-mlm"})]


def test_grounding_keeps_a_familys_own_itc_loss_and_weighs_itm_by_the_tasks_weight(monkeypatch):
    """Guards two mutations (audit CC) that passed every test: the family's own ITC loss (ALBEF's momentum
    distillation) replaced by the multi-positive softmax, and the ITM term added without `itm_weight`; at weight 0
    no ITM work at all."""
    import tasks.grounding as grounding
    from models.base import EncoderOutput, TextTokens

    own = []
    monkeypatch.setattr(grounding, "itc_loss", lambda model, output, keys, task: own.append(keys.tolist())
                        or torch.tensor(2.0))
    monkeypatch.setattr(grounding, "softmax_itc_loss", lambda logits, positives: torch.tensor(100.0))
    monkeypatch.setattr(grounding, "grounding_itm_loss", lambda *args: torch.tensor(4.0))

    class Distilled:
        itc_loss = "momentum-distilled"

        def __call__(self, pixels, tokens, image_features=False):
            return EncoderOutput(torch.eye(2), torch.eye(2), torch.tensor(1.0), image_features=torch.zeros(2, 1, 2))

    task = grounding.GroundingTask(itm_weight=0.5)
    loss = task.loss(Distilled(), torch.zeros(2, 3, 2, 2), TextTokens(torch.zeros(2, 1, dtype=torch.long)),
                     torch.tensor([0, 1]), ["a star", "a circle"])
    assert float(loss) == pytest.approx(2.0 + 0.5 * 4.0) and own == [[0, 1]]

    # no ITM term at weight 0, as retrieval: neither its loss nor the counterfactual scenes it would read are made
    task = grounding.GroundingTask(itm_weight=0.0)
    monkeypatch.setattr(grounding, "grounding_itm_loss", lambda *args: pytest.fail("ITM computed at weight 0"))
    monkeypatch.setattr(task, "counterfactual_pixels", lambda *args: pytest.fail("scenes rendered at weight 0"))
    loss = task.loss(Distilled(), torch.zeros(2, 3, 2, 2), TextTokens(torch.zeros(2, 1, dtype=torch.long)),
                     torch.tensor([0, 1]), ["a star", "a circle"])
    assert float(loss) == pytest.approx(2.0)


def test_grounding_checks_keep_the_latest_size_entries_and_a_new_training_set_starts_afresh():
    """Guards two mutations (audit CC) that passed every test: the bounded cache dropping its oldest entry one
    entry early (it held size - 1), and `prepare_training` keeping the verdicts of another training set, whose
    rows (keys) are other scenes."""
    import json

    from augment.world.scene import Scene, SceneObject
    from tasks.grounding import FirstInFirstOut, GroundingTask

    kept = FirstInFirstOut(2)
    for key in "abc":
        assert kept.kept(key, lambda: key.upper()) == key.upper()
    assert list(kept.items()) == [("b", "B"), ("c", "C")]

    class Rows(dict):
        column_names = ("meta",)

    def data(shape):
        scene = Scene((SceneObject(shape, "red", "small", "left"),))
        return types.SimpleNamespace(train=Rows(meta=[json.dumps({"scene": scene.to_dict(), "objects": []})]))

    task = GroundingTask()
    task.prepare_training(data("star"), "clean")
    assert task.true_pairs(torch.tensor([0]), ["the star"]).tolist() == [[1.0]]
    task.prepare_training(data("circle"), "clean")
    assert task.true_pairs(torch.tensor([0]), ["the star"]).tolist() == [[0.0]]



def _counterfactual_task(monkeypatch, scenes) -> tuple:
    """(a grounding task pairing every row with counterfactuals of `scenes`, a model stand-in, the list of scenes
    it renders, in order): the scenes themselves stand in for their images."""
    import json

    import augment.world.render as render
    from tasks.grounding import GroundingTask, scenes_of_rows

    drawn = []
    monkeypatch.setattr(render, "render_scene", lambda scene: drawn.append(scene) or scene)
    task = GroundingTask(counterfactual_every=1)
    task.scenes = scenes_of_rows([json.dumps({"scene": scene.to_dict()}) for scene in scenes])
    return task, types.SimpleNamespace(preprocess_eval=lambda image: torch.zeros(3, 2, 2)), drawn


def test_counterfactual_pairs_draw_every_kind_of_edit_and_every_edit_of_a_kind(monkeypatch):
    """Guards two mutations (audit CC) that passed every test: the counterfactual draw always taking the first
    kind of edit (every false image the referred object removed, never recoloured or reshaped), or the first edit
    of the kind drawn (every recolouring the same colour)."""
    from augment.world.scene import Scene, SceneObject

    scene = Scene((SceneObject("circle", "red", "small", "left"), SceneObject("square", "blue", "small", "right")))
    task, model, drawn = _counterfactual_task(monkeypatch, [scene])
    torch.manual_seed(0)
    for _ in range(40):
        task.counterfactual_pixels(model, torch.tensor([0]), ["the red circle"])
    false = drawn[::2]  # each call draws a false edit, then a true one
    kinds = {"removed" if len(s.objects) == 1 else "colour" if s.objects[0].colour != "red" else "shape"
             for s in false}
    assert kinds == {"removed", "colour", "shape"}
    assert len({s.objects[0].colour for s in false if len(s.objects) == 2 and s.objects[0].colour != "red"}) > 1


def test_counterfactual_edits_are_kept_per_image_and_expression_not_per_expression(monkeypatch):
    """Guards a mutation (audit CC) that passed every test: the kept counterfactual edits keyed by the expression
    alone, so a second image with the same expression ("the red circle") was paired with the first image's edits."""
    from augment.world.scene import Scene, SceneObject

    scenes = [Scene((SceneObject("circle", "red", "small", "left"), SceneObject("square", "blue", "small", "right"))),
              Scene((SceneObject("circle", "red", "small", "top"), SceneObject("star", "green", "large", "centre")))]
    task, model, drawn = _counterfactual_task(monkeypatch, scenes)
    rows, _, _ = task.counterfactual_pixels(model, torch.tensor([0, 1]), ["the red circle", "the red circle"])
    positions = [{obj.position for obj in scene.objects} for scene in drawn]
    assert rows.tolist() == [0, 0, 1, 1]
    assert all(p <= {"left", "right"} for p in positions[:2]) and all(p <= {"top", "centre"} for p in positions[2:])


# ----------------------------------------------------------------------------- the study's task arms


def _evaluated_by_arm(monkeypatch, arm, evaluation: str, loaded: list, settings: dict) -> dict:
    """What `arm.evaluate_checkpoint(...)` hands its loader and evaluation (stubs record the calls; nothing runs)."""
    import importlib

    import models

    calls = {}
    monkeypatch.setattr(models, "load_model", lambda name, **options: calls.setdefault("load", (name, options)))
    for module, name, value in loaded:
        monkeypatch.setattr(importlib.import_module(module), name, value)
    monkeypatch.setattr(importlib.import_module(f"train.{evaluation}"), evaluation,
                        lambda model, data, **options: calls.setdefault("evaluate", options) and {"settings": {}})
    monkeypatch.setattr(arm, "write_report", lambda report, folder: calls.setdefault("written", (report, folder)))
    calls["report"] = arm.evaluate_checkpoint("ckpt", "world", settings, seed=11, folder="out", device="meta")
    return calls


def test_the_captioning_arm_evaluates_with_the_studys_eval_settings(monkeypatch):
    """Guards mutations (audit CC) that passed every test, each an eval setting the study's captioning arm
    dropped for the default: pgd_step_size, captions_per_image, min_length, target, prompt."""
    from analysis import captioning_arm as arm

    loaded = [("augment.sources", "load_source", lambda folder: ("source", None))]
    settings = {"split": "val", "limit": 5, "batch_size": 7, "captions_per_image": 2, "attacks": ["clean", "pgd"],
                "attack_eps": "8/255", "pgd_steps": 3, "pgd_step_size": "1/255", "target": "a red star",
                "prompt": "a picture of", "min_length": 3, "mlm": "tiny-mlm", "meteor": False}
    calls = _evaluated_by_arm(monkeypatch, arm, "evaluate_captioning", loaded, settings)
    assert calls["load"] == ("ckpt", {"kind": "captioning", "prompt": "a picture of", "device": "meta"})
    options = calls["evaluate"]
    assert {k: options[k] for k in ("split", "attacks", "batch_size", "captions_per_image", "limit", "generation",
                                    "meteor", "seed")} == {
        "split": "val", "attacks": ["clean", "pgd"], "batch_size": 7, "captions_per_image": 2, "limit": 5,
        "generation": {"min_length": 3}, "meteor": False, "seed": 11}
    assert options["attack_options"] == {"eps": pytest.approx(8 / 255), "steps": 3, "step_size": pytest.approx(1 / 255),
                                         "target": "a red star", "mlm": "tiny-mlm"}
    assert calls["written"] == (calls["report"], "out")
    defaults = _evaluated_by_arm(monkeypatch, arm, "evaluate_captioning", loaded, {})["evaluate"]
    assert defaults["attack_options"]["step_size"] == pytest.approx(0.5 / 255)  # attack_eps 2/255 over 4


def test_the_captioning_headline_is_robust_under_pgd_or_clean_without_it():
    """Guards mutations (audit CC) that passed every test: the robust truth share read from the clean row (the
    arm's test had equal shares), and the headline attack taken as pgd even when the study did not run it."""
    from analysis import captioning_arm as arm

    clean = {"cider": 50.0, "truth": {"true_pct": 80.0}}
    report = {"attacks": {"clean": clean, "pgd": {"cider": 20.0, "truth": {"true_pct": 30.0}},
                          "pgd-targeted": {"cider": 10.0, "truth": {"true_pct": 5.0}}}}
    assert arm.headline(report) == {"metric": "CIDEr", "clean": 50.0, "robust": 20.0, "attack": "pgd",
                                    "clean_true_pct": 80.0, "robust_true_pct": 30.0}
    without = arm.headline({"attacks": {"clean": clean, "pgd-targeted": report["attacks"]["pgd-targeted"]}})
    assert (without["attack"], without["robust"], without["robust_true_pct"]) == ("clean", 50.0, 80.0)


def test_the_grounding_arm_evaluates_with_the_studys_eval_settings(monkeypatch):
    """Guards mutations (audit CC) that passed every test, each an eval setting the study's grounding arm dropped
    or read from the wrong key: pgd_step_size, word_budget, mlm, objective, limit, the seed."""
    from analysis import grounding_arm as arm

    selected = []
    world = types.SimpleNamespace(select=lambda split, limit: selected.append((split, limit)) or "selected")
    loaded = [("augment.referring", "load_grounding", lambda folder: world)]
    settings = {"split": "val", "limit": 6, "batch_size": 3, "attacks": ["clean", "sga"], "attack_eps": "8/255",
                "pgd_steps": 5, "pgd_step_size": "1/255", "mlm": "world-mlm", "top_k": 7, "word_budget": 2,
                "objective": "heat"}
    calls = _evaluated_by_arm(monkeypatch, arm, "evaluate_grounding", loaded, settings)
    assert calls["load"] == ("ckpt", {"device": "meta"}) and selected == [("val", 6)]
    options = calls["evaluate"]
    assert (options["attacks"], options["batch_size"], options["seed"]) == (["clean", "sga"], 3, 11)
    assert options["attack_options"] == {"objective": "heat", "eps": pytest.approx(8 / 255), "steps": 5,
                                         "step_size": pytest.approx(1 / 255), "mlm": "world-mlm", "top_k": 7,
                                         "budget": 2, "seed": 11}
    assert calls["report"]["settings"] == {"source": "world", "split": "val", "checkpoint": "ckpt",
                                           "command": "analysis study (grounding arm)"}


def test_the_grounding_headline_reads_each_number_from_its_own_field():
    """Guards mutations (audit CC) that passed every test: the oracle ceiling given the random-box baseline, and
    the robust accuracy taken from all attacked expressions instead of the meaning-preserving ones."""
    from analysis import grounding_arm as arm

    report = {"attacks": {"clean": {"accuracy": 60.0}, "sga": {"accuracy": 20.0, "accuracy_meaning_preserved": 35.0}},
              "baselines": {"random_box": 25.0, "oracle": 95.0}}
    assert arm.headline(report) == {"metric": "accuracy", "clean": 60.0, "robust": 35.0, "attack": "sga",
                                    "robust_all": 20.0, "random_box": 25.0, "oracle": 95.0}


def test_each_arm_writes_the_world_of_the_studys_size_and_seed(monkeypatch, tmp_path):
    """Guards a mutation (audit CC) that passed every test: the captioning arm writing its world with seed 0
    whatever the study's world.seed (the end-to-end captioning study uses seed 0)."""
    import augment.world.writer as writer
    from analysis import captioning_arm, grounding_arm

    written = []
    monkeypatch.setattr(writer, "write_sample", lambda folder, **options: written.append((folder, options)))
    captioning_arm.write_world(tmp_path, 12, 5)
    grounding_arm.write_world(tmp_path, 8, 3)
    assert written == [(tmp_path, {"n": 12, "seed": 5}), (tmp_path, {"n": 8, "seed": 3, "expressions": 2})]


def test_an_arm_whose_own_import_fails_shows_that_error_and_an_incomplete_arm_is_named(monkeypatch, tmp_path):
    """Guards two mutations (audit CC) that passed every test: a missing module that an existing arm imports
    reported as the arm itself missing from the installation, and an arm lacking a name the study calls loaded
    (it failed later, after training, on the missing name)."""
    import sys

    from analysis import task_arms
    from augment.errors import MatPlusError

    (tmp_path / "arm_with_a_missing_dependency.py").write_text("import no_such_dependency_of_the_arm\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(task_arms.TASK_ARMS, "grounding", "arm_with_a_missing_dependency")
    with pytest.raises(ModuleNotFoundError) as error:
        task_arms.load_arm("grounding")
    assert error.value.name == "no_such_dependency_of_the_arm"
    incomplete = types.ModuleType("incomplete_arm")
    for name in task_arms.ARM_NAMES[:-1]:
        setattr(incomplete, name, None)
    monkeypatch.setitem(sys.modules, "incomplete_arm", incomplete)
    monkeypatch.setitem(task_arms.TASK_ARMS, "grounding", "incomplete_arm")
    with pytest.raises(MatPlusError, match=r"task 'grounding': incomplete_arm lacks headline$"):
        task_arms.load_arm("grounding")
