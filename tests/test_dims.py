"""The named-dimension DSL (:mod:`vitspec.dims`): Lean ViTSpec shapes enforced at run time.

Sections: the dimension names and their formulas (Lean Vit.lean ViTPatchOutH, ViTSpec.forward), derived-dimension
errors carrying dim, formula and numbers, internal consistency, device/dtype
agreement, and the on/off switch (call, context manager, ``VITSPEC_SHAPE_CHECKS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

import vitspec.dims as dims_module
from vitspec import (
    Dims,
    ShapeError,
    ViTConfig,
    VitSpecError,
    bind_dims,
    checked,
    patch_count,
    patch_out_h,
    patch_out_w,
    shape_checks,
    shape_checks_enabled,
)
from vitspec import primitives as P
from vitspec.dims import DIM_NAMES, Float, current_dims

# ViT-B/16 geometry (224x224 -> 14x14 = 196 tokens) with a tiny width so tensors stay small.
CFG = ViTConfig(16, 16, 16, 0, embed_dim=8, hidden_dim=12, head_count=2, num_layers=1, num_classes=5)
DIMS = Dims.from_config(CFG, 3, 224, 224)
CLS_DIMS = Dims.from_config(CFG, 3, 224, 224, cls_token=True)
E = CFG.embed_dim


@checked
def add_pos(
    x: Float[Tensor, "*batch tokens embed_dim"], pos: Float[Tensor, "tokens embed_dim"]
) -> Float[Tensor, "*batch tokens embed_dim"]:
    return x + pos


@checked
def drop_last_row(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    return x[:-1]


# -- dimension names and formulas ---------------------------------------------------
def test_dsl_every_bound_dim_is_documented_and_every_documented_dim_is_bound() -> None:
    bound = set(DIMS.values)
    assert bound <= set(DIM_NAMES), f"DSL dims bound but not in DIM_NAMES: {bound - set(DIM_NAMES)}"
    assert set(DIM_NAMES) - bound == {"batch"}, "DSL every DIM_NAMES entry but the variadic batch is bound by a config"
    assert all(DIM_NAMES[n].strip() for n in DIM_NAMES), "DSL every dimension name has a meaning"


def test_spec1_tokens_formula_with_numbers() -> None:
    assert DIMS["tokens"] == 196, "Lean ViTPatchCount 224/16 -> 14*14"
    assert DIMS.explain("tokens") == "tokens = out_h*out_w = 14*14 = 196", (
        "Lean Vit.lean formulas tokens formula with numbers"
    )
    assert CLS_DIMS["tokens"] == 197 and CLS_DIMS["patches"] == 196, "Lean ViTSpec.forward ViTClsSpec has T + 1 tokens"
    assert CLS_DIMS.explain("tokens") == "tokens = out_h*out_w + 1 = 14*14 + 1 = 197", (
        "Lean ViTSpec.forward CLS tokens formula"
    )
    assert DIMS.explain("out_h") == "out_h = (in_h + 2*padding - patch_h)/stride + 1 = (224 + 2*0 - 16)/16 + 1 = 14", (
        "Lean ViTPatchOutH formula with numbers"
    )


@st.composite
def geometries(draw: st.DrawFn) -> tuple[ViTConfig, int, int, int]:
    """A config and image size for which ViTConfig.check passes (tiny, so tensors stay cheap)."""
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 4)), draw(st.integers(0, 2))
    heads = draw(st.integers(1, 3))
    cfg = ViTConfig(
        patch_h=ph,
        patch_w=pw,
        stride=stride,
        padding=padding,
        embed_dim=draw(st.integers(heads, 6)),
        hidden_dim=draw(st.integers(1, 4)),
        head_count=heads,
        num_layers=1,
        num_classes=draw(st.integers(1, 3)),
    )
    in_h = draw(st.integers(max(1, ph - 2 * padding), ph + 9))
    in_w = draw(st.integers(max(1, pw - 2 * padding), pw + 9))
    return cfg, draw(st.integers(1, 3)), in_h, in_w


@settings(max_examples=200)
@given(geometry=geometries(), cls_token=st.booleans())
def test_spec1_Dims_from_config_are_the_spec_formulas(
    geometry: tuple[ViTConfig, int, int, int], cls_token: bool
) -> None:
    cfg, c, h, w = geometry
    d = Dims.from_config(cfg, c, h, w, cls_token=cls_token)
    oh, ow = patch_out_h(h, cfg.patch_h, cfg.stride, cfg.padding), patch_out_w(w, cfg.patch_w, cfg.stride, cfg.padding)
    t = patch_count(h, w, cfg.patch_h, cfg.patch_w, cfg.stride, cfg.padding)
    assert (d["out_h"], d["out_w"], d["patches"]) == (oh, ow, t), "Lean ViTPatchOutH/W/Count"
    assert d["tokens"] == t + cls_token, "Lean ViTSpec.forward tokens = T (+1 with a CLS token)"
    hd = cfg.embed_dim // cfg.head_count
    assert (d["head_dim"], d["attn_dim"]) == (hd, cfg.head_count * hd), (
        "Lean ViTSpec.forward head_dim = embedDim/headCount (floor)"
    )
    assert d["patch_dim"] == c * cfg.patch_h * cfg.patch_w, "DSL patch_dim = channels*patch_h*patch_w"
    assert (d["embed_dim"], d["hidden_dim"], d["heads"], d["classes"], d["channels"]) == (
        cfg.embed_dim,
        cfg.hidden_dim,
        cfg.head_count,
        cfg.num_classes,
        c,
    ), "Lean ViTConfig.WF config dims"
    for name, value in d.values.items():
        assert d.explain(name).startswith(f"{name} = "), f"DSL explain({name!r}) starts with the name"
        assert f"= {value}" in d.explain(name), f"DSL explain({name!r}) ends in its value {value}: {d.explain(name)}"


# -- derived-dimension errors ------------------------------------------------------
def test_spec1_wrong_token_count_names_function_argument_dim_formula_and_shape() -> None:
    with bind_dims(DIMS), pytest.raises(ShapeError) as info:
        P.pos_add(torch.zeros(195, E), torch.zeros(195, E))
    err = info.value
    assert (err.function, err.argument, err.dim) == ("pos_add", "tokens", "tokens"), (
        f"Lean formulas: ShapeError names function, argument, dim: {err.function!r} {err.argument!r} {err.dim!r}"
    )
    assert (err.expected, err.actual, err.shape) == (196, 195, (195, E)), (
        "Lean Vit.lean formulas expected/actual values and shape"
    )
    assert err.formula == "tokens = out_h*out_w = 14*14 = 196", (
        f"Lean Vit.lean formulas formula with numbers: {err.formula!r}"
    )
    msg = str(err)
    for part in ("pos_add", "'tokens'", "must be 196, got 195", "tokens = out_h*out_w = 14*14 = 196", "(195, 8)"):
        assert part in msg, f"Lean Vit.lean formulas ShapeError message carries {part!r}: {msg}"
    assert isinstance(err, VitSpecError) and isinstance(err, ValueError), "ShapeError is a VitSpecError/ValueError"


def test_spec3_cls_model_expects_T_plus_1_tokens() -> None:
    pos = torch.zeros(196, E)
    with bind_dims(CLS_DIMS), pytest.raises(ShapeError) as info:
        P.pos_add(torch.zeros(196, E), pos)
    assert info.value.expected == 197 and "14*14 + 1 = 197" in str(info.value), (
        f"Lean ViTSpec.forward ViTClsSpec pos has T + 1 rows: {info.value}"
    )


def test_spec3_return_value_is_checked_against_bound_dims() -> None:
    """Prepending a CLS token under mean-pool dims yields T + 1 rows where T are bound: the return is refused."""
    with bind_dims(DIMS), pytest.raises(ShapeError) as info:
        P.cls_prepend(torch.zeros(196, E), torch.zeros(E))
    assert (info.value.argument, info.value.dim, info.value.actual) == ("return", "tokens", 197), (
        f"Lean ViTSpec.forward a checked return value is held to the bound dims: {info.value}"
    )


def test_spec3_wrong_embed_dim_in_a_weight() -> None:
    x = torch.zeros(196, E)
    w_bad = torch.zeros(5, E + 1)  # head weight (classes, embed_dim) with the wrong embed_dim
    with bind_dims(DIMS), pytest.raises(ShapeError) as info:
        P.head(x.mean(0), w_bad, torch.zeros(5))
    err = info.value
    assert err.dim == "embed_dim" and err.expected == E, f"Lean ViTSpec.forward head_W is (numClasses, embedDim): {err}"
    assert err.argument in ("w", "pooled") and f"embed_dim = {E}" in str(err), f"Lean ViTSpec.forward message: {err}"


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=geometries(), data=st.data())
def test_spec1_checked_conv2d_and_tokens_agree_with_the_formulas(
    geometry: tuple[ViTConfig, int, int, int], data: st.DataObject, device: str
) -> None:
    """A correctly shaped patch embedding passes under the bound dims (its output is checked against
    ViTPatchOutH/W); the same call with one wrong dim is refused, naming that dim and its value."""
    cfg, c, h, w = geometry
    d = Dims.from_config(cfg, c, h, w)
    e = cfg.embed_dim
    x = torch.zeros(c, h, w, device=device)
    kernel = torch.zeros(e, c, cfg.patch_h, cfg.patch_w, device=device)
    bias = torch.zeros(e, device=device)
    with bind_dims(d):
        grid = P.conv2d(x, kernel, bias, cfg.stride, cfg.padding)
        tokens = P.grid_to_tokens(grid)
        out = P.pos_add(tokens, torch.zeros(d["tokens"], e, device=device))
    assert tuple(grid.shape) == (e, d["out_h"], d["out_w"]), "Lean ViTSpec.forward patches : (embedDim, outH, outW)"
    assert tuple(out.shape) == (d["tokens"], e) and out.device.type == torch.device(device).type, (
        "Lean ViTSpec.forward tokens"
    )

    which = data.draw(st.sampled_from(["tokens", "embed_dim"]), label="wrong dim")
    bad_pos = torch.zeros(d["tokens"] + (which == "tokens"), e + (which == "embed_dim"), device=device)
    with bind_dims(d), pytest.raises(ShapeError) as info:
        P.pos_add(tokens, bad_pos)
    assert info.value.dim == which, f"Lean ViTSpec.forward the error names the wrong dim {which!r}: {info.value}"
    assert info.value.expected == d[which] and d.explain(which) in str(info.value), (
        f"Lean ViTSpec.forward the error carries the formula {d.explain(which)!r}: {info.value}"
    )


def test_dsl_bind_dims_nests_and_none_unbinds() -> None:
    assert current_dims() is None, "DSL no dims bound at top level"
    with bind_dims(DIMS):
        assert current_dims() is DIMS
        with bind_dims(None):
            assert current_dims() is None
            P.pos_add(torch.zeros(3, 2), torch.zeros(3, 2))  # only internal consistency applies
        with bind_dims(CLS_DIMS):
            assert current_dims() is CLS_DIMS
        assert current_dims() is DIMS, "DSL leaving an inner bind_dims restores the outer one"
    assert current_dims() is None


# -- internal consistency, rank, dtype kind, return (no dims bound) ----------------------
def test_dsl_same_name_must_have_one_size_across_arguments() -> None:
    with pytest.raises(ShapeError) as info:
        add_pos(torch.zeros(5, 3), torch.zeros(4, 3))
    err = info.value
    assert (err.dim, err.argument, err.expected, err.actual) == ("tokens", "pos", 5, 4), f"DSL consistency: {err}"
    assert "'x'" in str(err) and "'pos'" in str(err), f"DSL the message names both arguments: {err}"


def test_dsl_wrong_rank() -> None:
    with pytest.raises(ShapeError) as info:
        add_pos(torch.zeros(196), torch.zeros(196, E))
    assert info.value.argument == "x" and "rank 1" in str(info.value) and "needs at least 2" in str(info.value), (
        f"DSL rank error names the argument and the annotation: {info.value}"
    )


def test_dsl_integer_tensor_where_float_is_annotated() -> None:
    with pytest.raises(ShapeError) as info:
        add_pos(torch.zeros(5, 3, dtype=torch.int64), torch.zeros(5, 3, dtype=torch.int64))
    assert "add_pos" in info.value.function and "Float" in str(info.value), f"DSL dtype kind: {info.value}"


def test_dsl_return_value_is_checked() -> None:
    with pytest.raises(ShapeError) as info:
        drop_last_row(torch.zeros(3, 2))
    assert "return value" in str(info.value), f"DSL the return annotation is enforced: {info.value}"


# -- device and dtype agreement ----------------------------------------------------
def test_dsl_dtype_disagreement_is_refused() -> None:
    with pytest.raises(ShapeError) as info:
        P.pos_add(torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64))
    err = info.value
    assert (err.argument, err.expected, err.actual) == ("pos", torch.float32, torch.float64), f"DSL dtype: {err}"
    assert "dtype" in str(err) and "'tokens'" in str(err), f"DSL the message names the other argument: {err}"


def test_dsl_optional_tensor_arguments_are_checked_when_given() -> None:
    """``X | None`` parameters (the profiles' biases) get the same checks as required ones."""
    x, w = torch.zeros(4, 3), torch.zeros(3, 2)
    assert P.linear(x, w, None).shape == (4, 2), "DSL an omitted optional tensor is fine"
    with pytest.raises(ShapeError) as info:
        P.linear(x, w, torch.zeros(2, dtype=torch.float64))  # would silently promote the result to float64
    assert (info.value.argument, info.value.actual) == ("b", torch.float64), f"DSL optional bias dtype: {info.value}"
    wq = torch.zeros(E, DIMS["attn_dim"])
    with bind_dims(DIMS), pytest.raises(ShapeError) as info:
        P.mha(torch.zeros(196, E), wq, wq, wq, wq.T, bq=torch.zeros(DIMS["attn_dim"] - 1), heads=CFG.head_count)
    assert (info.value.argument, info.value.dim) == ("bq", "attn_dim"), (
        f"Lean ViTSpec.forward optional bq checked: {info.value}"
    )
    assert "attn_dim = heads*head_dim = 2*4 = 8" in str(info.value), (
        f"Lean ViTSpec.forward with its formula: {info.value}"
    )


def test_dsl_device_disagreement_is_refused(device: str) -> None:
    # The meta device is always available, so this runs without a second real device.
    with pytest.raises(ShapeError) as info:
        P.pos_add(torch.zeros(4, 3, device=device), torch.zeros(4, 3, device="meta"))
    err = info.value
    assert err.argument == "pos" and err.actual == torch.device("meta"), f"DSL device: {err}"
    assert "device" in str(err), f"DSL the message says device: {err}"


def test_dsl_primitives_run_checked_on_the_test_device(device: str) -> None:
    x = torch.randn(196, E, device=device)
    gamma, beta = torch.ones(E, device=device), torch.zeros(E, device=device)
    with bind_dims(DIMS):
        y = P.layer_norm(x, gamma, beta, 1e-6)
        pooled = P.mean_pool(y)
        logits = P.head(pooled, torch.zeros(5, E, device=device), torch.zeros(5, device=device))
    assert logits.shape == (5,) and logits.device == x.device, (
        "Lean ViTSpec.forward logits : (numClasses,) on the input's device"
    )


# -- the switch --------------------------------------------------------------------
def test_dsl_checks_are_on_by_default() -> None:
    assert shape_checks_enabled() is True, "DSL shape checks default to on"


def test_dsl_switch_as_a_call() -> None:
    shape_checks(False)
    assert shape_checks_enabled() is False
    # Broadcasts fine in torch, so only a shape check could object.
    assert add_pos(torch.zeros(5, 3), torch.zeros(1, 3)).shape == (5, 3), "DSL off: no check"
    shape_checks(True)
    assert shape_checks_enabled() is True
    with pytest.raises(ShapeError):
        add_pos(torch.zeros(5, 3), torch.zeros(1, 3))


def test_dsl_switch_as_a_context_manager_restores_even_on_error() -> None:
    with shape_checks(False):
        assert shape_checks_enabled() is False
        with bind_dims(DIMS):
            P.pos_add(torch.zeros(195, E), torch.zeros(195, E))  # wrong T, not checked
        with shape_checks(True):
            assert shape_checks_enabled() is True, "DSL nested on"
        assert shape_checks_enabled() is False, "DSL leaving the nested block restores off"
    assert shape_checks_enabled() is True, "DSL leaving the block restores on"
    with pytest.raises(RuntimeError), shape_checks(False):
        raise RuntimeError("boom")
    assert shape_checks_enabled() is True, "DSL an exception inside the block still restores the switch"


def test_dsl_off_does_no_checking_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off, a checked call is the flag test plus the plain call: the checker is never entered."""
    calls: list[str] = []
    real = dims_module._pre_check

    def spy(spec: Any, *args: Any) -> None:
        calls.append(spec.name)
        real(spec, *args)

    monkeypatch.setattr(dims_module, "_pre_check", spy)
    x, pos = torch.zeros(4, 3), torch.zeros(4, 3)
    with shape_checks(False):
        out = P.pos_add(x, pos)
    assert calls == [], f"DSL checks off must not run the checker, it ran for {calls}"
    raw = P.pos_add.__wrapped__  # type: ignore[attr-defined]
    assert torch.equal(out, raw(x, pos)), "DSL off returns the undecorated function's result"
    P.pos_add(x, pos)
    assert calls == ["pos_add"], "DSL checks on run the checker once per call"


_ENV_SCRIPT = textwrap.dedent(
    """
    import json, torch, vitspec
    from vitspec import Dims, ShapeError, ViTConfig, bind_dims, primitives as P
    initial = vitspec.shape_checks_enabled()
    d = Dims.from_config(ViTConfig(embed_dim=8, hidden_dim=8, head_count=2), 3, 224, 224)
    def raised():
        try:
            with bind_dims(d):
                P.pos_add(torch.zeros(195, 8), torch.zeros(195, 8))
        except ShapeError:
            return True
        return False
    first = raised()
    vitspec.shape_checks(True)
    print(json.dumps({"initial": initial, "raised": first, "raised_after_on": raised()}))
    """
)


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("off", False), (None, True)], ids=["0", "off", "unset"])
def test_dsl_env_var_sets_the_switch_at_import(value: str | None, enabled: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VITSPEC_SHAPE_CHECKS"}
    if value is not None:
        env["VITSPEC_SHAPE_CHECKS"] = value
    proc = subprocess.run([sys.executable, "-c", _ENV_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"initial": enabled, "raised": enabled, "raised_after_on": True}, (
        f"DSL VITSPEC_SHAPE_CHECKS={value!r} at import: checks {'on' if enabled else 'off'}, "
        f"and shape_checks(True) turns them back on; got {got}"
    )


def test_nested_checked_calls_are_checked_only_under_all() -> None:
    """The outermost checked call checks its boundary; ``shape_checks("all")`` also checks calls it makes."""
    from vitspec import ShapeError, ViTConfig, bind_dims, checked, shape_checks
    from vitspec.dims import Dims

    @checked
    def inner(x: Float[torch.Tensor, "tokens embed_dim"]) -> Float[torch.Tensor, "tokens embed_dim"]:
        return x

    @checked
    def outer(x: Float[torch.Tensor, "tokens embed_dim"]) -> Float[torch.Tensor, " embed_dim"]:
        inner(x[:, :-1])  # a wrong embed_dim, visible only to a check of the nested call
        return x.sum(0)

    d = Dims.from_config(ViTConfig(4, 4, 4, 0, 8, 16, 2, 1, 3), 3, 8, 8)  # tokens 4, embed_dim 8
    ok = torch.zeros(4, 8)
    with bind_dims(d):
        assert outer(ok).shape == (8,), "default: the nested call runs unchecked"
        with shape_checks("all"), pytest.raises(ShapeError, match=r"inner: argument 'x' dimension 'embed_dim'"):
            outer(ok)
        with pytest.raises(ShapeError, match="embed_dim"):
            inner(ok[:, :-1])  # called directly, inner is the outermost call and is checked
        with pytest.raises(ShapeError, match="tokens = out_h\\*out_w = 2\\*2 = 4"):
            outer(torch.zeros(5, 8))  # the boundary of the outer call is always checked


def test_shape_checks_rejects_unknown_modes() -> None:
    from vitspec import shape_checks

    with pytest.raises(ValueError, match="True, False or 'all'"):
        shape_checks("some")
