"""Tasks: what a model is trained and evaluated to do. A task owns its losses, the loss its
attacks maximise, and its metrics, so the trainer and evaluation never branch on a model family.

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
        raise MatPlusError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task(name: str, rank: int = 0, world_size: int = 1, **options) -> Task:
    return task_class(name)(rank=rank, world_size=world_size, **options)
