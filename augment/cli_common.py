"""Shared plumbing of the `augment`, `train` and `analysis` command lines."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from augment.errors import MatPlusError


def _hub_error_types() -> tuple[type[BaseException], ...]:
    """Hub/network failures that should read as one line, not a traceback."""
    types: list[type[BaseException]] = []
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        types += [HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # older huggingface_hub
        pass
    try:
        from datasets.exceptions import DatasetNotFoundError

        types.append(DatasetNotFoundError)
    except ImportError:
        pass
    return tuple(types)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return first


def run_main(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None) -> int:
    logging.basicConfig(level=os.environ.get("MATPLUS_LOGLEVEL", "WARNING"))
    try:  # datasets' per-shard bars drown our own progress bars
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    expected: tuple[type[BaseException], ...] = (MatPlusError, FileNotFoundError) + _hub_error_types()
    try:
        code = args.func(args)
    except expected as exc:
        if os.environ.get("MATPLUS_TRACEBACK"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    return int(code or 0)
