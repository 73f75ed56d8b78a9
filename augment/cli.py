"""`augment` command line: one sub-command per module in `augment.commands`.

Each command module defines `register(subparsers)`, which adds its parser and sets
`func=run(args) -> int`. Expected failures (`MatPlusError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from augment.cli_common import run_main

# module names under augment.commands, in the order `augment --help` lists them
COMMANDS = [
    "make_sample",
    "inspect",
    "generate",
    "score",
    "select",
    "push",
    "setup_wordnet",
    "save_tiny",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="augment", description="Inspect image-caption sources; build, score, select and share 1:N augmentation pools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"augment.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"augment.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


# mat-plus's packages the augment commands may import: not analysis, so a folder of the user's named so (of notebooks
# or results) does not stop `python -m augment.cli`
IMPORTED_PACKAGES = ("augment", "models", "tasks", "train", "data_cards")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv, IMPORTED_PACKAGES)


if __name__ == "__main__":
    sys.exit(main())
