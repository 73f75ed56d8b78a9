"""argparse value checkers shared by every command line (one meaning per name).

Each turns a command-line string into a value or raises `argparse.ArgumentTypeError`, which
argparse reports as one usage line with exit status 2.
"""
from __future__ import annotations

import argparse
from fractions import Fraction


def number(text: str) -> float:
    """A float written as a decimal or a fraction: "0.0078", "2/255"."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a number (e.g. 0.0078 or 2/255)") from None


def non_negative_number(text: str) -> float:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must not be negative")
    return value


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a chance or a share), decimal or fraction."""
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must lie in [0, 1]")
    return value


def confidence_level(text: str) -> float:
    """A number strictly between 0 and 1 (a confidence interval's level)."""
    value = number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must lie strictly between 0 and 1")
    return value


def positive_fraction(text: str) -> float:
    """A number in (0, 1] (e.g. nucleus sampling's top-p)."""
    value = number(text)
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
