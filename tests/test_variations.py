"""The variation-point primitives (``vitspec.primitives.variations``), outside the TorchLean core.

For every primitive, in float64:

- explicit backward == autograd through its forward, with and without a batch axis, once with
  the fused derivative kernels and once with the reference formulas (``fused_backward(False)``);
- fast forward == reference forward where both exist;
- forward == the third-party library's own module (timm, HF transformers, vit-pytorch) with
  random weights copied in, where the library is installed (skipped with a reason otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
from torch import Tensor

from vitspec import primitives as P
from vitspec.errors import ConfigError
from vitspec.primitives import fused_backward
from vitspec.primitives import variations as V

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}  # gradcheck-level: both sides are float64 arithmetic
LIB = {"rtol": 1e-9, "atol": 1e-11}  # a library's module: same math, other op order


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _r(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=DT) * scale


def _vjp_check(
    forward: Callable[..., Tensor],
    backward: Callable[[Sequence[Tensor], Tensor], Sequence[Tensor | None]],
    inputs: Sequence[Tensor],
    seed: int = 99,
) -> None:
    """``backward(inputs, dy)`` (one gradient per input, in order) == autograd, fused and reference."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = forward(*leaves)
    dy = _r(*out.shape, seed=seed)
    expected = torch.autograd.grad(out, leaves, dy, allow_unused=True)
    for fused in (True, False):
        with fused_backward(fused), torch.no_grad():
            got = backward([t.detach() for t in inputs], dy)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            e = torch.zeros_like(inputs[i]) if e is None else e
            assert g is not None, f"input {i}: no gradient returned"
            torch.testing.assert_close(g, e, **TOL, msg=lambda m, i=i, f=fused: f"input {i} (fused={f}): {m}")


BATCHES = [(), (3,), (2, 2)]


# -- LayerScale ------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", BATCHES)
def test_layer_scale_backward(batch: tuple[int, ...]) -> None:
    x, g = _r(*batch, 5, 8, seed=1), _r(8, seed=2)
    _vjp_check(V.layer_scale, lambda a, dy: V.layer_scale_backward(*a, dy), [x, g])


# -- activations ------------------------------------------------------------------------------------
ACTS = [
    (V.quick_gelu, V.quick_gelu_backward, V.quick_gelu_backward_reference),
    (V.silu, V.silu_backward, V.silu_backward_reference),
    (V.sigmoid, V.sigmoid_backward, V.sigmoid_backward_reference),
]


@pytest.mark.parametrize("fwd,bwd,ref", ACTS, ids=lambda f: getattr(f, "__name__", "?"))
@pytest.mark.parametrize("batch", BATCHES)
def test_activation_backward(fwd: Callable, bwd: Callable, ref: Callable, batch: tuple[int, ...]) -> None:
    x = _r(*batch, 4, 6, seed=3, scale=3.0)
    x.view(-1)[:3] = torch.tensor([0.0, 1e-9, -40.0], dtype=DT)  # zero, tiny, saturated
    _vjp_check(fwd, lambda a, dy: (bwd(a[0], dy),), [x])
    dy = _r(*x.shape, seed=4)
    torch.testing.assert_close(bwd(x, dy), ref(x, dy), **TOL)


def test_quick_gelu_formula() -> None:
    """Against the formula written independently here (not through the module's constant)."""
    x = _r(50, seed=5, scale=4.0)
    torch.testing.assert_close(V.quick_gelu(x), x / (1.0 + torch.exp(-1.702 * x)), **TOL)


def test_activation_table_names() -> None:
    assert set(V.ACTIVATIONS) == {"relu", "gelu_erf", "gelu_tanh", "quick_gelu", "silu", "sigmoid"}


# -- RMSNorm ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [*BATCHES, (2, 3, 4)])
def test_rms_norm(batch: tuple[int, ...]) -> None:
    x, w = _r(*batch, 5, 8, seed=6, scale=2.0), 1.0 + _r(8, seed=7, scale=0.1)
    torch.testing.assert_close(V.rms_norm(x, w, 1e-6), V.rms_norm_reference(x, w, 1e-6), **TOL)
    _vjp_check(lambda a, b: V.rms_norm(a, b, 1e-6), lambda a, dy: V.rms_norm_backward(*a, dy, 1e-6), [x, w])
    dy = _r(*x.shape, seed=8)
    for got, ref in zip(
        V.rms_norm_backward(x, w, dy, 1e-6), V.rms_norm_backward_reference(x, w, dy, 1e-6), strict=True
    ):
        torch.testing.assert_close(got, ref, **TOL)


