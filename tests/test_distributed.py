"""Several processes: the gradients DDP leaves equal one process's with the global batch, for the
shared temperature and bias too; the process group's timeout.

The two-process runs use torchrun over gloo on the CPU (as tests/test_trainer.py's two-process
run does) and compare gradients, not weights after AdamW: Adam is (nearly) invariant to a constant
factor on a parameter's gradient, so a world-size factor on the logit scale's gradient left the
weights equal to 1e-7.
"""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _torchrun(script: Path, *args: str, processes: int = 2, timeout: int = 240) -> str:
    """Run `script` under torchrun with `processes` gloo processes (1: plain python); its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATPLUS_LOGLEVEL": "ERROR", "PYTHONPATH": str(REPO)}
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   str(script), *args]
    else:
        command = [sys.executable, str(script), *args]
    # own process group, so a hang kills the launcher's workers too
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        output, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        raise
    assert launcher.returncode == 0, output[-3000:]
    return output


# ----------------------------------------------------------------------------- the gathered ITC loss

ITC_SCRIPT = textwrap.dedent('''
    """The project's gathered ITC loss, scaled by the task's gradient scale, backward through DDP:
    every parameter's gradient (rank 0's, after DDP's average) saved to argv[1]."""
    import os, sys
    import torch, torch.distributed as dist
    import torch.nn.functional as F
    from models.base import EncoderOutput
    from tasks.retrieval import RetrievalTask, itc_loss

    class Toy(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.img = torch.nn.Parameter(torch.randn(8, 6, generator=g))
            self.txt = torch.nn.Parameter(torch.randn(8, 6, generator=g))
            self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
            self.logit_bias = torch.nn.Parameter(torch.tensor(-1.5)) if kind == "sigmoid" else None
            self.family, self.itc_loss = "toy", kind

        def forward(self, x, y, keys, task):
            out = EncoderOutput(F.normalize(x @ self.img, dim=-1), F.normalize(y @ self.txt, dim=-1),
                                self.logit_scale.exp(), self.logit_bias)
            return itc_loss(self, out, keys, task)

    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    K = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])  # one image's two captions, one on each process
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    grads = {}
    for kind in ("softmax", "sigmoid"):
        task = RetrievalTask(rank, world)
        model = Toy(kind)
        wrapped = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
        rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
        loss = wrapped(X[rows], Y[rows], K[rows], task)
        (loss * task.gradient_scale).backward()  # as the trainer's backward
        grads.update({f"{kind}.{name}": p.grad.clone() for name, p in model.named_parameters()})
        grads[f"{kind}.loss"] = loss.detach()
    if rank == 0:
        torch.save(grads, sys.argv[1])
    if distributed:  # the trainer's own shutdown: the softmax pass's DDP wrapper, still alive in a
        # reference cycle, let go first (without that, 1 run in ~20 aborted in gloo's teardown)
        from train.launch import end_process_group
        del wrapped
        end_process_group(finished=True)
''')


def test_two_processes_give_the_temperature_and_bias_the_one_process_gradient(tmp_path):
    """The logit scale and SigLIP's bias multiply / shift the whole gathered logit matrix, so every
    process holds their whole gradient: scaled by the world size and averaged by DDP it was twice
    the one-process gradient (the embeddings' was right)."""
    script = tmp_path / "itc.py"
    script.write_text(ITC_SCRIPT)
    _torchrun(script, str(tmp_path / "two.pt"), processes=2)
    _torchrun(script, str(tmp_path / "one.pt"), processes=1)
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert set(two) == set(one) and {"softmax.logit_scale", "sigmoid.logit_scale", "sigmoid.logit_bias"} <= set(one)
    for name in one:
        assert one[name].abs().max() > 0, name
        assert torch.allclose(two[name], one[name], rtol=1e-5, atol=1e-7), (name, two[name], one[name])


# ----------------------------------------------------------------------------- the trainer

TRAINER_SCRIPT = textwrap.dedent('''
    """One optimizer step of `train clean` (tiny model given in argv): every trainable parameter's
    gradient at the first optimizer step (after DDP's all-reduce) saved by rank 0 to argv[1]."""
    import sys
    import torch
    import torch.distributed as dist
    from train.trainer import Trainer, train_run

    out, world, name, run, seed = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    batch = int(sys.argv[6])
    original = Trainer._optimizer_step
    init = dist.init_process_group

    def spied(*args, **kwargs):  # the timeout the process group is started with, written down
        with open(out + ".timeout", "w") as file:
            file.write(str(kwargs.get("timeout")))
        return init(*args, **kwargs)

    dist.init_process_group = spied

    def recorded(self):
        if self.is_main and self.scheduler.last_epoch == 0:
            torch.save({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}, out)
        return original(self)

    Trainer._optimizer_step = recorded
    from train.launch import end_process_group

    train_run({"method": "clean", "model": name, "train_data": world, "out": run, "max_steps": 1,
               "batch_size": batch, "lr": 1e-4, "progress": False, "workers": 0, "cpu": True, "seed": seed})
    end_process_group(finished=True)  # as `train` ends (train.cli.run_method): no rank left in gloo's teardown
