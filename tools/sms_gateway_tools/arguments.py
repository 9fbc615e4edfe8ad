"""argparse types that refuse an out-of-range number up front: exit 2 with the flag and its range, nothing started.

A port of 70000 or a kill rate of 3 got as far as starting the local stack or a chaos run (or was taken as if it were
1); a negative count or a rate outside 0..1 ran with a meaning nobody asked for."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_PORT = 65_535


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """A whole number from `least` to `most` (no upper bound when None)."""
    wanted = f"a whole number from {least} to {most}" if most is not None else f"a whole number, at least {least}"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number: give {wanted}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"{raw} is out of range: give {wanted}")
        return value

    parse.__name__ = "whole number"
    return parse


def number(least: float, most: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite number from `least` (or more than it, with `above`) to `most` (no upper bound when None)."""
    if most is not None:
        wanted = f"a number from {least:g} to {most:g}"
    else:
        wanted = f"a number {'more than' if above else 'at least'} {least:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number: give {wanted}") from None
        low_ok = value > least if above else value >= least
        if not (math.isfinite(value) and low_ok and (most is None or value <= most)):
            raise argparse.ArgumentTypeError(f"{raw} is out of range: give {wanted}")
        return value

    parse.__name__ = "number"
    return parse


# A share of messages or sends (a rate): 0 is none, 1 is all.
share = number(0, 1)
# A TCP port on 127.0.0.1; 0 asks the system for a free one.
port = whole_number(0, MAX_PORT)
