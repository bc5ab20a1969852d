"""``argparse`` value types shared by every command line (``vitspec``, ``python -m conformance``,
``conformance.matrix``, the pytest plugin): a bad value is a usage error (exit 2 with one line),
never a traceback from deeper down (``torch.manual_seed`` overflows past 2**64 - 1)."""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

__all__ = [
    "MAX_SEED",
    "TARGET_GRAMMAR",
    "OneLineParser",
    "nonempty_str",
    "output_path",
    "positive_float",
    "positive_int",
    "seed_int",
]

MAX_SEED = 2**63 - 1

#: The TARGET grammar (``conformance.targets``), for every --help that takes a target.
TARGET_GRAMMAR = (
    "TARGET is LIBRARY:NAME with LIBRARY one of timm, torchvision, hf, vit_pytorch "
    "(timm:vit_tiny_patch16_224, torchvision:vit_b_16, hf:tiny, hf:path/to/config.json, vit_pytorch:cls), "
    "or MODULE:FACTORY (a dotted module or a .py path and a function returning an nn.Module: "
    "examples/mutant_vit.py:make_model). LIBRARY targets take keyword overrides after '?', joined by '&': "
    "timm:vit_tiny_patch16_224?global_pool=avg&class_token=false (values are Python literals, "
    "true/false/none, or strings). Weights are random (seeded by --seed) unless a --weights file fills them; "
    "nothing is downloaded."
)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit 2), pointing to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


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


def output_path(text: str) -> str:
    """A path a command will write (``-`` = standard output), checked now: a directory, a missing
    permission or a too-long name is refused while parsing, before any work is done."""
    from ._fs import UnwritableError, check_writable

    try:
        check_writable(text)
    except UnwritableError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def nonempty_str(text: str) -> str:
    """A non-blank string (``vitspec conform "$UNSET"`` must not silently check the default target)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
