"""Lean Vit.lean formulas: the output-size formulas ``ViTPatchOutH``, ``ViTPatchOutW``, ``ViTPatchCount``.

Two independent oracles:

- Lean ``Nat`` arithmetic, re-derived here from first principles (``max(a - b, 0)``
  and ``a // b if b else 0``) rather than imported from :mod:`vitspec.formulas`, so
  a shared bug cannot make both sides agree; the formulas must equal it on *every*
  natural-number input, degenerate ones included.
- ``torch.nn.functional.conv2d``, wherever it is defined (stride >= 1, kernel >= 1,
  input >= 1 and the kernel fitting the padded input): its output shape must be
  ``(out_h, out_w)``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitspec import ConfigError, patch_count, patch_out_h, patch_out_w
from vitspec.formulas import nat_div, nat_sub


# -- the independent Lean Nat reference -----------------------------------------
def ref_sub(a: int, b: int) -> int:
    return max(a - b, 0)


def ref_div(a: int, b: int) -> int:
    return a // b if b else 0


def ref_out(in_size: int, patch: int, stride: int, padding: int) -> int:
    """``(in + 2*padding - patch) / stride + 1`` over Lean ``Nat``."""
    return ref_div(ref_sub(in_size + 2 * padding, patch), stride) + 1


# Small values exercise the degenerate corners (0, kernel > input); the large range
# checks that nothing overflows or goes through floats.
nat = st.one_of(st.integers(0, 40), st.integers(0, 10**12))
PURE = settings(max_examples=200)
CONV = settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- Nat values everywhere -------------------------------------------------------
@PURE
@given(a=nat, b=nat)
def test_spec1_nat_helpers_are_lean_nat_sub_and_div(a: int, b: int) -> None:
    assert nat_sub(a, b) == ref_sub(a, b), f"Lean Vit.lean formulas Nat subtraction truncates at 0: {a} - {b}"
    assert nat_div(a, b) == ref_div(a, b), f"Lean Vit.lean formulas Nat division, x / 0 = 0: {a} / {b}"


@PURE
@given(in_h=nat, patch_h=nat, stride=nat, padding=nat)
def test_spec1_ViTPatchOutH_equals_nat_reference(in_h: int, patch_h: int, stride: int, padding: int) -> None:
    got = patch_out_h(in_h, patch_h, stride, padding)
    want = ref_out(in_h, patch_h, stride, padding)
    assert type(got) is int, f"Lean ViTPatchOutH returns a Nat (int), got {type(got).__name__}"
    assert got == want, f"Lean ViTPatchOutH {in_h} {patch_h} {stride} {padding}: got {got}, Lean Nat gives {want}"


@PURE
@given(in_w=nat, patch_w=nat, stride=nat, padding=nat)
def test_spec1_ViTPatchOutW_equals_nat_reference(in_w: int, patch_w: int, stride: int, padding: int) -> None:
    got = patch_out_w(in_w, patch_w, stride, padding)
    want = ref_out(in_w, patch_w, stride, padding)
    assert type(got) is int, f"Lean ViTPatchOutW returns a Nat (int), got {type(got).__name__}"
    assert got == want, f"Lean ViTPatchOutW {in_w} {patch_w} {stride} {padding}: got {got}, Lean Nat gives {want}"


@PURE
@given(in_h=nat, in_w=nat, patch_h=nat, patch_w=nat, stride=nat, padding=nat)
def test_spec1_ViTPatchCount_equals_nat_reference(
    in_h: int, in_w: int, patch_h: int, patch_w: int, stride: int, padding: int
) -> None:
    got = patch_count(in_h, in_w, patch_h, patch_w, stride, padding)
    want = ref_out(in_h, patch_h, stride, padding) * ref_out(in_w, patch_w, stride, padding)
    assert type(got) is int, "Lean ViTPatchCount returns a Nat (int)"
    assert got == want, f"Lean ViTPatchCount = outH*outW: got {got}, Lean Nat gives {want}"
    # `/ stride + 1` is at least 1, so the mean-pool premise h_tok (ViTPatchCount > 0)
    # holds for every input: the degenerate cases must be refused elsewhere (ViTConfig.check).
    assert got >= 1, "Lean ViTPatchCount >= 1 for every Nat input (h_tok always holds)"


@PURE
@given(size=nat, patch=nat, stride=nat, padding=nat)
def test_spec1_ViTPatchOutW_is_ViTPatchOutH_on_the_other_axis(size: int, patch: int, stride: int, padding: int) -> None:
    assert patch_out_w(size, patch, stride, padding) == patch_out_h(size, patch, stride, padding), (
        "Lean ViTPatchOutW and ViTPatchOutH are the same formula"
    )


@pytest.mark.parametrize(
    ("args", "want", "why"),
    [
        ((224, 16, 16, 0), 14, "ViT-B/16 at 224"),
        ((96, 16, 16, 0), 6, "d2l model at 96"),
        ((224, 14, 14, 0), 16, "ViT-H/14 at 224"),
        ((230, 16, 16, 0), 14, "floor division drops the remainder"),
        ((224, 16, 8, 0), 27, "overlapping patches (stride < patch)"),
        ((7, 3, 2, 1), 4, "padding enters twice"),
        ((2, 5, 0, 0), 1, "kernel > input and stride 0: (0 - 5) truncates to 0, 0/0 = 0, + 1"),
        ((2, 5, 3, 0), 1, "kernel > padded input: subtraction truncates to 0"),
        ((224, 16, 0, 0), 1, "stride 0: Nat division by 0 is 0"),
        ((0, 0, 0, 0), 1, "all zeros"),
        ((0, 1, 1, 0), 1, "empty input"),
    ],
)
def test_spec1_ViTPatchOut_known_lean_values(args: tuple[int, int, int, int], want: int, why: str) -> None:
    assert patch_out_h(*args) == want, f"Lean ViTPatchOutH {' '.join(map(str, args))} = {want} ({why})"
    assert patch_out_w(*args) == want, f"Lean ViTPatchOutW {' '.join(map(str, args))} = {want} ({why})"


def test_spec1_ViTPatchCount_known_lean_values() -> None:
    assert patch_count(224, 224, 16, 16, 16, 0) == 196, "Lean ViTPatchCount ViT-B/16 at 224 = 14*14"
    assert patch_count(224, 96, 16, 16, 16, 0) == 14 * 6, "Lean ViTPatchCount = outH*outW (non-square)"
    assert patch_count(224, 224, 16, 32, 16, 0) == 14 * 13, "Lean ViTPatchCount with patchH != patchW"
    assert patch_count(2, 2, 5, 5, 0, 0) == 1, "Lean ViTPatchCount of the degenerate case is 1*1"


# -- agreement with torch's conv2d where it is defined -----------------------------
@st.composite
def conv_geometry(draw: st.DrawFn) -> tuple[int, int, int, int, int, int]:
    """``(in_h, in_w, patch_h, patch_w, stride, padding)`` for which conv2d is defined."""
    patch_h, patch_w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride, padding = draw(st.integers(1, 7)), draw(st.integers(0, 3))
    # conv2d needs a non-empty input whose padded size holds the kernel.
    in_h = draw(st.integers(max(1, patch_h - 2 * padding), patch_h + 20))
    in_w = draw(st.integers(max(1, patch_w - 2 * padding), patch_w + 20))
    return in_h, in_w, patch_h, patch_w, stride, padding


@CONV
@given(geometry=conv_geometry())
def test_spec1_formulas_equal_conv2d_output_shape(geometry: tuple[int, ...], device: str) -> None:
    in_h, in_w, patch_h, patch_w, stride, padding = geometry
    x = torch.zeros(1, 1, in_h, in_w, device=device)
    k = torch.zeros(1, 1, patch_h, patch_w, device=device)
    out = F.conv2d(x, k, stride=stride, padding=padding)
    oh, ow = patch_out_h(in_h, patch_h, stride, padding), patch_out_w(in_w, patch_w, stride, padding)
    assert tuple(out.shape[-2:]) == (oh, ow), (
        f"Lean ViTPatchOutH/W must be conv2d's output size: conv2d gives {tuple(out.shape[-2:])}, "
        f"formulas give ({oh}, {ow}) for in=({in_h},{in_w}) patch=({patch_h},{patch_w}) "
        f"stride={stride} padding={padding}"
    )
    assert out[0, 0].numel() == patch_count(in_h, in_w, patch_h, patch_w, stride, padding), (
        "Lean ViTPatchCount must be the number of conv2d output positions"
    )


@pytest.mark.parametrize(
    ("in_size", "patch", "stride", "padding"),
    [(2, 5, 0, 0), (8, 4, 0, 1), (3, 5, 1, 0), (3, 8, 2, 2)],
    ids=["stride0-kernel-too-big", "stride0", "kernel-too-big", "kernel-too-big-padded"],
)
def test_spec1_degenerate_cases_are_1_where_conv2d_is_undefined(
    in_size: int, patch: int, stride: int, padding: int
) -> None:
    """Lean Vit.lean formulas: the bare Nat formulas are total and give 1 where no convolution exists."""
    with pytest.raises(RuntimeError):
        F.conv2d(torch.zeros(1, 1, in_size, in_size), torch.zeros(1, 1, patch, patch), stride=stride, padding=padding)
    assert patch_out_h(in_size, patch, stride, padding) == 1, "Lean ViTPatchOutH is 1 in the degenerate case"
    assert patch_out_w(in_size, patch, stride, padding) == 1, "Lean ViTPatchOutW is 1 in the degenerate case"


# -- inputs must be natural numbers ----------------------------------------------
BAD_NATS: list[Any] = [-1, True, False, 2.0, "16", None]
ARG_NAMES = ("in_h", "patch_h", "stride", "padding")


@pytest.mark.parametrize("bad", BAD_NATS, ids=repr)
@pytest.mark.parametrize("position", range(4), ids=ARG_NAMES)
@pytest.mark.parametrize("fn", [patch_out_h, patch_out_w], ids=["ViTPatchOutH", "ViTPatchOutW"])
def test_spec1_non_nat_argument_is_a_config_error_naming_it(fn: Any, position: int, bad: Any) -> None:
    args: list[Any] = [224, 16, 16, 0]
    args[position] = bad
    name = ARG_NAMES[position] if fn is patch_out_h else ARG_NAMES[position].replace("_h", "_w")
    with pytest.raises(ConfigError) as info:
        fn(*args)
    assert name in str(info.value), (
        f"Lean Vit.lean formulas a non-Nat {name}={bad!r} must be named in the error: {info.value}"
    )
    assert repr(bad) in str(info.value), (
        f"Lean Vit.lean formulas the error shows the offending value {bad!r}: {info.value}"
    )


@pytest.mark.parametrize("position", range(6), ids=["in_h", "in_w", "patch_h", "patch_w", "stride", "padding"])
def test_spec1_ViTPatchCount_non_nat_argument_is_a_config_error(position: int) -> None:
    args: list[Any] = [224, 224, 16, 16, 16, 0]
    args[position] = -3
    with pytest.raises(ConfigError, match="-3"):
        patch_count(*args)