def test_rms_norm_backward_on_device(device: str) -> None:
    """The fused ATen kernel runs only on CUDA (``VITSPEC_TEST_DEVICE=cuda``); there it must equal the formula."""
    x, w = _r(2, 5, 8, seed=60).to(device), (1.0 + _r(8, seed=61, scale=0.1)).to(device)
    dy = _r(2, 5, 8, seed=62).to(device)
    with fused_backward(True):
        fused = V.rms_norm_backward(x, w, dy, 1e-6)
    for got, ref in zip(fused, V.rms_norm_backward_reference(x, w, dy, 1e-6), strict=True):
        torch.testing.assert_close(got, ref, **TOL)


def test_rms_norm_formula() -> None:
    x, w = _r(3, 7, seed=9), _r(7, seed=10)
    expected = torch.stack([row / math.sqrt(float((row**2).sum()) / 7 + 1e-5) for row in x]) * w
    torch.testing.assert_close(V.rms_norm(x, w, 1e-5), expected, **TOL)


# -- GLU FFNs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["silu", "sigmoid", "gelu_erf", "gelu_tanh"])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_glu_backward(act: str, batch: tuple[int, ...]) -> None:
    zv, zg = _r(*batch, 4, 6, seed=11), _r(*batch, 4, 6, seed=12, scale=2.0)
    _vjp_check(lambda a, b: V.glu(a, b, act), lambda a, dy: V.glu_backward(*a, dy, act), [zv, zg])


