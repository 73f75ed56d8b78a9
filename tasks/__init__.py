"""Tasks: what a model is trained and evaluated to do. A task owns its losses, the loss its
attacks maximise and its MAT text attack, so the trainer never branches on a model family; each
task's evaluation (attacks by name, metrics) is in `train/` (README: Adding a task).

`TASKS` maps a task name (`--task`) to its class ("module:Class", imported on use).
"""
from __future__ import annotations

import importlib

from tasks.base import Task  # noqa: F401

TASKS: dict[str, str] = {
    "retrieval": "tasks.retrieval:RetrievalTask",
    "grounding": "tasks.grounding:GroundingTask",
    "captioning": "tasks.captioning:CaptioningTask",
}


def task_class(name: str) -> type[Task]:
    from augment.errors import MatPlusError

    if name not in TASKS:
        from augment.errors import did_you_mean

        raise MatPlusError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; known: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task(name: str, rank: int = 0, world_size: int = 1, **options) -> Task:
    return task_class(name)(rank=rank, world_size=world_size, **options)
