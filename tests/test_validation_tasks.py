"""--val-frequency for the captioning and grounding tasks: each validates by its own evaluation
(robust CIDEr, robust grounding accuracy), keeps the best weights, and trains the same weights as a
run without validation. Retrieval's validation is tested in test_trainer.py and test_resume_validation.py."""
from __future__ import annotations

import json

import pytest


def _train(argv: list[str]) -> int:
    from train.cli import main

    return main(argv)


def _curve(run) -> list[dict]:
    return [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]


def test_captioning_validates_by_robust_cider(tmp_path, sample_world_dir, monkeypatch, capsys):
    from models import load_model
    from train.run_log import MetricsLog

    import train.evaluate_captioning

    reported, segmented = [], []
    monkeypatch.setattr(MetricsLog, "report", lambda self, step, scalars: reported.append((step, scalars)))
    scores_of_sets = train.evaluate_captioning.caption_scores_of_sets
    monkeypatch.setattr(train.evaluate_captioning, "caption_scores_of_sets",
                        lambda *a, **k: segmented.append(k["segment"]) or scores_of_sets(*a, **k))
    common = ["tecoa", "--task", "captioning", "--model", "tiny-captioner", "--train-data", str(sample_world_dir),
              "--max-steps", "2", "--batch-size", "8", "--pgd-steps", "1", "--no-progress"]
    run, plain = tmp_path / "validated", tmp_path / "plain"
    assert _train([*common, "--val-frequency", "1", "--val-limit", "2", "--val-attack", "pgd", "--out", str(run),
                   "--val-segment-cjk", "chars"]) == 0
    out, err = capsys.readouterr()
    curve = _curve(run)
    assert [(line["step"], line["metric"], line["attack"]) for line in curve] == [(0, "CIDEr", "pgd"), (2, "CIDEr", "pgd")]
    # --val-segment-cjk reaches CIDEr (train eval's --segment-cjk) and every line records it
    assert segmented == ["chars", "chars"] and {line["settings"]["segment_cjk"] for line in curve} == {"chars"}
    assert all(line["robust"] >= 0 and line["clean"] >= 0 for line in curve)
    assert curve[0]["settings"]["captions_per_image"] is None  # CIDEr reads every reference of an image
    # the sample world's truth checker judges the attacked captions, as train eval's does (it was always null)
    assert all(0 <= line["true_pct"] <= 100 for line in curve)
    assert [line.split(":")[0].strip() for line in err.splitlines() if "val robust CIDEr" in line] == ["step    0", "step    2"]
    best = json.loads((run / "best" / "validation.json").read_text())
    assert f"validation (pgd): best robust CIDEr {best['robust']:.1f} at step {best['step']}" in out
    assert [step for step, _ in reported] == [0, 2]
    assert reported[-1][1] == {"val/robust_cider": curve[-1]["robust"], "val/clean_cider": curve[-1]["clean"]}
    assert load_model(str(run / "best"), kind="captioning").family == "captioner"
    # validation evaluates a copy: the run trains the weights a run without it trains
    assert _train([*common, "--out", str(plain)]) == 0
    assert (run / "ckpt" / "model.safetensors").read_bytes() == (plain / "ckpt" / "model.safetensors").read_bytes()
    # the captioning attacks' names, not retrieval's
    assert _train([*common, "--val-frequency", "1", "--val-attack", "sga", "--out", str(tmp_path / "x")]) == 2
    assert "unknown --val-attack 'sga' for --task captioning; expected one of ['clean', 'pgd', 'pgd-targeted'" in \
        capsys.readouterr().err
    # a prompt attack on a captioner without a prompt: one line before training (it was a traceback at step 0)
    assert _train([*common, "--val-frequency", "1", "--val-attack", "prompt", "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--val-attack prompt attacks the captioner's prompt; tiny-captioner has none: pass --prompt TEXT, or choose "
        "another --val-attack")
    assert not (tmp_path / "y").exists()  # nothing written
    # retrieval's R@1 reads no caption text's segmentation: refused rather than recorded as if read
    assert _train([*common[:2], "retrieval", "--model", "tiny-clip", *common[5:], "--val-frequency", "1",
                   "--val-segment-cjk", "chars", "--out", str(tmp_path / "w")]) == 2
    assert "--val-segment-cjk is not read without --val-frequency or outside --task captioning" in capsys.readouterr().err
    # one image's CIDEr is 0 whatever the caption: validation would select on a constant
    assert _train([*common, "--val-frequency", "1", "--val-limit", "1", "--out", str(tmp_path / "z")]) == 2
    assert "--val-limit 1: captioning validation selects by CIDEr, which is 0 for any caption of a single image" in \
        capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_grounding_validates_by_robust_accuracy_on_the_splits_boxes(tmp_path, grounding_world_dir, capsys):
    from models import load_model

    common = ["clean", "--task", "grounding", "--model", "tiny-albef", "--train-data", str(grounding_world_dir),
              "--max-steps", "2", "--batch-size", "8", "--no-progress"]
    run, plain = tmp_path / "validated", tmp_path / "plain"
    assert _train([*common, "--val-frequency", "1", "--val-limit", "2", "--val-attack", "pgd", "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    curve = _curve(run)
    assert [(line["step"], line["metric"]) for line in curve] == [(0, "accuracy"), (2, "accuracy")]
    assert all(0 <= line["robust"] <= 100 and 0 <= line["clean"] <= 100 for line in curve)
    assert len(curve[0]["settings"]["data"]) == 64  # the split's images, boxes and expressions, by digest
    assert "val robust accuracy" in err and "validation (pgd): best robust accuracy" in out
    assert load_model(str(run / "best")).family == "albef"
    assert _train([*common, "--out", str(plain)]) == 0
    assert (run / "ckpt" / "albef_model.safetensors").read_bytes() == (plain / "ckpt" / "albef_model.safetensors").read_bytes()
    # a split without expressions: one line before anything is trained
    assert _train([*common, "--val-frequency", "1", "--val-split", "testB", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"validation (--val-frequency): no referring expressions in split 'testB' of {grounding_world_dir}; "
        "choose another with --val-split or --val-data")
    assert not (tmp_path / "x" / "ckpt").exists()


@pytest.mark.parametrize("task, metric", [("retrieval", "R@1"), ("captioning", "CIDEr"), ("grounding", "accuracy")])
def test_summary_line_names_the_tasks_metric(task, metric):
    from train.trainer import _summary_line

    line = {"step": 4, "robust": 12.5, "clean": 20.0, "attack": "pgd", "metric": metric}
    summary = {"method": "mat", "steps": 4, "final": {"loss": 1.0}, "pool_draws": {"original": 8}, "checkpoint": "RUN/ckpt",
               "validation": {"best": line, "last": line, "best_weights": "RUN/best"}}
    assert f"validation (pgd): best robust {metric} 12.5 at step 4 (clean 20.0)" in _summary_line(summary)
    del line["metric"]  # a line written before the other tasks validated
    assert "best robust R@1 12.5" in _summary_line(summary)