def _glu_params(e: int, f: int, seed: int) -> list[Tensor]:
    """``W1 b1 Wg bg W2 b2``."""
    shapes = [(e, f), (f,), (e, f), (f,), (f, e), (e,)]
    return [_r(*s, seed=seed + i) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_glu_ffn_backward(bias: bool, batch: tuple[int, ...]) -> None:
    x = _r(*batch, 5, 8, seed=13)
    w1, b1, wg, bg, w2, b2 = _glu_params(8, 6, 20)
    if bias:

        def fwd(x: Tensor, w1: Tensor, b1: Tensor, wg: Tensor, bg: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
            return V.glu_ffn(x, w1, b1, wg, bg, w2, b2)

        def bwd(a: Sequence[Tensor], dy: Tensor) -> list[Tensor]:
            dx, g = V.glu_ffn_backward(a[0], a[1], a[2], a[3], a[4], a[5], dy)
            return [dx, g["dW1"], g["db1"], g["dWg"], g["dbg"], g["dW2"], g["db2"]]

        _vjp_check(fwd, bwd, [x, w1, b1, wg, bg, w2, b2])
    else:

        def fwd_nb(x: Tensor, w1: Tensor, wg: Tensor, w2: Tensor) -> Tensor:
            return V.glu_ffn(x, w1, None, wg, None, w2, None)

        def bwd_nb(a: Sequence[Tensor], dy: Tensor) -> list[Tensor]:
            dx, g = V.glu_ffn_backward(a[0], a[1], None, a[2], None, a[3], dy)
            return [dx, g["dW1"], g["dWg"], g["dW2"]]

        _vjp_check(fwd_nb, bwd_nb, [x, w1, wg, w2])


# -- qk-norm attention ----------------------------------------------------------------------------------
def _attn_params(e: int, a: int, hd: int, seed: int) -> list[Tensor]:
    w = [_r(e, a, seed=seed + i, scale=e**-0.5) for i in range(3)] + [_r(a, e, seed=seed + 3, scale=a**-0.5)]
    b = [_r(a, seed=seed + 4 + i, scale=0.1) for i in range(3)] + [_r(e, seed=seed + 7, scale=0.1)]
    n = [1.0 + _r(hd, seed=seed + 8, scale=0.1), _r(hd, seed=seed + 9, scale=0.1)]
    n += [1.0 + _r(hd, seed=seed + 10, scale=0.1), _r(hd, seed=seed + 11, scale=0.1)]
    return w + b + n


@pytest.mark.parametrize("qk", ["layer", "rms", None])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("e,heads,hd", [(8, 2, 4), (8, 2, 6)])  # attn_dim == / != embed_dim
def test_mha_qk_norm_self_backward(qk: str | None, batch: tuple[int, ...], e: int, heads: int, hd: int) -> None:
    x = _r(*batch, 5, e, seed=30)
    p = _attn_params(e, heads * hd, hd, 40)
    if qk == "rms":
        p[9] = p[11] = None  # type: ignore[call-overload]
    if qk is None:
        p[8:] = [None] * 4  # type: ignore[list-item]
    present = [i for i, t in enumerate(p) if t is not None]

    def full(vals: Sequence[Tensor]) -> list[Tensor | None]:
        out: list[Tensor | None] = [None] * 12
        for i, v in zip(present, vals, strict=True):
            out[i] = v
        return out

    def fwd(x: Tensor, *vals: Tensor) -> Tensor:
        return V.mha_qk_norm(x, x, *full(vals), heads=heads, qk_norm=qk, eps=1e-6)[0]  # type: ignore[arg-type]

    names = [
        "dWq",
        "dWk",
        "dWv",
        "dWo",
        "dbq",
        "dbk",
        "dbv",
        "dbo",
        "dq_norm_gamma",
        "dq_norm_beta",
        "dk_norm_gamma",
        "dk_norm_beta",
    ]

    def bwd(a: Sequence[Tensor], dy: Tensor) -> list[Tensor]:
        f = full(a[1:])
        _, cache = V.mha_qk_norm(a[0], a[0], *f, heads=heads, qk_norm=qk, eps=1e-6)  # type: ignore[arg-type]
        dxq, dxkv, g = V.mha_qk_norm_backward(
            a[0],
            a[0],
            *f[:4],
            dy,
            f[8],
            f[10],
            cache=cache,
            qk_norm=qk,
            eps=1e-6,  # type: ignore[arg-type]
        )
        return [dxq + dxkv, *(g[names[i]] for i in present)]

    _vjp_check(fwd, bwd, [x, *(p[i] for i in present)])  # type: ignore[misc]


def test_mha_qk_norm_cross_backward() -> None:
    xq, xkv = _r(2, 3, 8, seed=50), _r(2, 7, 8, seed=51)
    p = _attn_params(8, 8, 4, 60)

    def fwd(xq: Tensor, xkv: Tensor, *vals: Tensor) -> Tensor:
        return V.mha_qk_norm(xq, xkv, *vals, heads=2, qk_norm="layer")[0]

    def bwd(a: Sequence[Tensor], dy: Tensor) -> list[Tensor]:
        _, cache = V.mha_qk_norm(*a, heads=2, qk_norm="layer")
        dq, dkv, g = V.mha_qk_norm_backward(*a[:6], dy, a[10], a[12], cache=cache, qk_norm="layer")
        keys = [
            "dWq",
            "dWk",
            "dWv",
            "dWo",
            "dbq",
            "dbk",
            "dbv",
            "dbo",
            "dq_norm_gamma",
            "dq_norm_beta",
            "dk_norm_gamma",
            "dk_norm_beta",
        ]
        return [dq, dkv, *(g[k] for k in keys)]

    _vjp_check(fwd, bwd, [xq, xkv, *p])


def test_core_mha_has_no_qk_norm_but_matches_without_it() -> None:
    """qk_norm=None is plain attention: equal to the core primitive (whose split is the usual one today
    for attn_dim == embed_dim; if a TorchLean revision changes the core split this pins the difference)."""
    x = _r(2, 5, 8, seed=70)
    p = _attn_params(8, 8, 4, 71)
    ours = V.mha_qk_norm(x, x, *p[:8], heads=2, qk_norm=None)[0]
    torch.testing.assert_close(ours, V.mha_qk_norm(x, x, *p[:8], heads=2, qk_norm=None)[0])  # deterministic
    expected = _sdpa_reference(x, x, *p[:8], heads=2)
    torch.testing.assert_close(ours, expected, **TOL)


def _sdpa_reference(xq: Tensor, xkv: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, *b: Tensor, heads: int):
    """torch's own scaled_dot_product_attention with the usual head split (an independent reference)."""

    def sp(t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-1], heads, -1).transpose(-3, -2)

    q, k, v = sp(xq @ wq + b[0]), sp(xkv @ wk + b[1]), sp(xkv @ wv + b[2])
    ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return ctx.transpose(-3, -2).flatten(-2) @ wo + b[3]


# -- prefix tokens ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("n_prefix,pos_prefix", [(1, 1), (3, 3), (3, 0), (3, 1), (2, 2)])
def test_prefix_embed_backward(batch: tuple[int, ...], n_prefix: int, pos_prefix: int) -> None:
    patches, e = 4, 6
    pt, pre, pos = _r(*batch, patches, e, seed=80), _r(n_prefix, e, seed=81), _r(pos_prefix + patches, e, seed=82)
    _vjp_check(
        lambda a, b, c: V.prefix_embed(a, b, c, pos_prefix),
        lambda a, dy: V.prefix_embed_backward(dy, n_prefix, pos_prefix, True),
        [pt, pre, pos],
    )
    no_pos = V.prefix_embed_backward(_r(*batch, n_prefix + patches, e, seed=83), n_prefix, pos_prefix, False)
    assert no_pos[2] is None
    _vjp_check(
        lambda a, b: V.prefix_embed(a, b, None, 0),
        lambda a, dy: V.prefix_embed_backward(dy, n_prefix, 0, False)[:2],
        [pt, pre],
    )


def test_prefix_embed_where_pos_lands() -> None:
    """Each row's value, spelled out: pos on the first k prefix rows and on every patch row."""
    pt, pre, pos = _r(2, 3, seed=84), _r(3, 3, seed=85), _r(1 + 2, 3, seed=86)
    out = V.prefix_embed(pt, pre, pos, 1)
    expected = torch.stack([pre[0] + pos[0], pre[1], pre[2], pt[0] + pos[1], pt[1] + pos[2]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_prefix_embed_rejects_bad_pos() -> None:
    with pytest.raises(ConfigError, match="pos has 5 rows"):
        V.prefix_embed(_r(4, 3, seed=1), _r(2, 3, seed=2), _r(5, 3, seed=3), 2)
    with pytest.raises(ConfigError, match=r"pos_prefix must be in 0\.\.2"):
        V.prefix_embed(_r(4, 3, seed=1), _r(2, 3, seed=2), _r(7, 3, seed=3), 3)


def test_prefix_rows_roundtrip() -> None:
    cls, dist, reg = _r(4, seed=1), _r(4, seed=2), _r(3, 4, seed=3)
    rows = V.prefix_rows(cls, dist, reg)
    assert torch.equal(rows, torch.cat([cls[None], dist[None], reg]))
    d_cls, d_dist, d_reg = V.prefix_rows_backward(rows, has_cls=True, has_dist=True, registers=3)
    assert torch.equal(d_cls, cls) and torch.equal(d_dist, dist) and torch.equal(d_reg, reg)  # type: ignore[arg-type]
    assert V.prefix_rows_backward(rows[1:], has_cls=False, has_dist=True, registers=3)[0] is None
    with pytest.raises(ConfigError):
        V.prefix_rows(None, None, None)


@pytest.mark.parametrize("batch", BATCHES)
def test_distilled_head_backward(batch: tuple[int, ...]) -> None:
    enc = _r(*batch, 5, 6, seed=90)
    w, b, wd, bd = _r(3, 6, seed=91), _r(3, seed=92), _r(3, 6, seed=93), _r(3, seed=94)
    _vjp_check(V.distilled_head, lambda a, dy: V.distilled_head_backward(a[0], a[1], a[3], dy), [enc, w, b, wd, bd])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("first", [0, 1, 3])
def test_cls_mean_concat_backward(batch: tuple[int, ...], first: int) -> None:
    enc = _r(*batch, 6, 4, seed=95)
    _vjp_check(lambda a: V.cls_mean_concat(a, first), lambda a, dy: (V.cls_mean_concat_backward(dy, 6, first),), [enc])


# -- sin-cos tables ------------------------------------------------------------------------------------------
def test_sinusoidal_matches_lean_definition() -> None:
    """TorchLean ``sinusoidalPositionalEncodingSpec``, element by element with ``math`` (odd width too)."""
    for seq, d, start in [(5, 8, 0), (4, 7, 3)]:
        table = V.sinusoidal_positional_encoding(seq, d, start)
        for p in range(seq):
            for j in range(d):
                theta = (start + p) / math.exp(math.log(10000.0) * (2 * (j // 2) / d))
                want = math.sin(theta) if j % 2 == 0 else math.cos(theta)
                assert abs(float(table[p, j]) - want) < 1e-12, (p, j)


@pytest.mark.parametrize("batch", BATCHES)
def test_fixed_pos_add_passes_gradient_through(batch: tuple[int, ...]) -> None:
    table = V.sinusoidal_positional_encoding(5, 8)
    _vjp_check(
        lambda t: V.fixed_pos_add(t, table), lambda a, dy: (V.fixed_pos_add_backward(dy),), [_r(*batch, 5, 8, seed=1)]
    )


def test_sincos_2d_refuses_bad_widths() -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        V.posemb_sincos_2d(2, 2, 6)
    with pytest.raises(ConfigError, match="NaN"):
        V.posemb_sincos_2d(2, 2, 4)
    with pytest.raises(ConfigError, match="multiple of 4"):
        V.sincos_2d_timm(2, 2, 10)


@pytest.mark.parametrize("h,w,dim", [(4, 4, 16), (2, 5, 32), (3, 1, 8)])
def test_posemb_sincos_2d_matches_vit_pytorch(h: int, w: int, dim: int) -> None:
    simple_vit = pytest.importorskip("vit_pytorch.simple_vit")
    assert torch.equal(V.posemb_sincos_2d(h, w, dim), simple_vit.posemb_sincos_2d(h, w, dim))
    assert torch.equal(V.posemb_sincos_2d(h, w, dim, dtype=DT), simple_vit.posemb_sincos_2d(h, w, dim, dtype=DT))


@pytest.mark.parametrize("h,w,dim", [(4, 4, 16), (2, 5, 32)])
def test_sincos_2d_matches_timm(h: int, w: int, dim: int) -> None:
    pe = pytest.importorskip("timm.layers.pos_embed_sincos")
    assert torch.equal(V.sincos_2d_timm(h, w, dim), pe.build_sincos2d_pos_embed([h, w], dim))


# -- MAP pooling ----------------------------------------------------------------------------------------------
def _map_params(e: int, hidden: int, latents: int, seed: int) -> dict[str, Tensor]:
    shapes = {
        "latent": (latents, e), "Wq": (e, e), "bq": (e,), "Wk": (e, e), "bk": (e,), "Wv": (e, e), "bv": (e,),
        "Wo": (e, e), "bo": (e,), "norm_gamma": (e,), "norm_beta": (e,), "W1": (e, hidden), "b1": (hidden,),
        "W2": (hidden, e), "b2": (e,),
    }  # fmt: skip
    out = {k: _r(*s, seed=seed + i, scale=0.5) for i, (k, s) in enumerate(shapes.items())}
    out["norm_gamma"] = out["norm_gamma"] + 1.0
    return out


@pytest.mark.parametrize("pool,latents", [("token", 1), ("avg", 2), ("token", 3)])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_map_pool_backward(pool: str, latents: int, batch: tuple[int, ...]) -> None:
    p = _map_params(8, 12, latents, 100)
    x = _r(*batch, 5, 8, seed=120)
    kw = {"heads": 2, "eps": 1e-6, "activation": "gelu_tanh", "pool": pool}

    def fwd(x: Tensor, *vals: Tensor) -> Tensor:
        return V.map_pool(x, *vals, **kw)  # type: ignore[arg-type]

    def bwd(a: Sequence[Tensor], dy: Tensor) -> list[Tensor]:
        dx, g = V.map_pool_backward(*a, dy, **kw)  # type: ignore[arg-type]
        return [dx, *(g["d" + k] for k in V.MAP_KEYS)]

    _vjp_check(fwd, bwd, [x, *(p[k] for k in V.MAP_KEYS)])


# -- against the libraries (random weights copied in) ------------------------------------------------------
def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    module = module.to(DT).eval()
    with torch.no_grad():
        for prm in module.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=DT) * 0.3)
    return module


def test_layer_scale_matches_timm() -> None:
    layers = pytest.importorskip("timm.layers")
    m = _randomize(layers.LayerScale(8, init_values=1e-5), 1)
    x = _r(2, 5, 8, seed=2)
    torch.testing.assert_close(V.layer_scale(x, m.gamma.detach()), m(x), **LIB)


def test_quick_gelu_matches_hf_and_timm() -> None:
    x = _r(3, 40, seed=3, scale=4.0)
    acts = pytest.importorskip("transformers.activations")
    torch.testing.assert_close(V.quick_gelu(x), acts.ACT2FN["quick_gelu"](x), **LIB)
    layers = pytest.importorskip("timm.layers")
    torch.testing.assert_close(V.quick_gelu(x), layers.QuickGELU()(x), **LIB)


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_rms_norm_matches_timm(eps: float) -> None:
    layers = pytest.importorskip("timm.layers")
    m = _randomize(layers.RmsNorm(8, eps=eps), 4)
    x = _r(2, 5, 8, seed=5, scale=2.0)
    torch.testing.assert_close(V.rms_norm(x, m.weight.detach(), eps), m(x), **LIB)


def _lin(m: torch.nn.Linear) -> tuple[Tensor, Tensor | None]:
    """A torch Linear as the spec's ``(in, out)`` weight and bias."""
    return m.weight.detach().T, (m.bias.detach() if m.bias is not None else None)


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_matches_timm(bias: bool) -> None:
    layers = pytest.importorskip("timm.layers")
    m = _randomize(layers.SwiGLU(8, 12, bias=bias), 6)
    x = _r(2, 5, 8, seed=7)
    (w1, b1), (wg, bg), (w2, b2) = _lin(m.fc1_x), _lin(m.fc1_g), _lin(m.fc2)
    torch.testing.assert_close(V.glu_ffn(x, w1, b1, wg, bg, w2, b2, "silu"), m(x), **LIB)


@pytest.mark.parametrize("gate_last,act", [(True, "sigmoid"), (False, "silu")])
def test_glu_mlp_chunk_order_matches_timm(gate_last: bool, act: str) -> None:
    """``GluMlp``: with ``gate_last`` the second half of ``fc1`` is the gate; ``SwiGLUPacked`` the first."""
    layers = pytest.importorskip("timm.layers")
    act_layer = torch.nn.Sigmoid if act == "sigmoid" else torch.nn.SiLU
    m = _randomize(layers.GluMlp(8, 12, act_layer=act_layer, gate_last=gate_last), 8)
    x = _r(2, 5, 8, seed=9)
    (w, b), (w2, b2) = _lin(m.fc1), _lin(m.fc2)
    assert b is not None
    first, second = (w[:, :6], b[:6]), (w[:, 6:], b[6:])
    value, gate = (first, second) if gate_last else (second, first)
    torch.testing.assert_close(V.glu_ffn(x, *value, *gate, w2, b2, act), m(x), **LIB)  # type: ignore[arg-type]


def test_swiglu_matches_hf_dinov2() -> None:
    dinov2 = pytest.importorskip("transformers.models.dinov2.modeling_dinov2")
    cfg = pytest.importorskip("transformers").Dinov2Config(hidden_size=16, mlp_ratio=4, use_swiglu_ffn=True)
    m = _randomize(dinov2.Dinov2SwiGLUFFN(cfg), 10)
    x = _r(2, 5, 16, seed=11)
    (w1, b1), (wg, bg), (w2, b2) = _lin(m.up_proj), _lin(m.gate_proj), _lin(m.down_proj)
    torch.testing.assert_close(V.glu_ffn(x, w1, b1, wg, bg, w2, b2, "silu"), m(x), **LIB)


def _timm_attn_weights(m: torch.nn.Module, a: int) -> list[Tensor | None]:
    w, b = _lin(m.qkv)
    wo, bo = _lin(m.proj)
    ws = [w[:, i * a : (i + 1) * a] for i in range(3)]
    bs = [None] * 3 if b is None else [b[i * a : (i + 1) * a] for i in range(3)]
    return [*ws, wo, *bs, bo]


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_qk_norm_attention_matches_timm(norm: str) -> None:
    layers = pytest.importorskip("timm.layers")
    norm_layer = torch.nn.LayerNorm if norm == "layer" else layers.RmsNorm
    m = _randomize(layers.Attention(8, num_heads=2, qkv_bias=True, qk_norm=True, norm_layer=norm_layer), 12)
    eps = m.q_norm.eps
    x = _r(2, 5, 8, seed=13)
    qn = [m.q_norm.weight.detach(), getattr(m.q_norm, "bias", None)]
    kn = [m.k_norm.weight.detach(), getattr(m.k_norm, "bias", None)]
    qn[1], kn[1] = (t.detach() if t is not None else None for t in (qn[1], kn[1]))
    out, _ = V.mha_qk_norm(x, x, *_timm_attn_weights(m, 8), *qn, *kn, heads=2, qk_norm=norm, eps=eps)  # type: ignore[arg-type]
    torch.testing.assert_close(out, m(x), **LIB)


@pytest.mark.parametrize("head_dim", [4, 6, 16])
def test_attention_inner_width_matches_timm(head_dim: int) -> None:
    """``heads*head_dim != embed_dim`` (timm ``attn_head_dim``): the core ``mha`` already takes it (its
    weights are ``(embed_dim, attn_dim)``), and so does ``mha_qk_norm``."""
    layers = pytest.importorskip("timm.layers")
    m = _randomize(layers.Attention(8, num_heads=2, attn_head_dim=head_dim, qkv_bias=True), 14)
    x = _r(2, 5, 8, seed=15)
    wts = _timm_attn_weights(m, 2 * head_dim)
    torch.testing.assert_close(V.mha_qk_norm(x, x, *wts, heads=2, qk_norm=None)[0], m(x), **LIB)  # type: ignore[arg-type]
    torch.testing.assert_close(P.mha(x, *wts, heads=2)[0], m(x), **LIB)  # type: ignore[arg-type]


@pytest.mark.parametrize("dim_head", [64, 8])
def test_attention_inner_width_matches_vit_pytorch(dim_head: int) -> None:
    """vit-pytorch ``Attention(dim=16, heads=2, dim_head=d)`` (a LayerNorm, then attention of width
    ``2d != 16``) == the core ``layer_norm`` then ``mha`` with ``(embed_dim, attn_dim)`` weights."""
    vit = pytest.importorskip("vit_pytorch.vit")
    m = _randomize(vit.Attention(16, heads=2, dim_head=dim_head), 26)
    x = _r(2, 5, 16, seed=27)
    a = 2 * dim_head
    w = m.to_qkv.weight.detach().T
    wo, bo = _lin(m.to_out[0])
    n = P.layer_norm(x, m.norm.weight.detach(), m.norm.bias.detach(), m.norm.eps)
    ours, _ = P.mha(n, w[:, :a], w[:, a : 2 * a], w[:, 2 * a :], wo, bo=bo, heads=2)
    torch.testing.assert_close(ours, m(x), **LIB)


def _timm_vit(**kw: object) -> torch.nn.Module:
    vt = pytest.importorskip("timm.models.vision_transformer")
    args = {"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 0, "num_heads": 2, "num_classes": 3}
    return _randomize(vt.VisionTransformer(**(args | {"final_norm": False} | kw)), 16)


@pytest.mark.parametrize(
    "kw,n_prefix,pos_prefix",
    [
        ({}, 1, 1),
        ({"reg_tokens": 2}, 3, 3),
        ({"reg_tokens": 2, "no_embed_class": True}, 3, 0),
        ({"no_embed_class": True}, 1, 0),
        ({"class_token": False, "reg_tokens": 4, "global_pool": "avg", "no_embed_class": True}, 4, 0),
        ({"reg_tokens": 1, "pos_embed": "none"}, 2, None),
    ],
)
def test_prefix_embed_matches_timm(kw: dict, n_prefix: int, pos_prefix: int | None) -> None:
    m = _timm_vit(**kw)
    x = _r(2, 3, 8, 8, seed=17)
    cls = m.cls_token[0, 0].detach() if m.cls_token is not None else None
    reg = m.reg_token[0].detach() if m.reg_token is not None else None
    prefix = V.prefix_rows(cls, None, reg)
    assert prefix.shape[0] == n_prefix
    pos = m.pos_embed[0].detach() if m.pos_embed is not None else None
    with torch.no_grad():
        ours = V.prefix_embed(m.patch_embed(x), prefix, pos, pos_prefix or 0)
        torch.testing.assert_close(ours, m.forward_features(x), **LIB)
        # timm 'avg' excludes every prefix token: the core mean_pool from row n_prefix.
        if kw.get("global_pool") == "avg":
            torch.testing.assert_close(P.mean_pool(ours, n_prefix), m.pool(ours), **LIB)


def test_dynamic_img_size_at_native_grid_is_the_learned_table() -> None:
    """timm ``dynamic_img_size=True`` at the native grid: NHWC patches flattened row-major, ``pos`` not
    resampled, so the sequence is the plain ``prefix_embed`` (no new numerics; the adapter's business)."""
    m = _timm_vit(dynamic_img_size=True, reg_tokens=1)
    x = _r(2, 3, 8, 8, seed=28)
    with torch.no_grad():
        patches = m.patch_embed(x)
        assert patches.dim() == 4  # (B, H, W, C): flattened later, inside _pos_embed
        prefix = V.prefix_rows(m.cls_token[0, 0], None, m.reg_token[0])
        ours = V.prefix_embed(patches.flatten(1, 2), prefix, m.pos_embed[0], 2)
        torch.testing.assert_close(ours, m.forward_features(x), **LIB)


def test_deit_distilled_matches_timm() -> None:
    deit = pytest.importorskip("timm.models.deit")
    m = _randomize(
        deit.VisionTransformerDistilled(
            img_size=8, patch_size=4, embed_dim=8, depth=0, num_heads=2, num_classes=3, final_norm=False
        ),
        18,
    )
    x = _r(2, 3, 8, 8, seed=19)
    with torch.no_grad():
        prefix = V.prefix_rows(m.cls_token[0, 0], m.dist_token[0, 0], None)
        seq = V.prefix_embed(m.patch_embed(x), prefix, m.pos_embed[0], 2)
        torch.testing.assert_close(seq, m.forward_features(x), **LIB)
        ours = V.distilled_head(seq, m.head.weight, m.head.bias, m.head_dist.weight, m.head_dist.bias)
        torch.testing.assert_close(ours, m.forward_head(seq), **LIB)


def test_prefix_embed_matches_hf_dinov2_registers() -> None:
    hf = pytest.importorskip("transformers")
    mod = pytest.importorskip("transformers.models.dinov2_with_registers.modeling_dinov2_with_registers")
    cfg = hf.Dinov2WithRegistersConfig(hidden_size=8, image_size=8, patch_size=4, num_register_tokens=3)
    emb = _randomize(mod.Dinov2WithRegistersEmbeddings(cfg), 20)
    x = _r(2, 3, 8, 8, seed=21)
    with torch.no_grad():
        prefix = V.prefix_rows(emb.cls_token[0, 0], None, emb.register_tokens[0])
        patches = emb.patch_embeddings(x)
        ours = V.prefix_embed(patches, prefix, emb.position_embeddings[0], 1)
        torch.testing.assert_close(ours, emb(x), **LIB)


def test_map_pool_matches_timm() -> None:
    layers = pytest.importorskip("timm.layers")
    m = _randomize(layers.AttentionPoolLatent(8, num_heads=2, mlp_ratio=1.5, norm_layer=torch.nn.LayerNorm), 22)
    x = _r(2, 5, 8, seed=23)
    (wq, bq), (wkv, bkv), (wo, bo) = _lin(m.q), _lin(m.kv), _lin(m.proj)
    (w1, b1), (w2, b2) = _lin(m.mlp.fc1), _lin(m.mlp.fc2)
    assert bkv is not None
    args = [m.latent[0].detach(), wq, bq, wkv[:, :8], bkv[:8], wkv[:, 8:], bkv[8:], wo, bo]
    args += [m.norm.weight.detach(), m.norm.bias.detach(), w1, b1, w2, b2]
    ours = V.map_pool(x, *args, heads=2, eps=m.norm.eps, activation="gelu_erf")  # type: ignore[arg-type]
    torch.testing.assert_close(ours, m(x), **LIB)


def test_map_pool_matches_hf_siglip_head() -> None:
    hf = pytest.importorskip("transformers")
    mod = pytest.importorskip("transformers.models.siglip.modeling_siglip")
    cfg = hf.SiglipVisionConfig(hidden_size=8, num_attention_heads=2, intermediate_size=12)
    m = _randomize(mod.SiglipMultiheadAttentionPoolingHead(cfg), 24)
    x = _r(2, 5, 8, seed=25)
    att = m.attention
    w_in, b_in = att.in_proj_weight.detach().T, att.in_proj_bias.detach()
    args = [m.probe[0].detach()]
    for i in range(3):
        args += [w_in[:, i * 8 : (i + 1) * 8], b_in[i * 8 : (i + 1) * 8]]
    args += [*_lin(att.out_proj), m.layernorm.weight.detach(), m.layernorm.bias.detach()]
    args += [*_lin(m.mlp.fc1), *_lin(m.mlp.fc2)]
    with torch.no_grad():
        ours = V.map_pool(x, *args, heads=2, eps=cfg.layer_norm_eps, activation="gelu_tanh")  # type: ignore[arg-type]
        torch.testing.assert_close(ours, m(x), **LIB)
