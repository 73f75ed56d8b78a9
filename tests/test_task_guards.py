"""Guards found by audit CC's mutation audit of the captioning and grounding tasks and the study's task
arms: each test kills a plausible bug that every other test let through.

Expected values are written here by hand, not computed by the code under test; models and attacks are
stubs of a few lines, so each test runs in well under a second.
"""
from __future__ import annotations


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

