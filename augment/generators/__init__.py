"""Generator registry: `--method NAME` to the module that builds it.

Each module listed in `GENERATOR_MODULES` defines:

* `METHODS`: exact method names it serves (e.g. ["eda"]) and/or `PREFIXES` (e.g. ["t2t-"]:
  `t2t-<model>` with the model alias after the prefix);
* `add_arguments(parser)`: its options, added to `augment generate` in their own group;
* `build(method, args) -> Generator`.

Exact names win over prefixes, so `i2t-human` is not read as a captioner called "human".
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from augment.errors import MatPlusError

if TYPE_CHECKING:
    from augment.generators.base import Generator

GENERATOR_MODULES = [
    "human",
    "eda",
    "paraphrase",
    "captioner",
    "diffusion",
    "imgaug",
    "procedural",
]


def available_modules() -> list[ModuleType]:
    modules = []
    for name in GENERATOR_MODULES:
        try:
            modules.append(importlib.import_module(f"augment.generators.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"augment.generators.{name}":
                raise
    return modules


def method_names() -> list[str]:
    names = []
    for module in available_modules():
        names += list(getattr(module, "METHODS", []))
        names += [f"{p}<model>" for p in getattr(module, "PREFIXES", [])]
    return names


def module_for(method: str) -> ModuleType:
    modules = available_modules()
    for module in modules:
        if method in getattr(module, "METHODS", []):
            return module
    for module in modules:
        for prefix in getattr(module, "PREFIXES", []):
            if method.startswith(prefix) and len(method) > len(prefix):
                return module
    raise MatPlusError(f"unknown method {method!r}; available: {', '.join(method_names())}")


def build_generator(method: str, args) -> "Generator":
    return module_for(method).build(method, args)
