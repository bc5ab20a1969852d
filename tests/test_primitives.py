"""OpInfo-style checks of every primitive: explicit backward == autograd through the forward (float64).

Each :class:`OpInfo` names a forward primitive, how to call its explicit backward, and a
table of sample inputs (with and without a leading batch axis, and the op's special cases).
For each sample the forward is differentiated by autograd with a random cotangent and the
result compared with the explicit backward, once with the fused derivative kernels (the
default) and once with the spelled-out reference formulas (``fused_backward(False)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from vitspec import primitives as P
from vitspec.primitives import fused_backward

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _r(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=DT) * scale


@dataclass
class Sample:
    """Differentiable inputs (in order), non-tensor keyword options and a label for the test id."""

    inputs: tuple[Tensor | None, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class OpInfo:
    """``forward(*inputs, **kw) -> out``; ``backward(*inputs, dy, **kw) -> grads of the non-None inputs, in order``."""

    name: str
    forward: Callable[..., Tensor]
    backward: Callable[..., Sequence[Tensor | None]]
    samples: list[Sample]
    covers: tuple[str, ...] = ()  # primitives.__all__ names this entry exercises


def _act_samples(seed: int) -> list[Sample]:
    # Keep |x| away from 0 so ReLU's kink is not sampled (its subgradient there is a convention).
    out = []
    for i, shape in enumerate([(7,), (3, 5), (2, 3, 4)]):
        x = _r(*shape, seed=seed + i)
        x = x + torch.sign(x) * 0.1
        out.append(Sample((x,), label=f"x{shape}"))
    return out


def _mha_samples() -> list[Sample]:
    out = []
    for i, (shape, e, heads, bias, cached) in enumerate(
        [
            ((4, 6), 6, 2, False, False),
            ((2, 4, 6), 6, 3, True, True),
            ((2, 5, 5), 5, 2, True, False),  # heads do not divide embed_dim: attn_dim = 4 < 5
            ((3, 6), 6, 1, False, True),
        ]
    ):
        a = heads * (e // heads)
        x = _r(*shape, seed=10 + i)
        ws = [_r(e, a, seed=20 + i, scale=0.5), _r(e, a, seed=30 + i, scale=0.5), _r(e, a, seed=40 + i, scale=0.5)]
        wo = _r(a, e, seed=50 + i, scale=0.5)
        bs: list[Tensor | None] = [_r(a, seed=60 + i), _r(a, seed=61 + i), _r(a, seed=62 + i), _r(e, seed=63 + i)]
        if not bias:
            bs = [None] * 4
        label = f"x{shape}-h{heads}-{'bias' if bias else 'nobias'}-{'cache' if cached else 'recompute'}"
        out.append(Sample((x, *ws, wo, *bs), {"heads": heads, "cached": cached}, label))
    return out


def _mha_forward(x, wq, wk, wv, wo, bq, bk, bv, bo, *, heads, cached):  # type: ignore[no-untyped-def]
    return P.mha(x, wq, wk, wv, wo, bq, bk, bv, bo, heads=heads)[0]


def _mha_backward(x, wq, wk, wv, wo, bq, bk, bv, bo, dy, *, heads, cached):  # type: ignore[no-untyped-def]
    cache = P.mha(x, wq, wk, wv, wo, bq, bk, bv, bo, heads=heads)[1] if cached else None
    dx, g = P.mha_backward(x, wq, wk, wv, wo, dy, bq, bk, bv, bo, heads=heads, cache=cache)
    biases = [
        g[k] if b is not None else None for k, b in zip(("dbq", "dbk", "dbv", "dbo"), (bq, bk, bv, bo), strict=True)
    ]
    return [dx, g["dWq"], g["dWk"], g["dWv"], g["dWo"], *biases]


def _conv_samples() -> list[Sample]:
    out = []
    # (batch, C, H, W, E, kh, kw, stride, padding)
    cases = [
        ((), 2, 4, 6, 3, 2, 2, 2, 0),  # patchify, no batch
        ((2,), 2, 4, 6, 3, 2, 2, 2, 0),  # patchify, batch
        ((2,), 1, 5, 7, 3, 2, 2, 2, 0),  # patchify with leftover rows/cols (ignored by the conv)
        ((2,), 2, 6, 8, 3, 4, 4, 2, 1),  # overlapping with padding
        ((), 1, 10, 14, 2, 2, 4, 2, 0),  # rectangular patch, overlapping in w
        ((3,), 2, 4, 4, 2, 4, 4, 4, 0),  # one patch
    ]
    for i, (b, c, h, w, e, kh, kw, s, p) in enumerate(cases):
        x = _r(*b, c, h, w, seed=70 + i)
        k = _r(e, c, kh, kw, seed=80 + i, scale=0.5)
        bias = _r(e, seed=90 + i)
        out.append(Sample((x, k, bias), {"stride": s, "padding": p}, f"x{(*b, c, h, w)}-k{kh}x{kw}-s{s}-p{p}"))
    return out


def _linear_ln_samples() -> list[Sample]:
    out = []
    for i, (b, c, h, w, e, k) in enumerate([((), 2, 4, 6, 3, 2), ((2,), 3, 6, 6, 4, 3), ((2,), 1, 5, 4, 2, 2)]):
        x = _r(*b, c, h, w, seed=100 + i)
        g_in, b_in = 1 + 0.1 * _r(c, k, k, seed=110 + i), 0.1 * _r(c, k, k, seed=120 + i)
        ker, bias = _r(e, c, k, k, seed=130 + i, scale=0.5), _r(e, seed=140 + i)
        g_out, b_out = 1 + 0.1 * _r(e, seed=150 + i), 0.1 * _r(e, seed=160 + i)
        out.append(Sample((x, g_in, b_in, ker, bias, g_out, b_out), {"eps": 1e-5}, f"x{(*b, c, h, w)}-p{k}"))
    return out


def _linear_ln_backward(x, g_in, b_in, ker, bias, g_out, b_out, dy, *, eps):  # type: ignore[no-untyped-def]
    dgi, dbi, dk, db, dgo, dbo, dx = P.patch_linear_ln_backward(x, g_in, b_in, ker, bias, g_out, dy, eps)
    return [dx, dgi, dbi, dk, db, dgo, dbo]


def _ln_samples() -> list[Sample]:
    out = []
    for i, shape in enumerate([(6,), (4, 6), (2, 3, 6), (2, 3, 1)]):
        n = shape[-1]
        x = _r(*shape, seed=170 + i, scale=2.0) + 0.5
        out.append(Sample((x, 1 + 0.1 * _r(n, seed=180 + i), 0.1 * _r(n, seed=190 + i)), {"eps": 1e-6}, f"x{shape}"))
    return out


def _tok_samples(first_or_index: str) -> list[Sample]:
    out = []
    for i, (shape, k) in enumerate([((5, 4), 0), ((2, 5, 4), 1), ((2, 3, 1, 4), 0)]):
        out.append(Sample((_r(*shape, seed=200 + i),), {first_or_index: k}, f"x{shape}-{first_or_index}{k}"))
    return out


OPS: list[OpInfo] = [
    OpInfo(
        "relu",
        P.relu,
        lambda x, dy: [P.relu_backward(x, dy)],
        _act_samples(1),
        ("relu", "relu_backward", "relu_backward_reference"),
    ),
    OpInfo(
        "relu(from output)",  # the encoder feeds relu's output to relu_backward: same mask
        P.relu,
        lambda x, dy: [P.relu_backward(P.relu(x), dy)],
        _act_samples(2),
    ),
    OpInfo(
        "gelu_erf",
        P.gelu_erf,
        lambda x, dy: [P.gelu_erf_backward(x, dy)],
        _act_samples(3),
        ("gelu_erf", "gelu_erf_backward", "gelu_erf_backward_reference"),
    ),
    OpInfo(
        "gelu_tanh",
        P.gelu_tanh,
        lambda x, dy: [P.gelu_tanh_backward(x, dy)],
        _act_samples(4),
        ("gelu_tanh", "gelu_tanh_backward", "gelu_tanh_backward_reference"),
    ),
    OpInfo(
        "softmax",
        P.softmax,
        lambda s, dy: [P.softmax_backward(P.softmax(s), dy)],
        [Sample((_r(*sh, seed=5 + i, scale=3.0),), label=f"s{sh}") for i, sh in enumerate([(4, 4), (2, 3, 4, 5)])],
        ("softmax", "softmax_backward", "softmax_backward_reference"),
    ),
    OpInfo(
        "layer_norm",
        lambda x, g, b, *, eps: P.layer_norm(x, g, b, eps),
        lambda x, g, b, dy, *, eps: list(P.layer_norm_backward(x, g, dy, eps)),
        _ln_samples(),
        ("layer_norm", "layer_norm_backward", "layer_norm_backward_reference"),
    ),
    OpInfo(
        "linear",
        lambda x, w, b: P.linear(x, w, b),
        lambda x, w, b, dy: (
            list(P.linear_backward(x, w, dy)) if b is not None else list(P.linear_backward(x, w, dy))[:2]
        ),
        [
            Sample((_r(4, 3, seed=300), _r(3, 5, seed=301), _r(5, seed=302)), label="x(4,3)"),
            Sample((_r(2, 4, 3, seed=303), _r(3, 5, seed=304), _r(5, seed=305)), label="x(2,4,3)"),
            Sample((_r(2, 4, 3, seed=306), _r(3, 5, seed=307), None), label="x(2,4,3)-nobias"),
        ],
        ("linear", "linear_backward"),
    ),
    OpInfo(
        "head",
        P.head,
        lambda x, w, b, dy: list(P.head_backward(x, w, dy)),
        [
            Sample((_r(4, seed=310), _r(3, 4, seed=311), _r(3, seed=312)), label="pooled(4)"),
            Sample((_r(5, 4, seed=313), _r(3, 4, seed=314), _r(3, seed=315)), label="pooled(5,4)"),
        ],
        ("head", "head_backward"),
    ),
    OpInfo("mha", _mha_forward, _mha_backward, _mha_samples(), ("mha", "mha_backward", "AttentionCache")),
    OpInfo(
        "conv2d",
        lambda x, k, b, *, stride, padding: P.conv2d(x, k, b, stride, padding),
        lambda x, k, b, dy, *, stride, padding: (lambda r: [r[2], r[0], r[1]])(
            P.conv2d_backward(x, k, dy, stride, padding)
        ),
        _conv_samples(),
        ("conv2d", "conv2d_backward"),
    ),
    OpInfo(
        "patch_linear_ln",
        lambda x, gi, bi, k, b, go, bo, *, eps: P.patch_linear_ln(x, gi, bi, k, b, go, bo, eps),
        _linear_ln_backward,
        _linear_ln_samples(),
        ("patch_linear_ln", "patch_linear_ln_backward"),
    ),
    OpInfo(
        "grid_to_tokens",
        P.grid_to_tokens,
        lambda g, dy: [P.grid_to_tokens_backward(dy, g.shape[-2], g.shape[-1])],
        [Sample((_r(*sh, seed=320 + i),), label=f"g{sh}") for i, sh in enumerate([(3, 2, 4), (2, 3, 2, 4)])],
        ("grid_to_tokens", "grid_to_tokens_backward"),
    ),
    OpInfo(
        "pos_add",
        P.pos_add,
        lambda t, pos, dy: list(reversed(P.pos_add_backward(dy))),
        [
            Sample((_r(5, 4, seed=330), _r(5, 4, seed=331)), label="t(5,4)"),
            Sample((_r(3, 5, 4, seed=332), _r(5, 4, seed=333)), label="t(3,5,4)"),
        ],
        ("pos_add", "pos_add_backward"),
    ),
    OpInfo(
        "cls_prepend",
        P.cls_prepend,
        lambda t, c, dy: list(P.cls_prepend_backward(dy)),
        [
            Sample((_r(5, 4, seed=340), _r(4, seed=341)), label="t(5,4)"),
            Sample((_r(3, 5, 4, seed=342), _r(4, seed=343)), label="t(3,5,4)"),
            Sample((_r(2, 0, 4, seed=344), _r(4, seed=345)), label="t(2,0,4)-no-patches"),
        ],
        ("cls_prepend", "cls_prepend_backward"),
    ),
    OpInfo(
        "mean_pool",
        lambda e, *, first: P.mean_pool(e, first),
        lambda e, dy, *, first: [P.mean_pool_backward(dy, e.shape[-2], first)],
        _tok_samples("first"),
        ("mean_pool", "mean_pool_backward"),
    ),
    OpInfo(
        "token_select",
        lambda e, *, index: P.token_select(e, index),
        lambda e, dy, *, index: [P.token_select_backward(dy, e.shape[-2], index)],
        _tok_samples("index"),
        ("token_select", "token_select_backward"),
    ),
]

CASES = [pytest.param(op, s, id=f"{op.name}-{s.label}") for op in OPS for s in op.samples]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize(("op", "sample"), CASES)
def test_backward_matches_autograd(op: OpInfo, sample: Sample, fused: bool) -> None:
    inputs = [t.detach().clone().requires_grad_() if t is not None else None for t in sample.inputs]
    out = op.forward(*inputs, **sample.kwargs)
    dy = _r(*out.shape, seed=999)
    diff = [t for t in inputs if t is not None]
    expected = torch.autograd.grad(out, diff, dy, allow_unused=True)
    with torch.no_grad(), fused_backward(fused):
        got = op.backward(*[t.detach() if t is not None else None for t in inputs], dy, **sample.kwargs)
    got = [g for g in got if g is not None]
    assert len(got) == len(diff)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        e = torch.zeros_like(diff[i]) if e is None else e
        assert g.shape == diff[i].shape, f"{op.name} grad {i}: shape {tuple(g.shape)} != {tuple(diff[i].shape)}"
        assert g.dtype == DT
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"{op.name} grad {i}: {m}")


def test_every_primitive_is_covered() -> None:
    """The table above exercises every forward/backward pair the package exports."""
    covered = {n for op in OPS for n in op.covers}
    exported = set(P.__all__) - {"fused_backward", "fused_backward_enabled", "layer_norm_reference"}
    assert exported - covered == set()


@pytest.mark.parametrize("shape", [(6,), (4, 6), (2, 3, 6), (2, 3, 1)])
def test_layer_norm_equals_lean_reference(shape: tuple[int, ...]) -> None:
    """``F.layer_norm`` (the forward) computes the Lean formula (population variance, eps inside the sqrt)."""
    x = _r(*shape, seed=1, scale=3.0) + 1.0
    g, b = 1 + 0.1 * _r(shape[-1], seed=2), 0.1 * _r(shape[-1], seed=3)
    for eps in (1e-12, 1e-6, 1e-5, 0.5):
        torch.testing.assert_close(
            P.layer_norm(x, g, b, eps), P.layer_norm_reference(x, g, b, eps), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize(
    ("fused_fn", "ref_fn", "args"),
    [
        (P.layer_norm_backward, P.layer_norm_backward_reference, "ln"),
        (P.softmax_backward, P.softmax_backward_reference, "sm"),
        (P.gelu_erf_backward, P.gelu_erf_backward_reference, "act"),
        (P.gelu_tanh_backward, P.gelu_tanh_backward_reference, "act"),
        (P.relu_backward, P.relu_backward_reference, "act"),
    ],
    ids=["layer_norm", "softmax", "gelu_erf", "gelu_tanh", "relu"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_kernel_equals_reference_formula(fused_fn: Any, ref_fn: Any, args: str, dtype: torch.dtype) -> None:
    """The fused derivative kernels compute the reference formulas (float32: to float32 rounding)."""
    x, dy = _r(2, 5, 7, seed=11).to(dtype), _r(2, 5, 7, seed=12).to(dtype)
    if args == "ln":
        a: tuple[Any, ...] = (x, (1 + 0.1 * _r(7, seed=13)).to(dtype), dy, 1e-6)
    elif args == "sm":
        a = (torch.softmax(x * 3, -1), dy)
    else:
        a = (x, dy)
    with fused_backward(True):
        f = fused_fn(*a)
    with fused_backward(False):
        r = fused_fn(*a)
    direct = ref_fn(*a)
    f, r, direct = (t if isinstance(t, tuple) else (t,) for t in (f, r, direct))
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for a1, a2, a3 in zip(f, r, direct, strict=True):
        torch.testing.assert_close(a1, a2, **tol)
        assert torch.equal(a2, a3)


def test_fused_backward_switch_restores() -> None:
    before = P.fused_backward_enabled()  # True unless VITSPEC_FUSED_BACKWARD=0
    for flag in (False, True):
        with fused_backward(flag):
            assert P.fused_backward_enabled() is flag
        assert P.fused_backward_enabled() is before


def test_conv2d_backward_can_skip_the_input_gradient() -> None:
    for s in _conv_samples():
        x, k, _ = s.inputs
        dy = _r(*P.conv2d(x, k, s.inputs[2], **s.kwargs).shape, seed=5)
        full = P.conv2d_backward(x, k, dy, s.kwargs["stride"], s.kwargs["padding"])
        part = P.conv2d_backward(x, k, dy, s.kwargs["stride"], s.kwargs["padding"], need_dx=False)
        assert part[2] is None
        assert torch.equal(full[0], part[0]) and torch.equal(full[1], part[1])


@pytest.mark.parametrize("fn", ["layer_norm_backward", "softmax_backward", "gelu_erf_backward", "relu_backward"])
def test_backward_primitives_run_without_autograd(fn: str) -> None:
    """Fused kernels are plain functions: they run under inference mode and build no graph."""
    x, dy = _r(3, 4, seed=1), _r(3, 4, seed=2)
    args: tuple[Any, ...] = (x, 1 + _r(4, seed=3), dy, 1e-6) if fn == "layer_norm_backward" else (x, dy)
    if fn == "softmax_backward":
        args = (torch.softmax(x, -1), dy)
    ref = getattr(P, fn)(*args)
    with torch.inference_mode():
        got = getattr(P, fn)(*args)
    for a, b in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,), strict=True):
        assert torch.equal(a, b)
