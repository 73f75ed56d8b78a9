from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from bench.bench_scale import job_argv


@pytest.mark.parametrize("job", ["generate", "train_step", "eval_batch"])
def test_each_scale_job_runs_again_into_the_folder_of_its_last_run(job, sample_world_dir, tmp_path):
    """The bench times each job `--repeats` times into one output folder: a repeat refused there
    (a finished evaluation's folder was) used to be dropped, so the first run, which parses the
    source, was the only one timed."""
    module, argv = job_argv(job, sample_world_dir / "dataset_sample.json", sample_world_dir / "images", tmp_path)
    main = importlib.import_module(module).main
    assert main(argv) == 0
    assert main(argv) == 0


@pytest.fixture(scope="module")
def pool_jobs_source(sample_world_dir, tmp_path_factory) -> Path:
    """The source the pool jobs read, with its eda pool made beside its folder by `make_pool` (two
    `augment generate` processes: the pool, then finding it kept), once for both jobs: they only read it."""
    import shutil

    from bench.bench_scale import make_pool, pool_of

    root = tmp_path_factory.mktemp("pool-jobs")
    folder = root / "source"
    folder.mkdir()
    source = Path(shutil.copy(sample_world_dir / "dataset_sample.json", folder))
    pool = make_pool(source, sample_world_dir / "images")
    assert pool == pool_of(source) and pool.parent == root and (pool / "pool.json").is_file()
    assert make_pool(source, sample_world_dir / "images") == pool  # kept
    return source


@pytest.mark.parametrize("job", ["pool_select", "pool_train_step"])
def test_each_pool_job_runs_on_the_pool_made_for_its_source_again_into_its_folder(job, pool_jobs_source,
                                                                                  sample_world_dir, tmp_path):
    """The opt-in pool jobs (audit AM: `augment select` and MAT+'s start-up were quadratic or row by row
    in the pool's size) read an eda pool made beside the source's folder, untimed, kept across sizes'
    repeats; each job runs again into the folder of its last run, as the others do."""
    from bench.bench_scale import parse_args

    assert parse_args(["--jobs", f"generate,{job}"]).jobs == f"generate,{job}"
    module, argv = job_argv(job, pool_jobs_source, sample_world_dir / "images", tmp_path / "out")
    main = importlib.import_module(module).main
    assert main(argv) == 0
    assert main(argv) == 0
