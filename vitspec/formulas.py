"""The spec's output-size formulas, computed exactly as Lean ``Nat`` arithmetic.

Lean (``NN/Spec/Models/Vit.lean`` at lean-dojo/TorchLean 411682f)::

    ViTPatchOutH inH patchH stride padding = (inH + 2*padding - patchH) / stride + 1
    ViTPatchOutW inW patchW stride padding = (inW + 2*padding - patchW) / stride + 1
    ViTPatchCount inH inW patchH patchW stride padding = outH * outW

``Nat`` subtraction truncates at 0 and ``Nat`` division by 0 is 0, so these are
total: a kernel larger than the padded input gives 1, and ``stride = 0`` gives 1.
These functions are the *pure* formulas and return those values on purpose; the
checked paths (:meth:`vitspec.ViTConfig.check`, the models) refuse the degenerate
cases. Inputs must be natural numbers (``int`` >= 0, not ``bool``).

From NicolasRouquette/TorchLean 852c9c6 on (and at b2a2184), ``ViTPatchOutH`` is
``Shape.slidingWindowOutDim`` (``NN/Spec/Core/Shape.lean``), which is 0 instead of 1 in those
degenerate cases (:func:`sliding_window_out_dim`); well-formed geometry gives the same value.
:func:`patch_out_dim` picks the formula of a revision (:attr:`vitspec.revisions.SpecRevision.patch_out`).
"""

from __future__ import annotations

from typing import Literal

from .errors import ConfigError

__all__ = [
    "nat_div",
    "nat_sub",
    "patch_count",
    "patch_out_dim",
    "patch_out_h",
    "patch_out_w",
    "sliding_window_out_dim",
]


def _nat(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a natural number (int >= 0), got {value!r}")
    return value


def nat_sub(a: int, b: int) -> int:
    """Lean ``Nat`` subtraction: ``a - b`` truncated at 0."""
    return a - b if a >= b else 0


def nat_div(a: int, b: int) -> int:
    """Lean ``Nat`` division: floor division, and ``a / 0 = 0``."""
    return a // b if b != 0 else 0


def _out(in_size: int, patch: int, stride: int, padding: int) -> int:
    return nat_div(nat_sub(in_size + 2 * padding, patch), stride) + 1


def patch_out_h(in_h: int, patch_h: int, stride: int, padding: int) -> int:
    """Lean ``ViTPatchOutH``: ``(in_h + 2*padding - patch_h) / stride + 1`` over ``Nat``."""
    return _out(_nat("in_h", in_h), _nat("patch_h", patch_h), _nat("stride", stride), _nat("padding", padding))


def patch_out_w(in_w: int, patch_w: int, stride: int, padding: int) -> int:
    """Lean ``ViTPatchOutW``: ``(in_w + 2*padding - patch_w) / stride + 1`` over ``Nat``."""
    return _out(_nat("in_w", in_w), _nat("patch_w", patch_w), _nat("stride", stride), _nat("padding", padding))


def patch_count(in_h: int, in_w: int, patch_h: int, patch_w: int, stride: int, padding: int) -> int:
    """Lean ``ViTPatchCount``: the token count ``T = out_h * out_w``."""
    return patch_out_h(in_h, patch_h, stride, padding) * patch_out_w(in_w, patch_w, stride, padding)


def sliding_window_out_dim(in_size: int, kernel: int, stride: int, padding: int) -> int:
    """Lean ``Shape.slidingWindowOutDim``: 0 when ``kernel = 0``, ``stride = 0`` or ``in + 2p < kernel``."""
    in_size, kernel = _nat("in_size", in_size), _nat("kernel", kernel)
    stride, padding = _nat("stride", stride), _nat("padding", padding)
    padded = in_size + 2 * padding
    if kernel == 0 or stride == 0 or padded < kernel:
        return 0
    return (padded - kernel) // stride + 1


def patch_out_dim(
    in_size: int, patch: int, stride: int, padding: int, formula: Literal["nat_formula", "sliding_window"]
) -> int:
    """One patch-grid side under a revision's formula (``nat_formula``: 411682f, ``sliding_window``: b2a2184)."""
    if formula == "nat_formula":
        return _out(_nat("in_size", in_size), _nat("patch", patch), _nat("stride", stride), _nat("padding", padding))
    if formula == "sliding_window":
        return sliding_window_out_dim(in_size, patch, stride, padding)
    raise ConfigError(f"formula must be 'nat_formula' or 'sliding_window', got {formula!r}")
