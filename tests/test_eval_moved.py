"""A killed `train eval` moved with its source (the user `mv`s the project folder) resumes: the resume
tag's image files are recorded relative to the source's folder, as a pool's score key holds them; an
image replaced in place still stops it, and the refusal names the image files, not an earlier version
(audit BQ)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.test_eval_store_fixes import _Record, eval_args, one_line_error


def _killed_eval(world, out, monkeypatch) -> None:
    import train.eval_report
    from train.cli import main

    with monkeypatch.context() as patch:
        patch.setattr(train.eval_report, "write_report", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(eval_args(world, out)) != 0  # the CLI's "interrupted" line
    assert (out / ".progress" / "pgd" / "summary.json").is_file()


def test_a_killed_evaluation_moved_with_its_source_resumes(sample_world_dir, tmp_path, monkeypatch, capsys):
    """Refused before with 'differ: images': the tag held each image's absolute path."""
    from train.cli import main

    shutil.copytree(sample_world_dir, tmp_path / "project" / "world")
    _killed_eval(tmp_path / "project" / "world", tmp_path / "project" / "out", monkeypatch)
    _killed_eval(tmp_path / "project" / "world", tmp_path / "project" / "edited", monkeypatch)
    os.rename(tmp_path / "project", tmp_path / "moved")  # `mv`: the files keep their times
    capsys.readouterr()
    moved = tmp_path / "moved"
    assert main(eval_args(moved / "world", moved / "out")) == 0
    assert "resuming from" in capsys.readouterr().err
    assert (moved / "out" / "eval.json").is_file()
    # an image replaced in place (its times are not the kept batches') still counts as a change
    images = sorted(p for p in (moved / "world").rglob("*.png"))
    for image in images:
        image.write_bytes(image.read_bytes())
    assert main(eval_args(moved / "world", moved / "edited")) == 2
    line = one_line_error(capsys)
    assert "other settings (differ: image_files (an image file replaced or edited, or another --image-root))" in line, line
    assert (moved / "edited" / ".progress" / "pgd" / "summary.json").is_file()  # nothing lost


def test_progress_tagged_with_absolute_image_paths_resumes_in_place_and_names_a_move(tmp_path):
    """A folder tagged before 2026-12-07 (`images`: absolute paths) resumes where nothing moved, and is
    tagged as now; moved, it is refused naming the image files and why, not 'an earlier mat-plus' for a
    folder of an earlier format."""
    from augment.errors import MatPlusError
    from train.eval_store import FORMAT_KEY, PROGRESS_FORMAT, SETTINGS_FILE, BatchStore

    now = {"seed": 0, "image_files": "relative"}
    placed = {"seed": 0, "images": "absolute-here"}
    folder = tmp_path / ".progress"
    BatchStore(folder, placed).save("pgd", 0, _Record())  # as written before
    assert BatchStore(folder, now, placed).finished_batches() == {"pgd": 1}
    assert json.loads((folder / SETTINGS_FILE).read_text()) == {**now, FORMAT_KEY: PROGRESS_FORMAT}
    assert BatchStore(folder, now, placed).finished_batches() == {"pgd": 1}  # (tagged as now)

    elsewhere = {"seed": 0, "images": "absolute-elsewhere"}  # the same folder moved: other absolute paths
    for earlier in (PROGRESS_FORMAT, 3):
        (folder / SETTINGS_FILE).write_text(json.dumps({**placed, FORMAT_KEY: earlier}))
        with pytest.raises(MatPlusError) as refused:
            BatchStore(folder, now, elsewhere)
        said = str(refused.value)
        assert "1 finished batches of an evaluation with other settings (differ: images (an image file replaced or " \
               "edited, another --image-root, or moved: batches kept before 2026-12-07 recorded the image files by " \
               "absolute path, so they resume only where they were made))" in said, said
        assert "earlier mat-plus" not in said
        assert (folder / "pgd").is_dir()


def test_grounding_data_is_fingerprinted_without_its_place(tmp_path):
    """Grounding's resume tag held each image's absolute path (and the source's name): a RefCOCO+ folder moved
    with its evaluation was another data set. Relative to the source's folder, a move keeps it; an image
    replaced in place still changes it."""
    from augment.referring import GroundingData, GroundingImage
    from train.evaluate_grounding import data_fingerprint

    (tmp_path / "a" / "refcoco" / "images").mkdir(parents=True)
    (tmp_path / "a" / "refcoco" / "images" / "1.jpg").write_bytes(b"jpeg")

    def data(where) -> GroundingData:
        image = GroundingImage("1", 8, 8, [[0, 0, 4, 4]], "test", path=str(where / "refcoco" / "images" / "1.jpg"))
        return GroundingData([image], [], source=str(where / "refcoco"))

    before = data_fingerprint(data(tmp_path / "a"), str(tmp_path / "a" / "refcoco"))
    placed = data_fingerprint(data(tmp_path / "a"))
    os.rename(tmp_path / "a", tmp_path / "b")
    assert data_fingerprint(data(tmp_path / "b"), str(tmp_path / "b" / "refcoco")) == before
    assert data_fingerprint(data(tmp_path / "b")) != placed
    (tmp_path / "b" / "refcoco" / "images" / "1.jpg").write_bytes(b"JPEG")
    assert data_fingerprint(data(tmp_path / "b"), str(tmp_path / "b" / "refcoco")) != before


def test_grounding_progress_tagged_with_absolute_image_paths_resumes_in_place_and_names_a_move(tmp_path):
    from augment.errors import MatPlusError
    from train.eval_store import FORMAT_KEY, PROGRESS_FORMAT, SETTINGS_FILE, BatchStore

    now = {"seed": 0, "data": {"images": 4, "files": "relative"}}
    placed = {"seed": 0, "data": {"images": 4, "source": "/a/refcoco", "fingerprint": "absolute-here"}}
    folder = tmp_path / ".progress"
    BatchStore(folder, placed).save("pgd", 0, _Record())  # as written before
    assert BatchStore(folder, now, placed).finished_batches() == {"pgd": 1}
    assert json.loads((folder / SETTINGS_FILE).read_text()) == {**now, FORMAT_KEY: PROGRESS_FORMAT}
    elsewhere = {"seed": 0, "data": {"images": 4, "source": "/a/refcoco", "fingerprint": "absolute-elsewhere"}}
    for earlier in (PROGRESS_FORMAT, 3):
        (folder / SETTINGS_FILE).write_text(json.dumps({**placed, FORMAT_KEY: earlier}))
        with pytest.raises(MatPlusError) as refused:
            BatchStore(folder, now, elsewhere)
        said = str(refused.value)
        assert "other settings (differ: data.fingerprint (other images, boxes or expressions: an image file replaced " \
               "or edited, another --image-root, or moved: batches kept before 2026-12-07" in said, said
        assert "earlier mat-plus" not in said