''')


def test_two_process_trainer_gradients_equal_one_process_with_the_global_batch(tmp_path, sample_world_dir):
    """Through the trainer (tiny-siglip: a trained logit scale and bias): rank 0's gradients after
    DDP's all-reduce equal one process's on the global batch, the scale's and bias's included. And
    the process group is started with MATPLUS_DIST_TIMEOUT_MINUTES (accelerate passed no timeout:
    NCCL's 10 minutes aborted a run whose rank 0 validated alone for longer)."""
    script = tmp_path / "step.py"
    script.write_text(TRAINER_SCRIPT)
    common = [str(sample_world_dir), "tiny-siglip"]
    os.environ["MATPLUS_DIST_TIMEOUT_MINUTES"] = "7.5"
    try:
        _torchrun(script, str(tmp_path / "two.pt"), *common, str(tmp_path / "run2"), "16", "4", processes=2)
    finally:
        del os.environ["MATPLUS_DIST_TIMEOUT_MINUTES"]
    assert (tmp_path / "two.pt.timeout").read_text() == str(datetime.timedelta(minutes=7.5))
    _torchrun(script, str(tmp_path / "one.pt"), *common, str(tmp_path / "run1"), "16", "8", processes=1)
    assert not (tmp_path / "one.pt.timeout").exists()  # one process starts no group
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert set(two) == set(one)
    scalars = [name for name in one if name.endswith(("logit_scale", "logit_bias"))]
    assert len(scalars) == 2, sorted(one)
    for name in one:
        tolerance = 1e-4 * one[name].abs().max().item() + 1e-7
        assert torch.allclose(two[name], one[name], atol=tolerance, rtol=1e-4), (
            name, (two[name].norm() / one[name].norm().clamp(min=1e-30)).item())


# ----------------------------------------------------------------------------- the process group's timeout


def test_a_distributed_launch_gets_a_generous_timeout_settable_by_environment():
    from train.launch import DEFAULT_TIMEOUT, LaunchError, check_launch_environment

    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert check_launch_environment(cpu=True, env=env).timeout == DEFAULT_TIMEOUT == datetime.timedelta(hours=2)
    plan = check_launch_environment(cpu=True, env={**env, "MATPLUS_DIST_TIMEOUT_MINUTES": "240"})
    assert plan.timeout == datetime.timedelta(hours=4)
    assert check_launch_environment(cpu=True, env={}).timeout is None  # one process: no group
    for bad in ("soon", "0", "-5", "inf"):
        with pytest.raises(LaunchError, match="MATPLUS_DIST_TIMEOUT_MINUTES") as error:
            check_launch_environment(cpu=True, env={**env, "MATPLUS_DIST_TIMEOUT_MINUTES": bad})
        assert "\n" not in str(error.value)


def test_the_timeout_reaches_the_process_group_accelerate_starts(monkeypatch):
    """start_process_group hands the plan's timeout to accelerate's PartialState, which passes its
    keyword arguments on to torch.distributed.init_process_group (checked by the trainer's two-process
    test above); a test's own environment (`env=`) starts nothing."""
    import accelerate

    import train.launch as launch

    made = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: made.append(kwargs) or "state")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "MATPLUS_DIST_TIMEOUT_MINUTES": "90"}
    plan = launch.check_launch_environment(cpu=True, env=env)
    assert made == []
    assert launch.start_process_group(plan) == "state"
    assert made == [{"cpu": True, "timeout": datetime.timedelta(minutes=90)}]
    launch.check_launch_environment(cpu=False, env=env, cuda_devices=2, start=True)
    assert made[-1] == {"cpu": False, "timeout": datetime.timedelta(minutes=90)}
    assert launch.start_process_group(launch.LaunchPlan()) is None and len(made) == 2


# ----------------------------------------------------------------------------- the end of a run


def test_a_finished_rank_waits_for_the_others_before_the_group_goes_down_and_a_failed_one_does_not(monkeypatch):
    """A rank that left while another still used gloo sometimes aborted in gloo's teardown
    (SIGABRT: torchrun called the finished run failed); a failed rank must not wait in a barrier
    the others may never reach."""
    import torch.distributed as dist

    import train.launch as launch

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    launch.end_process_group(finished=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    launch.end_process_group(finished=False)
    assert calls == ["destroy"]
    calls.clear()
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    launch.end_process_group(finished=True)
    assert calls == []


@pytest.mark.parametrize("fails", [False, True])
def test_the_train_command_ends_the_process_group_whether_or_not_training_finished(monkeypatch, fails):
    import train.cli as cli
    import train.launch as launch
    import train.trainer as trainer

    ended = []

    def trained(config):
        if fails:
            raise RuntimeError("a rank failed")
        return {}

    monkeypatch.setattr(trainer, "train_run", trained)
    monkeypatch.setattr(launch, "end_process_group", lambda finished: ended.append(finished))
    monkeypatch.setattr(cli, "config_from_args", lambda args: args)
    if fails:
        with pytest.raises(RuntimeError):
            cli.run_method(object())
    else:
        assert cli.run_method(object()) == 0
    assert ended == [not fails]


# ----------------------------------------------------------------------------- the pools every process read

SWAPPED_POOL_SCRIPT = textwrap.dedent('''
    """`train mat+ --pools POOL` under torchrun, process 1 reading another pool at POOL than process 0 (as when
    a `select --overwrite` swaps one in between their reads): its refusal, or none, written to argv[4].rank."""
    import os, sys
    import augment.pool
    from augment.errors import MatPlusError
    from train.trainer import train_run
    from train.launch import end_process_group

    world, pool, run, out = sys.argv[1:5]
    real = augment.pool.load_pool

    def swapped_in(path, *args, **kwargs):
        read = real(path, *args, **kwargs)
        if os.environ.get("RANK") == "1" and sys.argv[5] == "swapped":
            read.meta = {**read.meta, "finished": "2026-12-07T00:00:00+00:00"}  # the pool made again meanwhile
        return read

    augment.pool.load_pool = swapped_in
    try:
        train_run({"method": "mat+", "model": "tiny-clip", "train_data": world, "pools": [pool], "out": run,
                   "max_steps": 1, "batch_size": 8, "pgd_steps": 1, "progress": False, "workers": 0, "cpu": True})
        said = "trained"
    except MatPlusError as exc:
        said = str(exc)
    with open(f"{out}.{os.environ['RANK']}", "w") as file:
        file.write(said)
    end_process_group(finished=True)
