"""`analysis compare` names each evaluation by a label no other one shares, and tells models apart by
what the evaluation recorded of them, not by a name two models can share (audit BQ)."""
from __future__ import annotations

import json
from pathlib import Path

from analysis.cli import compare_table, find_evaluations, transfer_tables


def _report(victim: str, attacker: str | None = None, **settings) -> dict:
    entry = lambda name: {"family": "clip", "name": name, "pretrained": None, "tiny_twin": None}  # noqa: E731
    return {"victim": entry(victim), "attacker": entry(attacker or victim),
            "settings": {"mode": "transfer" if attacker else "white-box", **settings},
            "attacks": {"clean": {"tr@1": 80.0, "ir@1": 70.0, "rsum": 400.0},
                        "pgd": {"tr@1": 10.0, "ir@1": 20.0}}}


def _write(folder, report) -> None:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(report))


def test_folders_of_one_name_get_distinct_stable_labels(tmp_path):
    """Five evaluations each in a folder called `done` were five rows labelled `done`."""
    for study in "abcde":
        _write(tmp_path / f"study-{study}" / "evals" / "done", _report(f"{study}/ckpt"))
    _write(tmp_path / "other" / "mat-s0", _report("x/ckpt"))
    folders = [str(tmp_path / f"study-{s}" / "evals" / "done") for s in "abcde"] + [str(tmp_path / "other")]
    labels = [label for label, _ in find_evaluations(folders)]
    assert labels == [f"study-{s}/evals/done" for s in "abcde"] + ["mat-s0"]
    rows = [line.split(" | ")[0] for line in compare_table(find_evaluations(folders)).splitlines()[2:]]
    assert rows == [f"| study-{s}/evals/done" for s in "abcde"] + ["| mat-s0"]
    # a label depends on the evaluations that share its name, not on the others given beside it
    assert [label for label, _ in find_evaluations(folders[:2])] == ["study-a/evals/done", "study-b/evals/done"]
    # one evaluation named twice (its folder and its eval.json) is one row
    again = find_evaluations([folders[0], folders[0] + "/eval.json"])
    assert [label for label, _ in again] == ["done"]


def test_models_of_one_name_in_two_places_are_two_models(tmp_path):
    """Two study folders' checkpoints given by the same relative path (`runs/mat/ckpt`) were one model
    in the transfer table: the white-box numbers of both in one cell, named as one source and target."""
    evaluations = []
    for study in ("a", "b"):
        place = str(tmp_path / study / "runs" / "mat" / "ckpt")
        evaluations += [(f"{study}-white", _report("runs/mat/ckpt", checkpoint_path=place, checkpoint_step=20)),
                        (f"{study}-from-twin", _report("runs/mat/ckpt", "tiny-clip", checkpoint_path=place,
                                                                checkpoint_step=20))]
    lines = transfer_tables(evaluations).splitlines()
    a, b = "runs/mat/ckpt (in a/runs/mat/ckpt)", "runs/mat/ckpt (in b/runs/mat/ckpt)"
    assert lines[2] == f"| source \\ target | {a} | {b} |"
    assert f"| {a} | 15.0 | - |" in lines and f"| {b} | - | 15.0 |" in lines
    assert "| tiny-clip | 15.0 | 15.0 |" in lines
    assert not any("evaluations, in this order" in line for line in lines)  # no cell measured twice
    # one model (the same place and step) evaluated twice is still one cell, both numbers shown
    twice = transfer_tables(evaluations[:2] + [("a-again", evaluations[0][1])])
    assert "2 evaluations, in this order: a-white, a-again" in twice
    # the same folder at two training steps: two models, told apart by the step
    steps = transfer_tables([("s20", evaluations[0][1]),
                             ("s40", _report("runs/mat/ckpt", checkpoint_path=str(tmp_path / "a" / "runs" / "mat" / "ckpt"),
                                             checkpoint_step=40))])
    assert "| runs/mat/ckpt (step 20) | 15.0 | - |" in steps.splitlines()


def test_an_evaluation_records_the_folder_of_its_checkpoint(tmp_path):
    from train.eval_common import record_checkpoint_steps

    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    report = {"settings": {}}
    record_checkpoint_steps(report, 7, None, str(tmp_path / "run" / "ckpt" / ".." / "ckpt"), "tiny-clip")
    assert report["settings"] == {"checkpoint_step": 7, "checkpoint_path": str((tmp_path / "run" / "ckpt").resolve())}


def test_a_moved_study_records_where_its_checkpoints_are_now(tmp_path, monkeypatch):
    """A study moved and run again with the same relative --out from elsewhere reuses its evaluations, whose
    names (relative) hold, but whose checkpoint_path was the old place's: rewritten, as the names are."""
    from analysis.study import renamed_checkpoint

    checkpoint = tmp_path / "b" / "study" / "runs" / "mat-s0" / "ckpt"
    checkpoint.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "b")  # the study's --out, `study`, given from its new place
    named = "study/runs/mat-s0/ckpt"
    report = {"victim": {"name": named}, "attacker": {"name": named}, "attacks": {},
              "settings": {"checkpoint_path": str(tmp_path / "a" / "study" / "runs" / "mat-s0" / "ckpt")}}
    written = []
    renamed = renamed_checkpoint(report, Path(named), Path("study"), tmp_path, lambda r, folder: written.append(r))
    assert renamed["settings"]["checkpoint_path"] == str(checkpoint.resolve())
    assert renamed["victim"]["name"] == named and len(written) == 1
    assert renamed_checkpoint(renamed, Path(named), Path("study"), tmp_path, written.append) is renamed
    assert len(written) == 1  # nothing stale: not written again


def test_a_study_records_the_folder_of_an_evaluation_it_reuses_from_before_the_key(tmp_path, monkeypatch):
    """was: an eval.json the study wrote before settings.checkpoint_path (ad519a0) was reused without it at every
    run again, though the study knows its checkpoint: two studies' `runs/mat-s0/ckpt`, named alike (relative
    --out) at one step, stayed one model in `analysis compare`'s transfer tables. Recorded as a fresh one is."""
    from analysis.study import renamed_checkpoint

    checkpoint = tmp_path / "study" / "runs" / "mat-s0" / "ckpt"
    checkpoint.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    named = "study/runs/mat-s0/ckpt"
    report = {"victim": {"name": named}, "attacker": {"name": named}, "attacks": {}, "settings": {"checkpoint_step": 2}}
    written = []
    renamed = renamed_checkpoint(report, Path(named), Path("study"), tmp_path, lambda r, folder: written.append(r))
    assert renamed["settings"] == {"checkpoint_step": 2, "checkpoint_path": str(checkpoint.resolve())}
    assert len(written) == 1 and written[0]["settings"]["checkpoint_path"] == str(checkpoint.resolve())


def test_an_evaluation_file_beside_a_folder_of_its_name_gets_its_own_label(tmp_path):
    """was: `x/mat.json` (an eval.json kept under another name) and `x/mat/eval.json` were both placed at `x/mat`,
    so no depth told them apart: two rows labelled with the same full path."""
    _write(tmp_path / "x" / "mat", _report("a/ckpt"))
    (tmp_path / "x" / "mat.json").write_text(json.dumps(_report("b/ckpt")))
    labels = [label for label, _ in find_evaluations([str(tmp_path / "x" / "mat"), str(tmp_path / "x" / "mat.json")])]
    assert labels == ["mat", "mat.json"]
    # alone, or beside other names, a file is still labelled by its stem
    assert [label for label, _ in find_evaluations([str(tmp_path / "x" / "mat.json")])] == ["mat"]
