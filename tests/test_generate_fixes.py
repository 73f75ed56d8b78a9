"""`augment generate` on broken inputs: one line, exit 2, no pool left behind; --overwrite mends a corrupt pool."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from augment import tiny
from augment.cli import main as augment_main


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    from augment.world.writer import write_sample

    return write_sample(tmp_path_factory.mktemp("genfix") / "sample", n=6, seed=0)


def _broken_copy(tmp_path: Path, name: str, *remove: str) -> Path:
    """A copy of tiny model `name` without `remove` (and without tiny.json: not a tiny model any more)."""
    folder = tmp_path / f"{name}-broken"
    shutil.copytree(tiny.tiny_dir(name), folder)
    for part in (*remove, "tiny.json"):
        target = folder / part
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return folder


def _refused_in_one_line(capsys, code: int, out: Path, *expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    assert not out.exists()  # nothing left claiming to be a pool


def test_sd_folder_without_a_listed_component_is_refused_before_the_pool(tmp_path, sample_dir, capsys):
    model = _broken_copy(tmp_path, "tiny-sd", "tokenizer")
    out = tmp_path / "pool"
    code = augment_main(["generate", "--method", "t2i-sd", "--model", str(model), "--steps", "2",
                         "--source", str(sample_dir), "--out", str(out), "--n", "1", "--limit", "2",
                         "--no-progress"])
    _refused_in_one_line(capsys, code, out, str(model), "tokenizer/")


def test_load_sd_pipeline_names_the_missing_component(tmp_path):
    from augment.errors import ModelLoadError
    from augment.registry import load_sd_pipeline

    model = _broken_copy(tmp_path, "tiny-sd", "vae")
    with pytest.raises(ModelLoadError, match="has no vae/"):
        load_sd_pipeline(str(model))


@pytest.mark.parametrize("method, name", [("i2t-x", "tiny-captioner"), ("t2t-x", "tiny-paraphraser")])
def test_model_folder_without_tokenizer_files_is_refused(tmp_path, sample_dir, capsys, method, name):
    model = _broken_copy(tmp_path, name, "tokenizer.json", "vocab.txt")
    out = tmp_path / "pool"
    code = augment_main(["generate", "--method", method, "--model", str(model), "--source", str(sample_dir),
                         "--out", str(out), "--n", "1", "--limit", "2", "--no-progress"])
    _refused_in_one_line(capsys, code, out, str(model), "has no tokenizer files")


def test_overwrite_replaces_a_pool_whose_pool_json_is_corrupt(tmp_path, sample_dir, capsys):
    out = tmp_path / "eda"
    common = ["generate", "--method", "eda", "--source", str(sample_dir), "--out", str(out), "--n", "2",
              "--no-progress"]
    assert augment_main(common) == 0
    (out / "pool.json").write_text("{bad", encoding="utf-8")
    capsys.readouterr()
    assert augment_main(common) == 2  # without --overwrite: refused, the damage named
    assert "corrupt JSON" in capsys.readouterr().err
    assert augment_main([*common, "--overwrite"]) == 0
    assert json.loads((out / "pool.json").read_text(encoding="utf-8"))["status"] == "complete"


def test_overwrite_still_refuses_a_folder_that_is_not_a_pool(tmp_path, sample_dir, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    code = augment_main(["generate", "--method", "eda", "--source", str(sample_dir), "--out", str(out),
                         "--n", "2", "--overwrite", "--no-progress"])
    assert code == 2 and "is not a pool" in capsys.readouterr().err
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_null_caption_in_a_parquet_source_is_named_as_null(tmp_path, sample_dir, capsys):
    from datasets import Dataset, Features, Image, Value

    images = sorted((sample_dir / "images").glob("*.png"))[:3]
    table = Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": None} for p in images], "caption": ["a b c", None, "d e f"]},
        features=Features({"image": Image(), "caption": Value("string")}))
    source = tmp_path / "nullcap.parquet"
    table.to_parquet(str(source))
    out = tmp_path / "pool"
    code = augment_main(["generate", "--method", "eda", "--source", str(source), "--source-split", "train",
                         "--out", str(out), "--n", "1", "--no-progress"])
    _refused_in_one_line(capsys, code, out, "row 1: caption is missing (null)")
