"""The tolerance policy (conformance/tolerance.py, docs/tolerance.md) on synthetic data.

The measurements on real models (noise of every library well under the bound, the smallest
functional mutants well above it) live in tests/test_mutants.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance import tolerance as tol
from conformance.tolerance import Policy, errors, parse_dtype, policy

U = 2.0**-53


def _tiny_policy(dtype: str = "float64", batch: int = 2) -> Policy:
    # The adapter tests' tiny timm model: img 32, patch 8, E=32, F=64, 2 layers, CLS.
    return policy(dtype=dtype, embed_dim=32, hidden_dim=64, patch_dim=3 * 8 * 8, tokens=17, layers=2, batch=batch)


def test_parse_dtype_accepts_both_spellings() -> None:
    assert parse_dtype("float32") == ("float32", torch.float32)
    assert parse_dtype(torch.bfloat16) == ("bfloat16", torch.bfloat16)
    assert parse_dtype("torch.float16") == ("float16", torch.float16)
    with pytest.raises(ValueError, match="valid: float64"):
        parse_dtype("int8")
    with pytest.raises(ValueError):
        parse_dtype(torch.int32)


def test_unit_roundoffs() -> None:
    for name, dt in tol.DTYPES.items():
        assert tol.UNIT_ROUNDOFF[name] == torch.finfo(dt).eps / 2


def test_float64_bounds_follow_the_documented_formula() -> None:
    p = _tiny_policy()
    k = max(32, 64, 192, 17)
    assert p.k_accum == k == 192
    assert p.fwd_tol64 == pytest.approx(tol.C_FWD * U * math.sqrt(192) * 3)
    assert p.grad_tol64 == pytest.approx(tol.C_GRAD * U * math.sqrt(max(192, 2 * 17)) * 3)
    # The numbers quoted in docs/tolerance.md.
    assert p.fwd_tol64 == pytest.approx(1.18e-12, rel=1e-2)
    base = policy(dtype="float64", embed_dim=768, hidden_dim=3072, patch_dim=768, tokens=197, layers=12, batch=2)
    assert base.fwd_tol64 == pytest.approx(C_BASE_FWD, rel=1e-2)
    assert base.grad_tol64 == pytest.approx(C_BASE_GRAD, rel=1e-2)
    # Gradients get the looser bound; it grows with the rows a weight gradient sums over.
    assert p.grad_tol64 > p.fwd_tol64
    big = _tiny_policy(batch=64)
    assert big.batch_rows == 64 * 17 and big.grad_tol64 > p.grad_tol64


C_BASE_FWD = tol.C_FWD * U * math.sqrt(3072) * 13  # ViT-B/16: ~2.0e-11
C_BASE_GRAD = tol.C_GRAD * U * math.sqrt(3072) * 13  # batch 2 * 197 rows < 3072: ~8.1e-11


def test_bounds_separate_noise_from_the_smallest_mutant() -> None:
    # Even for a deep, wide model the float64 bound stays far below the smallest functional
    # change the suite must catch (1e-3 relative in one layer; eps 1e-5 vs 1e-6 gives >= ~1e-7).
    huge = policy(dtype="float64", embed_dim=1280, hidden_dim=5120, patch_dim=588, tokens=257, layers=32, batch=8)
    assert huge.fwd_tol64 < 1e-9 and huge.grad_tol64 < 1e-8


def test_errors_are_normwise() -> None:
    ref = torch.tensor([100.0, 1.0, 0.0], dtype=torch.float64)
    a = ref + torch.tensor([0.0, 1e-3, 1e-3], dtype=torch.float64)
    e = errors(a, ref)
    assert e.max_abs == pytest.approx(1e-3)
    assert e.rel == pytest.approx(1e-5)  # relative to max|ref| = 100, not to the entry 0
    assert errors(ref, ref) == tol.Errors(0.0, 0.0)
    assert errors(a, ref, scale=1e-3).rel == pytest.approx(1.0)


def test_errors_do_not_depend_on_the_layout_of_either_side() -> None:
    g = torch.Generator().manual_seed(0)
    a, r = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    a[2, 3], r[4, 6] = float("nan"), float("inf")
    want = errors(a.contiguous(), r.contiguous())
    for x in (a, a.T.contiguous().T):  # the library weight's gradient may be a transposed view
        for y in (r, r.T.contiguous().T):
            got = errors(x, y)
            assert (got.max_abs != got.max_abs) and (want.max_abs != want.max_abs)  # NaN stays NaN
    finite_a, finite_r = a.nan_to_num(0.0), r.nan_to_num(0.0, 0.0)
    base = errors(finite_a, finite_r)
    assert errors(finite_a.T.contiguous().T, finite_r) == base == errors(finite_a, finite_r.T.contiguous().T)
    assert errors(a.T.contiguous().T, torch.tensor(0.5, dtype=torch.float64)).max_abs != 0.0  # broadcasts


def test_errors_of_zero_reference_and_empty() -> None:
    z = torch.zeros(4, dtype=torch.float64)
    assert errors(z, z).rel == 0.0
    assert errors(z + 1e-300, z).rel > 1.0  # tiny denominator, not a division by zero
    assert errors(torch.empty(0), torch.empty(0)) == tol.Errors(0.0, 0.0)


def test_errors_nonfinite_never_pass() -> None:
    ref = torch.ones(3, dtype=torch.float64)
    p = _tiny_policy()
    for bad in (float("nan"), float("inf")):
        a = ref.clone()
        a[1] = bad
        e = errors(a, ref)
        assert not math.isfinite(e.rel)
        assert p.judge(e.rel) == (False, p.fwd_tol64)
    assert math.isnan(errors(torch.tensor([math.nan]), torch.tensor([1.0])).rel)


def test_judge_float64() -> None:
    p = _tiny_policy()
    assert p.judge(p.fwd_tol64 / 2) == (True, p.fwd_tol64)
    assert p.judge(p.fwd_tol64 * 2)[0] is False
    assert p.judge(p.fwd_tol64 * 2, grad=True) == (True, p.grad_tol64)
    assert p.judge(1e-3)[0] is False


def test_judge_native_is_relative_to_the_spec_in_the_same_dtype() -> None:
    p = _tiny_policy("float32")
    assert p.native and p.native_k == tol.NATIVE_K
    floor = tol.NATIVE_FLOOR_ULPS * 2.0**-24
    assert p.native_floor == pytest.approx(floor)
    spec_err = 1e-5
    assert p.judge(3.9e-5, spec_err) == (True, pytest.approx(4e-5))
    assert p.judge(4.1e-5, spec_err)[0] is False
    # A lucky (tiny) spec error never demands less than the floor.
    assert p.judge(floor / 2, 0.0) == (True, pytest.approx(floor))
    assert p.judge(floor / 2, None)[1] == pytest.approx(floor)
    assert p.judge(floor / 2, float("nan"))[1] == pytest.approx(floor)
    assert p.judge(float("nan"), spec_err)[0] is False


def test_policy_to_dict_is_json_ready() -> None:
    import json

    d = _tiny_policy("bfloat16").to_dict()
    json.dumps(d)
    assert d["dtype"] == "bfloat16" and "rule" in d and d["native_k"] == tol.NATIVE_K


@settings(max_examples=40)
@given(
    n=st.integers(1, 8),
    k=st.sampled_from([16, 64, 192, 768, 3072]),
    m=st.integers(16, 64),
    seed=st.integers(0, 2**31 - 1),
)
def test_float64_reassociation_noise_is_far_below_the_bound(n: int, k: int, m: int, seed: int) -> None:
    """Two float64 evaluations of the same matmul in different summation orders always pass.

    Outputs are vectors of >= 16 entries, as every ViT stage is: normwise error is measured
    against the largest entry, which a single cancelled dot product (a 1x1 output) lacks.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    w = torch.randn(k, m, generator=g, dtype=torch.float64)
    ref = x @ w
    # Blocked, reversed-order accumulation: a different (legal) rounding sequence.
    alt = torch.zeros(n, m, dtype=torch.float64)
    for lo in reversed(range(0, k, 61)):
        alt = alt + x[:, lo : lo + 61] @ w[lo : lo + 61]
    p = policy(dtype="float64", embed_dim=k, hidden_dim=k, patch_dim=1, tokens=1, layers=0, batch=1)
    e = errors(alt, ref)
    assert e.rel <= p.fwd_tol64 / 10, (e.rel, p.fwd_tol64)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_native_floor_is_a_few_ulps(dtype: str) -> None:
    p = _tiny_policy(dtype)
    assert p.native_floor == pytest.approx(tol.NATIVE_FLOOR_ULPS * tol.UNIT_ROUNDOFF[dtype])
    # Rounding a float64 value to the dtype alone always passes (half an ulp < floor).
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e = errors(x.to(tol.DTYPES[dtype]), x)
    assert p.judge(e.rel, None)[0]


