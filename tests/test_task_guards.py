"""Guards found by audit CC's mutation audit of the captioning and grounding tasks and the study's task
arms: each test kills a plausible bug that every other test let through.

Expected values are written here by hand, not computed by the code under test; models and attacks are
stubs of a few lines, so each test runs in well under a second.
"""
from __future__ import annotations

import types


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
