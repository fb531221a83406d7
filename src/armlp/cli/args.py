"""Argument types shared by the subcommands: numbers that must make sense."""

from __future__ import annotations

import argparse
import math
from typing import Any

from armlp.errors import UsageError


def amount(text: str) -> float:
    """A finite number of at least 0 (milliseconds, seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a finite number of at least 0 is required")
    return value


class OptionalSeconds(argparse.Action):
    """``--wait [SECONDS]`` that leaves a word that is no number to the
    positional after it: ``armlp patch --wait fix.o`` waits (the default)
    for fix.o, where argparse alone would read fix.o as SECONDS.  The word
    goes to ``namespace.spilled`` (see :func:`positional`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values is None:
            setattr(namespace, self.dest, self.const)
            return
        try:
            setattr(namespace, self.dest, amount(values))
        except argparse.ArgumentTypeError as exc:
            if values[:1].isdigit() or values[:1] in ".-+":
                parser.error(f"argument {option_string}: {exc}")
            setattr(namespace, self.dest, self.const)
            namespace.spilled = values


def positional(args: argparse.Namespace, dest: str, metavar: str) -> str:
    """The positional *dest*, also when it followed an option with an
    optional value (:class:`OptionalSeconds`)."""
    given = getattr(args, dest)
    spilled = getattr(args, "spilled", None)
    if given is not None and spilled is not None:
        raise UsageError(f"one {metavar} expected, got {spilled!r} and {given!r}")
    value = given if given is not None else spilled
    if value is None:
        raise UsageError(f"the following argument is required: {metavar}")
    return str(value)


def count(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 is required")
    return value
