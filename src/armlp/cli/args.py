"""Argument types shared by the subcommands: numbers that must make sense."""

from __future__ import annotations

import argparse
import math


def amount(text: str) -> float:
    """A finite number of at least 0 (milliseconds, seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a finite number of at least 0 is required")
    return value


def count(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 is required")
    return value