def test_ln_eps_effect_survives_large_variance() -> None:
    """eps 1e-6 -> 1e-5 rescales a LayerNorm output by ~Δε/(2·var); still far above tol at std 100."""
    g = torch.Generator().manual_seed(0)
    e = 768
    x = 100.0 * torch.randn(4, 197, e, generator=g, dtype=torch.float64)
    w = torch.ones(e, dtype=torch.float64)
    b = torch.zeros(e, dtype=torch.float64)
    ref = torch.nn.functional.layer_norm(x, (e,), w, b, 1e-6)
    mut = torch.nn.functional.layer_norm(x, (e,), w, b, 1e-5)
    err = errors(mut, ref).rel
    var = x.var(-1, unbiased=False)
    effect = 9e-6 / (2 * var)  # the documented per-row relative change
    assert float(effect.min()) * 0.95 <= err <= float(effect.max()) * 1.05
    base = policy(dtype="float64", embed_dim=768, hidden_dim=3072, patch_dim=768, tokens=197, layers=12, batch=2)
    assert err > 10 * base.fwd_tol64
    # Detectable while var < Δε / (2·tol) ≈ 2e5 for ViT-B (docs/tolerance.md).
    assert 9e-6 / (2 * base.fwd_tol64) == pytest.approx(2.2e5, rel=0.05)


