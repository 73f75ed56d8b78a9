"""Generator registry: `--method NAME` to the module that builds it.

Each module listed in `GENERATOR_MODULES` defines:

* `METHODS`: exact method names it serves (e.g. ["eda"]) and/or `PREFIXES` (e.g. ["t2t-"]:
  `t2t-<model>` with the model alias after the prefix);
* `add_arguments(parser)`: its options, added to `augment generate` in their own group;
* `options_read(method, args) -> set`: the method options (`method_options()`: every module's
  group and `MODEL_OPTIONS`) that `build(method, args)` reads; `augment generate` refuses any
  other method option given a value other than its default (`check_options_read`), so that
  `--method eda --steps 30` is not silently an EDA pool made as if `--steps` were never given;
* `build(method, args) -> Generator`.

Exact names win over prefixes, so `i2t-human` is not read as a captioner called "human".
"""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from augment.errors import MatPlusError

if TYPE_CHECKING:
    from augment.generators.base import Generator

# options of the common group that only the model-based methods read
MODEL_OPTIONS = frozenset({"model", "model_revision", "dtype", "batch_size"})

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
    """Every module of GENERATOR_MODULES; one missing, or two serving one method name or prefix, is an
    error naming them (a mistyped entry was skipped without a word, so its methods fell to another
    module's prefix, and of two modules claiming a name the first won)."""
    modules = []
    for name in GENERATOR_MODULES:
        try:
            modules.append(importlib.import_module(f"augment.generators.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"augment.generators.{name}":
                raise
            raise MatPlusError(f"generator module {name!r} listed in augment.generators.GENERATOR_MODULES does not "
                               f"exist (no augment/generators/{name}.py)") from None
    served: dict[str, str] = {}
    for module in modules:
        for key in (*getattr(module, "METHODS", []), *(f"{p}<model>" for p in getattr(module, "PREFIXES", []))):
            if key in served:
                raise MatPlusError(f"method {key!r} is served by two generator modules, {served[key]} and "
                                   f"{module.__name__}: rename one")
            served[key] = module.__name__
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
    from augment.errors import did_you_mean

    raise MatPlusError(f"unknown method {method!r}{did_you_mean(method, method_names())}; "
                       f"available: {', '.join(method_names())}")


def build_generator(method: str, args) -> "Generator":
    return module_for(method).build(method, args)


def method_options() -> frozenset[str]:
    """Destinations of the options only some methods read: every module's group and MODEL_OPTIONS."""
    parser = argparse.ArgumentParser(add_help=False)
    for module in available_modules():
        module.add_arguments(parser)
    return MODEL_OPTIONS | {action.dest for action in parser._actions}


def check_options_read(method: str, args, given: set[str], flags: dict[str, str] | None = None) -> None:
    """Refuse, in one line, the method options in `given` (those set to a value other than their
    default) that `method` does not read with these `args`; `flags`: each option's first spelling
    by its dest (default: the dest spelt as a flag)."""
    module = module_for(method)
    unread = sorted(given - set(module.options_read(method, args)))
    if not unread:
        return
    context = module.options_context(args) if hasattr(module, "options_context") else ""
    named = ", ".join((flags or {}).get(dest) or "--" + dest.replace("_", "-") for dest in unread)
    raise MatPlusError(
        f"--method {method}{context} does not read {named} ({'options' if len(unread) > 1 else 'an option'} of "
        "other methods or settings; `augment generate --help` says which method reads each); nothing was written"
    )
