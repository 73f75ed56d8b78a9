"""The study's task arms: `task: captioning|grounding` in a study config names a module here.

An arm module defines MODEL, METHODS, DEFAULT_EVAL, attack_names() (what `eval.attacks` may name),
write_world(folder, n, seed),
evaluate_checkpoint(checkpoint, source_dir, eval_settings, seed, folder, device) (device: where the study trained,
`Study.eval_device`;
an arm whose evaluate_checkpoint takes no device is called without one, as before), write_report(report, folder)
(eval.json and eval.md again, for an evaluation reused after the study moved) and headline(report)
(README: The study, `task:`). Arms are imported only when a study asks for their task, so a
retrieval study never loads captioning or grounding code.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from augment.errors import MatPlusError

TASK_ARMS = {"captioning": "analysis.captioning_arm", "grounding": "analysis.grounding_arm"}
TASKS = ("retrieval", *TASK_ARMS)
ARM_NAMES = ("MODEL", "METHODS", "DEFAULT_EVAL", "attack_names", "write_world", "evaluate_checkpoint", "write_report",
             "headline")


def load_arm(task: str) -> ModuleType:
    """The arm module of `task` (one clear line when the task or its module is unknown or incomplete)."""
    if task not in TASK_ARMS:
        raise MatPlusError(f"study config: task {task!r} has no arm; choose from {', '.join(TASKS)}")
    name = TASK_ARMS[task]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the arm exists but something it imports does not: that error is the one to see
            raise
        raise MatPlusError(f"study config: task {task!r} needs the module {name}, which this installation lacks") from None
    missing = [attribute for attribute in ARM_NAMES if not hasattr(module, attribute)]
    if missing:
        raise MatPlusError(f"study config: task {task!r}: {name} lacks {', '.join(missing)}")
    return module
