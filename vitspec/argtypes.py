"""``argparse`` value types shared by every command line (``vitspec``, ``python -m conformance``,
``conformance.matrix``, the pytest plugin): a bad value is a usage error (exit 2 with one line),
never a traceback from deeper down (``torch.manual_seed`` overflows past 2**64 - 1)."""

from __future__ import annotations

import argparse
import math

__all__ = ["MAX_SEED", "positive_float", "positive_int", "seed_int"]

MAX_SEED = 2**63 - 1


def positive_int(text: str) -> int:
    """An integer > 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def seed_int(text: str) -> int:
    """A seed, ``0 <= seed <= 2**63 - 1`` (seeds are offset by small constants downstream)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, got {v}")
    return v