def test_gradient_groups_share_one_scale() -> None:
    """An analytically zero gradient is judged against its group's largest entry, not against itself."""
    ref = {
        "encoder.0.mha.bk": torch.zeros(4, dtype=torch.float64),
        "encoder.0.mha.Wq": torch.tensor([[2.0, -8.0]], dtype=torch.float64),
        "head_W": torch.tensor([0.5], dtype=torch.float64),
    }
    group = {"encoder.0.mha.bk": "blocks.0", "encoder.0.mha.Wq": "blocks.0", "head_W": "head"}
    scale = tol.group_scales(ref, group.__getitem__)
    assert scale == {"blocks.0": 8.0, "head": 0.5}
    noise = torch.full((4,), 1e-15, dtype=torch.float64)
    e = tol.grad_errors([noise], [ref["encoder.0.mha.bk"]], scale["blocks.0"])
    assert e.max_abs == 1e-15 and e.rel == pytest.approx(1e-15 / 8)
    # Several spec keys fed by one library tensor (a fused qkv): the worst of them counts.
    two = tol.grad_errors([torch.ones(2), torch.zeros(2)], [torch.ones(2), torch.full((2,), 3.0)], 6.0)
    assert two.max_abs == 3.0 and two.rel == 0.5


def test_coarser_orders_dtypes_by_roundoff() -> None:
    assert tol.coarser("float32", "float64") and tol.coarser("bfloat16", "float16")
    assert not tol.coarser("float64", "float32") and not tol.coarser("float32", "float32")