''')


@pytest.mark.parametrize("read", ["swapped", "same"])
def test_processes_that_read_different_pools_at_one_path_refuse_alike(tmp_path, sample_world_dir, read):
    """Each process calls load_pool itself: a pool swapped in between two processes' reads gave them different
    rows, unchecked, and the checkpoint's state recorded process 0's pool. Now every process refuses in one line."""
    from augment.sources import load_source, select_split, source_fingerprint
    from tests.test_trainer import _pool_row, _write_pool

    source, _ = load_source(str(sample_world_dir))
    rows = [_pool_row("t", row["image_id"], 0, 0, "text", caption=f"{row['captions'][0]} today")
            for row in select_split(source, "train")]
    pool = _write_pool(tmp_path / "pool", rows, source_fingerprint(source), "t")
    script = tmp_path / "swapped.py"
    script.write_text(SWAPPED_POOL_SCRIPT)
    _torchrun(script, str(sample_world_dir), pool, str(tmp_path / "run"), str(tmp_path / "said"), read)
    said = [(tmp_path / f"said.{rank}").read_text() for rank in (0, 1)]
    if read == "same":
        assert said == ["trained", "trained"]
        return
    assert said[0] == said[1] and "\n" not in said[0], said
    assert said[0].startswith("pool pool: process 1 read another pool than process 0 (finished 2026-12-07T00:00:00+00:00, "
                              f"{len(rows)} rows of t; process 0: finished "), said[0]
    assert not (tmp_path / "run" / "ckpt").exists()
