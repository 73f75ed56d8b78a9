"""argparse value checkers shared by every command line (one meaning per name).

Each turns a command-line string into a value or raises `argparse.ArgumentTypeError`, which
argparse reports as the command's usage followed by one error line, with exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from fractions import Fraction


def number(text: str) -> float:
    """A float written as a decimal or a fraction: "0.0078", "2/255" (inf and nan too: the trainer's
    settings check them with the rest, in one line)."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a number (e.g. 0.0078 or 2/255)") from None


def finite_number(text: str) -> float:
    """`number`, refusing nan and inf: every comparison with nan is False, so range checks would let it through."""
    value = number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def folder_path(text: str) -> str:
    """A folder to write (or resume) into: refused when it names an existing file, a link to a
    missing folder (a run would be written wherever the link points, made on the spot), or lies
    under a file (`atomic.output_folder_problem`)."""
    from augment.atomic import output_folder_problem

    problem = output_folder_problem(Path(text))
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}; choose another folder")
    return text


def file_path(text: str) -> str:
    """A file to write: refused when it names an existing folder."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a folder, not a file; name a file")
    return text


def non_negative_number(text: str) -> float:
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must not be negative")
    return value


def positive_number(text: str) -> float:
    value = finite_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a chance or a share), decimal or fraction."""
    value = finite_number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must lie in [0, 1]")
    return value


def confidence_level(text: str) -> float:
    """A number strictly between 0 and 1 (a confidence interval's level)."""
    value = finite_number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must lie strictly between 0 and 1")
    return value


def positive_fraction(text: str) -> float:
    """A number in (0, 1] (e.g. nucleus sampling's top-p)."""
    value = finite_number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must lie in (0, 1]")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


_BYTE_UNITS = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def byte_size(text: str) -> int:
    """A positive size in bytes: a whole number, or one with a binary unit, "512M", "1.5G", "2GiB" (argparse
    has no such type, and a 5-line parser beats a dependency for it)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1073741824, 512M, 1.5G)")
    value = int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1 byte")
    return value


def seed_list(text: str) -> list[int]:
    """Comma-separated distinct non-negative whole numbers: "0,1,2"."""
    seeds = [non_negative_int(part.strip()) for part in text.split(",") if part.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r}: no seed given (e.g. 0,1,2)")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text}: a seed is repeated")
    return seeds


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must not be negative")
    return value
