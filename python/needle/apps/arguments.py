"""Argument types of the command line (`needle train`, `needle bench`): each parses one flag's
text and raises argparse.ArgumentTypeError, which argparse turns into a one-line error naming
the flag, for a value that parses but is out of range."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _checked(parse: Callable, expected: str, ok: Callable, requirement: str) -> Callable:
    def argument(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return argument


positive_int = _checked(int, "an integer", lambda v: v >= 1, "at least 1")
nonnegative_int = _checked(int, "an integer", lambda v: v >= 0, "at least 0")
nonnegative_float = _checked(
    float, "a number", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"
)
positive_seconds = _checked(
    float,
    "a number of seconds",
    lambda v: math.isfinite(v) and v > 0,
    "a finite number of seconds > 0",
)
