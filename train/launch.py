"""How this process was launched: alone, or as one rank of a process group (torchrun, accelerate).

`check_launch_environment` reads the launcher's environment before the trainer builds its
`Accelerator` and says how to set the process group up, or stops with one line when it cannot be
set up as asked. It exists because two launches went wrong silently:

* `python -m torch.distributed.run --nproc_per_node 2 -m train.cli ...` on a machine without a
  GPU and without `--cpu`: accelerate saw no GPU and no CPU request, built no process group,
  and two independent copies raced into one run folder (each reporting world_size 1). A launch
  with WORLD_SIZE > 1 and no usable GPU now runs the process group over gloo on the CPU.
* `accelerate launch --num_processes 2` on a CPU-only machine starts ONE process (accelerate runs
  several CPU processes only through mpirun) with MASTER_ADDR set and no WORLD_SIZE: that is
  refused, pointing to torchrun, instead of training alone while the user expects two.

With the process's own environment it also starts the process group (accelerate's `PartialState`,
which the `Accelerator` then reuses) with an explicit timeout, `MATPLUS_DIST_TIMEOUT_MINUTES`
(default 120): accelerate passes none, so NCCL's default of 10 minutes applied, and while rank 0
validates alone (`--val-frequency`) the other ranks wait in their next collective; a validation
longer than that aborted the job.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from augment.errors import MatPlusError


class LaunchError(MatPlusError):
    """The launcher's environment asks for something this process cannot set up."""


TIMEOUT_ENV = "MATPLUS_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT = timedelta(hours=2)  # a rank waits this long in a collective (e.g. while rank 0 validates)


@dataclass(frozen=True)
class LaunchPlan:
    """How to set up this process: `Accelerator(cpu=plan.cpu)` builds the group on `backend`."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    cpu: bool = False  # pass to Accelerator(cpu=...): True runs a process group over gloo
    backend: str | None = None  # "gloo" (CPU) or "nccl" (GPUs); None for one process
    launcher: str | None = None  # "torchrun", "accelerate" or None
    timeout: timedelta | None = None  # the process group's, for every collective; None for one process

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: int, env) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer; check the launcher") from None


def _launcher(env) -> str | None:
    if any(name.startswith("ACCELERATE_") for name in env):
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env:
        return "torchrun"
    return None


def process_group_timeout(env=None) -> timedelta:
    """`MATPLUS_DIST_TIMEOUT_MINUTES` (a positive number of minutes), else 2 hours."""
    env = os.environ if env is None else env
    value = env.get(TIMEOUT_ENV)
    if value is None or value.strip() == "":
        return DEFAULT_TIMEOUT
    try:
        minutes = float(value)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise LaunchError(f"environment variable {TIMEOUT_ENV}={value!r}: expected a positive number of minutes "
                          f"(how long a process waits for the others in a collective; default "
                          f"{DEFAULT_TIMEOUT.total_seconds() / 60:.0f})")
    return timedelta(minutes=minutes)


def start_process_group(plan: LaunchPlan):
    """Start the process group of a distributed plan with `plan.timeout` (accelerate's PartialState,
    which an Accelerator or PartialState built afterwards reuses); returns it, or None for one
    process. A group already started (by the caller) is left as it is."""
    if not plan.distributed:
        return None
    import torch.distributed as dist
    from accelerate import PartialState

    if dist.is_available() and dist.is_initialized():
        return PartialState()
    return PartialState(cpu=plan.cpu, timeout=plan.timeout)


def end_process_group(finished: bool) -> None:
    """Shut this process's process group down before the interpreter does (no-op without one).

    `finished`: every rank got here without an error, so they first wait for each other; a rank
    that failed must not wait for ranks that may never come. Without this, a rank that exited
    while another still used its gloo connections (rank 0 saving, DDP's buckets still alive)
    sometimes died in gloo's teardown ("terminate called without an active exception",
    SIGABRT): torchrun then reported a finished run as failed.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    import gc

    gc.collect()  # a finished trainer's DDP wrapper (held in reference cycles) lets go of the group first
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def check_launch_environment(cpu: bool, env=None, cuda_devices: int | None = None,
                             start: bool | None = None, cpu_option: str = "--cpu") -> LaunchPlan:
    """The launch plan for this process, or LaunchError (one line).

    `cpu` is the trainer's --cpu; `env` and `cuda_devices` default to os.environ and the GPUs
    torch sees (tests pass their own). `start` (default: when `env` is this process's own): start
    the process group of a distributed plan here, with its timeout (`start_process_group`), so
    that every caller's Accelerator / PartialState uses that timeout. `cpu_option`: how the
    caller's command asks for the CPU (the trainer's --cpu, generate's --device cpu), in its hints.
    """
    start = env is None if start is None else start
    env = os.environ if env is None else env
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    launcher = _launcher(env)
    world_size = _int_env("WORLD_SIZE", 1, env)
    rank = _int_env("RANK", 0, env)
    local_rank = _int_env("LOCAL_RANK", 0, env)
    if world_size < 1 or not 0 <= rank < world_size:
        raise LaunchError(f"inconsistent launch environment: RANK={rank}, WORLD_SIZE={world_size}")
    if world_size == 1:
        if launcher == "accelerate" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
            raise LaunchError(
                "accelerate launch started a single process although several were asked for (it runs several "
                "CPU processes only through mpirun): on a CPU use `python -m torch.distributed.run "
                "--nproc_per_node N -m train.cli ...`; with GPUs, `accelerate launch --multi_gpu`"
            )
        return LaunchPlan(cpu=cpu, launcher=launcher)
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise LaunchError(f"WORLD_SIZE={world_size} but MASTER_ADDR/MASTER_PORT are not set: launch with "
                          "`python -m torch.distributed.run` (torchrun) or `accelerate launch`")
    on_cpu = cpu or cuda_devices == 0
    if not on_cpu and local_rank >= cuda_devices:
        raise LaunchError(f"LOCAL_RANK {local_rank} but only {cuda_devices} GPU(s) visible: start at most "
                          f"{cuda_devices} processes per machine, or pass {cpu_option} to run on the CPU (gloo)")
    plan = LaunchPlan(world_size=world_size, rank=rank, local_rank=local_rank, cpu=on_cpu,
                      backend="gloo" if on_cpu else "nccl", launcher=launcher, timeout=process_group_timeout(env))
    if start:
        start_process_group(plan)
    return plan


@contextmanager
def main_process_logs(is_main: bool):
    """The block's warnings and info lines from the main process only: every process of a launch checks the run
    folder and reads the same source, pools and model, so each of their lines came once per process (8 GPUs: 8
    copies of `warning: --resume latest: RUN has no checkpoint yet`). Errors still come from every process."""
    if is_main:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


def check_process_group(plan: LaunchPlan, num_processes: int) -> None:
    """After the Accelerator is built: the group it formed must be the one the launcher started."""
    if num_processes != plan.world_size:
        raise LaunchError(f"the launcher started {plan.world_size} processes but the process group has "
                          f"{num_processes}: each process would train alone into the same folder")
