from __future__ import annotations

import importlib

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
