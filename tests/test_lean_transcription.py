"""The spec models against a loop-level transcription of the Lean, written here from the Lean source.

Everything in the ``# -- transcription`` section is plain Python over lists of floats (float64),
one loop per Lean definition, independent of vitspec's fast path and of torch:

- ``NN/Spec/Layers/Attention.lean`` at 411682f (lean-dojo/TorchLean) and b2a2184
  (NicolasRouquette/TorchLean): ``splitHeadsSpec``, ``combineHeadsSpec``,
  ``scaledDotProductAttention(Backward)``, ``MultiHeadAttention.forward``,
  ``MultiHeadAttentionBackward``;
- ``NN/Spec/Layers/Normalization.lean``: ``layerNorm``, ``layerNormBackward``;
- ``NN/Spec/Models/Transformer.lean``: ``FeedForward.forward/backward``,
  ``TransformerEncoderLayer.forward/backward``, ``TransformerEncoder.forward/backward``;
- ``NN/Spec/Layers/Conv.lean`` ``conv2dSpec`` / ``conv2dBackwardSpec`` (the cross-correlation
  with zero padding and its VJP) and ``NN/Spec/Models/Vit.lean`` ``ViTSpec`` / ``ViTClsSpec``
  ``forward`` and ``backward``.

The head split is the only place where the two revisions' transcriptions differ.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitspec import ViTConfig
from vitspec.models.vit import ViTClsSpec, ViTSpec
from vitspec.primitives.attention import mha, mha_backward, mha_backward_reference, mha_reference

Mat = list[list[float]]

# -- transcription: matrices ---------------------------------------------------------------


def zeros(r: int, c: int) -> Mat:
    return [[0.0] * c for _ in range(r)]


def matmul(a: Mat, b: Mat) -> Mat:
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def transpose(a: Mat) -> Mat:
    return [[a[i][j] for i in range(len(a))] for j in range(len(a[0]))]


def add(a: Mat, b: Mat) -> Mat:
    return [[x + y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


def col_sum(a: Mat) -> list[float]:
    return [sum(a[i][j] for i in range(len(a))) for j in range(len(a[0]))]


# -- transcription: attention ----------------------------------------------------------------


def split_heads(m: Mat, heads: int, hd: int, how: str) -> list[Mat]:
    """``splitHeadsSpec``: ``(n, H·hd) -> (H, n, hd)``."""
    n = len(m)
    if how == "direct_reshape":  # 411682f: reshapeSpec of the row-major flattening
        flat = [v for row in m for v in row]
        return [[[flat[h * n * hd + t * hd + c] for c in range(hd)] for t in range(n)] for h in range(heads)]
    # b2a2184: reshape to (n, H, hd), then swapFirstTwoSpec
    return [[[m[t][h * hd + c] for c in range(hd)] for t in range(n)] for h in range(heads)]


def combine_heads(hs: list[Mat]) -> Mat:
    """``combineHeadsSpec`` (both revisions): swapFirstTwoSpec, then reshape to ``(n, H·hd)``."""
    heads, n, hd = len(hs), len(hs[0]), len(hs[0][0])
    return [[hs[h][t][c] for h in range(heads) for c in range(hd)] for t in range(n)]


def softmax_rows(s: Mat) -> Mat:
    out = []
    for row in s:
        m = max(row)
        e = [math.exp(v - m) for v in row]
        z = sum(e)
        out.append([v / z for v in e])
    return out


def sdpa(q: Mat, k: Mat, v: Mat) -> Mat:
    scale = math.sqrt(len(q[0]))
    scores = [[x / scale for x in row] for row in matmul(q, transpose(k))]
    return matmul(softmax_rows(scores), v)


def sdpa_backward(q: Mat, k: Mat, v: Mat, d_out: Mat) -> tuple[Mat, Mat, Mat]:
    scale = math.sqrt(len(q[0]))
    w = softmax_rows([[x / scale for x in row] for row in matmul(q, transpose(k))])
    dw = matmul(d_out, transpose(v))
    dv = matmul(transpose(w), d_out)
    ds = []  # softmaxBackwardFromWeightsSpec, then scaleSpec (1/scale)
    for wr, dr in zip(w, dw, strict=True):
        dot = sum(a * b for a, b in zip(dr, wr, strict=True))
        ds.append([wi * (di - dot) / scale for wi, di in zip(wr, dr, strict=True)])
    return matmul(ds, k), matmul(transpose(ds), q), dv


def mha_forward(x: Mat, p: dict[str, Any], heads: int, how: str) -> Mat:
    hd = len(p["Wq"][0]) // heads
    qh, kh, vh = (split_heads(matmul(x, p[w]), heads, hd, how) for w in ("Wq", "Wk", "Wv"))
    return matmul(combine_heads([sdpa(qh[h], kh[h], vh[h]) for h in range(heads)]), p["Wo"])


def mha_backward_lean(x: Mat, p: dict[str, Any], heads: int, how: str, g: Mat) -> tuple[Mat, dict[str, Mat]]:
    """``MultiHeadAttentionBackward`` as written: split stands in for combine's adjoint and vice versa."""
    hd = len(p["Wq"][0]) // heads
    qh, kh, vh = (split_heads(matmul(x, p[w]), heads, hd, how) for w in ("Wq", "Wk", "Wv"))
    concat = combine_heads([sdpa(qh[h], kh[h], vh[h]) for h in range(heads)])
    grad_concat, d_wo = matmul(g, transpose(p["Wo"])), matmul(transpose(concat), g)
    grad_heads = split_heads(grad_concat, heads, hd, how)
    per = [sdpa_backward(qh[h], kh[h], vh[h], grad_heads[h]) for h in range(heads)]
    gq, gk, gv = (combine_heads([per[h][i] for h in range(heads)]) for i in range(3))
    dx = add(add(matmul(gq, transpose(p["Wq"])), matmul(gk, transpose(p["Wk"]))), matmul(gv, transpose(p["Wv"])))
    return dx, {
        "Wq": matmul(transpose(x), gq),
        "Wk": matmul(transpose(x), gk),
        "Wv": matmul(transpose(x), gv),
        "Wo": d_wo,
    }


# -- transcription: LayerNorm, FFN, encoder layer ----------------------------------------------


def layer_norm(x: Mat, gamma: list[float], beta: list[float], eps: float) -> Mat:
    out = []
    for row in x:
        mu = sum(row) / len(row)
        var = max(sum((v - mu) ** 2 for v in row) / len(row), 0.0)
        std = math.sqrt(var + eps)
        out.append([(v - mu) / std * g + b for v, g, b in zip(row, gamma, beta, strict=True)])
    return out


def layer_norm_backward(x: Mat, gamma: list[float], g: Mat, eps: float) -> tuple[Mat, list[float], list[float]]:
    n = len(gamma)
    dx, dgamma, dbeta = [], [0.0] * n, [0.0] * n
    for row, grow in zip(x, g, strict=True):
        mu = sum(row) / n
        inv = 1.0 / math.sqrt(max(sum((v - mu) ** 2 for v in row) / n, 0.0) + eps)
        xhat = [(v - mu) * inv for v in row]
        dyg = [gi * ga for gi, ga in zip(grow, gamma, strict=True)]
        m1 = sum(dyg) / n
        m2 = sum(a * b for a, b in zip(dyg, xhat, strict=True)) / n
        dx.append([inv * (a - m1 - xh * m2) for a, xh in zip(dyg, xhat, strict=True)])
        for j in range(n):
            dgamma[j] += grow[j] * xhat[j]
            dbeta[j] += grow[j]
    return dx, dgamma, dbeta


def ffn_forward(x: Mat, p: dict[str, Any]) -> tuple[Mat, Mat]:
    z1 = [[v + b for v, b in zip(row, p["b1"], strict=True)] for row in matmul(x, p["W1"])]
    a1 = [[max(v, 0.0) for v in row] for row in z1]
    return [[v + b for v, b in zip(row, p["b2"], strict=True)] for row in matmul(a1, p["W2"])], z1


def ffn_backward(x: Mat, p: dict[str, Any], g: Mat) -> tuple[Mat, dict[str, Any]]:
    _, z1 = ffn_forward(x, p)
    a1 = [[max(v, 0.0) for v in row] for row in z1]
    da1 = matmul(g, transpose(p["W2"]))
    drelu = [[d * (1.0 if z > 0 else 0.0) for d, z in zip(dr, zr, strict=True)] for dr, zr in zip(da1, z1, strict=True)]
    grads = {"W1": matmul(transpose(x), drelu), "b1": col_sum(drelu), "W2": matmul(transpose(a1), g), "b2": col_sum(g)}
    return matmul(drelu, transpose(p["W1"])), grads


def layer_forward(x: Mat, p: dict[str, Any], heads: int, how: str, eps: float) -> Mat:
    norm1 = layer_norm(add(x, mha_forward(x, p, heads, how)), p["norm1_gamma"], p["norm1_beta"], eps)
    return layer_norm(add(norm1, ffn_forward(norm1, p)[0]), p["norm2_gamma"], p["norm2_beta"], eps)


def layer_backward(x: Mat, p: dict[str, Any], heads: int, how: str, eps: float, g: Mat) -> tuple[Mat, dict[str, Any]]:
    res1 = add(x, mha_forward(x, p, heads, how))
    norm1 = layer_norm(res1, p["norm1_gamma"], p["norm1_beta"], eps)
    res2 = add(norm1, ffn_forward(norm1, p)[0])
    d_res2, dg2, db2 = layer_norm_backward(res2, p["norm2_gamma"], g, eps)
    d_norm1_ffn, grads = ffn_backward(norm1, p, d_res2)
    d_res1, dg1, db1 = layer_norm_backward(res1, p["norm1_gamma"], add(d_res2, d_norm1_ffn), eps)
    dx_mha, mg = mha_backward_lean(x, p, heads, how, d_res1)
    grads |= mg | {"norm1_gamma": dg1, "norm1_beta": db1, "norm2_gamma": dg2, "norm2_beta": db2}
    return add(d_res1, dx_mha), grads


# -- transcription: the ViT ----------------------------------------------------------------------


def conv2d(x: list[Mat], k: list[list[Mat]], b: list[float], stride: int, pad: int) -> list[Mat]:
    c, ih, iw = len(x), len(x[0]), len(x[0][0])
    kh, kw = len(k[0][0]), len(k[0][0][0])
    oh, ow = (ih + 2 * pad - kh) // stride + 1, (iw + 2 * pad - kw) // stride + 1

    def px(ci: int, i: int, j: int) -> float:
        return x[ci][i][j] if 0 <= i < ih and 0 <= j < iw else 0.0

    return [
        [
            [
                b[e]
                + sum(
                    k[e][ci][u][v] * px(ci, oi * stride - pad + u, oj * stride - pad + v)
                    for ci in range(c)
                    for u in range(kh)
                    for v in range(kw)
                )
                for oj in range(ow)
            ]
            for oi in range(oh)
        ]
        for e in range(len(k))
    ]


def conv2d_backward(
    x: list[Mat], k: list[list[Mat]], d: list[Mat], stride: int, pad: int
) -> tuple[Any, list[float], list[Mat]]:
    c, ih, iw = len(x), len(x[0]), len(x[0][0])
    kh, kw = len(k[0][0]), len(k[0][0][0])
    dk = [[zeros(kh, kw) for _ in range(c)] for _ in range(len(k))]
    dx = [zeros(ih, iw) for _ in range(c)]
    for e in range(len(k)):
        for oi in range(len(d[0])):
            for oj in range(len(d[0][0])):
                for ci in range(c):
                    for u in range(kh):
                        for v in range(kw):
                            i, j = oi * stride - pad + u, oj * stride - pad + v
                            if 0 <= i < ih and 0 <= j < iw:
                                dk[e][ci][u][v] += d[e][oi][oj] * x[ci][i][j]
                                dx[ci][i][j] += d[e][oi][oj] * k[e][ci][u][v]
    return dk, [sum(v for row in d[e] for v in row) for e in range(len(k))], dx


def vit_tokens(p: dict[str, Any], x: list[Mat], cfg: ViTConfig, variant: str) -> Mat:
    grid = conv2d(x, p["patch_kernel"], p["patch_bias"], cfg.stride, cfg.padding)
    tokens = [
        [grid[e][t // len(grid[0][0])][t % len(grid[0][0])] for e in range(len(grid))]
        for t in range(len(grid[0]) * len(grid[0][0]))
    ]
    if variant == "cls":
        tokens = [list(p["cls_token"]), *tokens]
    return add(tokens, p["pos"])


def vit_forward(p: dict[str, Any], x: list[Mat], cfg: ViTConfig, variant: str, how: str, eps: float) -> list[float]:
    t = vit_tokens(p, x, cfg, variant)
    for layer in p["layers"]:
        t = layer_forward(t, layer, cfg.head_count, how, eps)
    pooled = t[0] if variant == "cls" else [sum(col) / len(t) for col in zip(*t, strict=True)]
    return [
        sum(w * v for w, v in zip(row, pooled, strict=True)) + b
        for row, b in zip(p["head_W"], p["head_b"], strict=True)
    ]


def vit_backward_lean(
    p: dict[str, Any], x: list[Mat], cfg: ViTConfig, variant: str, how: str, eps: float, g: list[float]
) -> dict[str, Any]:
    """``ViTSpec.backward`` / ``ViTClsSpec.backward``: head, pool, encoder (layers reversed), pos, CLS, conv."""
    inputs, t = [], vit_tokens(p, x, cfg, variant)
    for layer in p["layers"]:
        inputs.append(t)
        t = layer_forward(t, layer, cfg.head_count, how, eps)
    n, e = len(t), len(t[0])
    pooled = t[0] if variant == "cls" else [sum(col) / n for col in zip(*t, strict=True)]
    out: dict[str, Any] = {"head_W": [[gi * v for v in pooled] for gi in g], "head_b": list(g)}
    d_pooled = [sum(p["head_W"][c][j] * g[c] for c in range(len(g))) for j in range(e)]
    d_tok = [list(d_pooled) if (variant == "mean" or i == 0) else [0.0] * e for i in range(n)]
    if variant == "mean":
        d_tok = [[v / n for v in row] for row in d_tok]
    for i in reversed(range(len(p["layers"]))):
        d_tok, out[f"layer{i}"] = layer_backward(inputs[i], p["layers"][i], cfg.head_count, how, eps, d_tok)
    out["pos"] = d_tok
    if variant == "cls":
        out["cls_token"], d_tok = d_tok[0], d_tok[1:]
    grid_h = (len(x[0]) + 2 * cfg.padding - cfg.patch_h) // cfg.stride + 1
    ow = len(d_tok) // grid_h
    d_grid = [[[d_tok[oi * ow + oj][c] for oj in range(ow)] for oi in range(grid_h)] for c in range(e)]
    out["patch_kernel"], out["patch_bias"], out["input"] = conv2d_backward(
        x, p["patch_kernel"], d_grid, cfg.stride, cfg.padding
    )
    return out


# -- bridging the spec model's tensors to lists ------------------------------------------------


def as_lists(model: ViTSpec | ViTClsSpec) -> dict[str, Any]:
    sd = {k: v.tolist() for k, v in model.state_dict().items()}
    layers = []
    for i in range(model.cfg.num_layers):
        pre = f"encoder.{i}."
        layers.append({k.rsplit(".", 1)[-1]: v for k, v in sd.items() if k.startswith(pre)})
    return {k: v for k, v in sd.items() if not k.startswith("encoder.")} | {"layers": layers}


def model_grads_as_lists(grads: dict[str, torch.Tensor], num_layers: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(num_layers):
        pre = f"encoder.{i}."
        out[f"layer{i}"] = {k.rsplit(".", 1)[-1]: v.tolist() for k, v in grads.items() if k.startswith(pre)}
    return out | {k: v.tolist() for k, v in grads.items() if not k.startswith("encoder.")}


def max_diff(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        return max(max_diff(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return max((max_diff(u, v) for u, v in zip(a, b, strict=True)), default=0.0)
    return abs(a - b)


REVS = {"torchlean@411682f": "direct_reshape", "torchlean@b2a2184": "reshape_swap"}


def _model(cls: type, cfg: ViTConfig, profile: str, seed: int, size: tuple[int, int, int] = (2, 5, 6)) -> Any:
    return cls.init(cfg, *size, seed=seed, dtype=torch.float64, profile=profile)


def _cfg(heads: int, **kw: int) -> ViTConfig:
    base = {
        "patch_h": 3,
        "patch_w": 2,
        "stride": 2,
        "padding": 1,
        "embed_dim": 7,
        "hidden_dim": 5,
        "num_layers": 2,
        "num_classes": 3,
    }
    return ViTConfig(**(base | {"head_count": heads} | kw))


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(REVS))
@pytest.mark.parametrize("cls", [ViTSpec, ViTClsSpec])
@pytest.mark.parametrize("heads", [1, 2, 3])
def test_forward_equals_the_lean_transcription(profile: str, cls: type, heads: int) -> None:
    # E = 7: H = 2 and H = 3 do not divide it (attn_dim 6); stride 2 != patch (3, 2); padding 1.
    m = _model(cls, _cfg(heads), profile, seed=heads)
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    want = vit_forward(as_lists(m), x.tolist(), m.cfg, m.variant, REVS[profile], m.profile.ln_eps)
    assert max_diff(m.forward(x).tolist(), want) <= 1e-12


def test_the_two_revisions_differ_exactly_when_heads_ge_2() -> None:
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for heads in (1, 2):
        old, new = (_model(ViTClsSpec, _cfg(heads), p, seed=0) for p in REVS)
        gap = float((old.forward(x) - new.forward(x)).abs().max())
        assert (gap < 1e-13) if heads == 1 else (gap > 1e-3), (heads, gap)


@pytest.mark.parametrize("cls", [ViTSpec, ViTClsSpec])
@pytest.mark.parametrize("mode", ["cache", "recompute"])
def test_411682f_backward_is_the_literal_lean_backward_not_autograd(cls: type, mode: str) -> None:
    m = _model(cls, _cfg(2), "torchlean@411682f", seed=1)
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.randn(3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads, gx = m.backward(x, g, mode=mode)
    got = model_grads_as_lists(grads.to_dict(), m.cfg.num_layers) | {"input": gx.tolist()}
    want = vit_backward_lean(as_lists(m), x.tolist(), m.cfg, m.variant, "direct_reshape", m.profile.ln_eps, g.tolist())
    assert max_diff(got, want) <= 1e-11
    # ... and that is not the gradient of the forward (the Lean's adjoint mismatch).
    leaves = {k: t.clone().requires_grad_() for k, t in m.state_dict().items()}
    logits = cls.from_state_dict(m.cfg, 2, 5, 6, leaves, profile=m.profile).forward(x)
    (d_wq,) = torch.autograd.grad(logits, [leaves["encoder.0.mha.Wq"]], g)
    assert float((d_wq - grads.d_encoder[0].mha.dWq).abs().max()) > 1e-3


@pytest.mark.parametrize("cls", [ViTSpec, ViTClsSpec])
@pytest.mark.parametrize("heads", [2, 3])
def test_b2a2184_backward_is_the_lean_backward_and_autograd(cls: type, heads: int) -> None:
    m = _model(cls, _cfg(heads), "torchlean@b2a2184", seed=5)
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    g = torch.randn(3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    grads, gx = m.backward(x, g)
    got = model_grads_as_lists(grads.to_dict(), m.cfg.num_layers) | {"input": gx.tolist()}
    want = vit_backward_lean(as_lists(m), x.tolist(), m.cfg, m.variant, "reshape_swap", m.profile.ln_eps, g.tolist())
    assert max_diff(got, want) <= 1e-11
    leaves = {k: t.clone().requires_grad_() for k, t in m.state_dict().items()}
    x_leaf = x.clone().requires_grad_()
    logits = cls.from_state_dict(m.cfg, 2, 5, 6, leaves, profile=m.profile).forward(x_leaf)
    auto = dict(zip([*leaves, "input"], torch.autograd.grad(logits, [*leaves.values(), x_leaf], g), strict=True))
    explicit = grads.to_dict() | {"input": gx}
    assert max(float((explicit[k] - auto[k]).abs().max()) for k in auto) <= 1e-12


@pytest.mark.parametrize("how", ["direct_reshape", "reshape_swap"])
@pytest.mark.parametrize(("e", "heads"), [(6, 1), (6, 2), (7, 3), (8, 4)])
def test_mha_fast_path_and_reference_equal_the_transcription(how: str, e: int, heads: int) -> None:
    gen = torch.Generator().manual_seed(e * 10 + heads)
    a = heads * (e // heads)
    x, dy = (torch.randn(4, e, generator=gen, dtype=torch.float64) for _ in range(2))
    ws = [torch.randn(e, a, generator=gen, dtype=torch.float64) / e**0.5 for _ in range(3)]
    wo = torch.randn(a, e, generator=gen, dtype=torch.float64) / a**0.5
    p = {"Wq": ws[0].tolist(), "Wk": ws[1].tolist(), "Wv": ws[2].tolist(), "Wo": wo.tolist()}
    want = mha_forward(x.tolist(), p, heads, how)
    assert max_diff(mha(x, *ws, wo, heads=heads, head_split=how)[0].tolist(), want) <= 1e-13  # type: ignore[arg-type]
    assert max_diff(mha_reference(x, *ws, wo, heads=heads, head_split=how).tolist(), want) <= 1e-13  # type: ignore[arg-type]
    want_dx, want_g = mha_backward_lean(x.tolist(), p, heads, how, dy.tolist())
    for dx, g in (
        mha_backward(x, *ws, wo, dy, heads=heads, head_split=how),  # type: ignore[arg-type]
        mha_backward_reference(x, *ws, wo, dy, heads=heads, head_split=how),  # type: ignore[arg-type]
    ):
        assert max_diff(dx.tolist(), want_dx) <= 1e-12
        assert max_diff({k[1:]: g[k].tolist() for k in ("dWq", "dWk", "dWv", "dWo")}, want_g) <= 1e-12


@pytest.mark.parametrize("lean", [True, False])
def test_exact_vjp_option_equals_autograd_for_the_direct_split(lean: bool) -> None:
    gen = torch.Generator().manual_seed(11)
    x, dy = (torch.randn(2, 4, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    ws = [torch.randn(6, 6, generator=gen, dtype=torch.float64) / 6**0.5 for _ in range(4)]
    leaves = [t.clone().requires_grad_() for t in (x, *ws)]
    auto = torch.autograd.grad(mha(*leaves, heads=3, head_split="direct_reshape")[0], leaves, dy)  # type: ignore[arg-type]
    for dx, g in (
        mha_backward(x, *ws, dy, heads=3, head_split="direct_reshape", lean_backward=lean),  # type: ignore[arg-type]
        mha_backward_reference(x, *ws, dy, heads=3, head_split="direct_reshape", lean_backward=lean),  # type: ignore[arg-type]
    ):
        err = max(
            float((a - b).abs().max()) for a, b in zip(auto, (dx, g["dWq"], g["dWk"], g["dWv"], g["dWo"]), strict=True)
        )
        assert (err <= 1e-12) if not lean else (err > 1e-3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    heads=st.integers(1, 3),
    embed=st.integers(3, 6),
    patch=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 1),
    cls_variant=st.booleans(),
    old=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_equals_transcription_over_configs(
    heads: int, embed: int, patch: int, stride: int, padding: int, cls_variant: bool, old: bool, seed: int
) -> None:
    embed = max(embed, heads)
    cfg = ViTConfig(
        patch_h=patch,
        patch_w=patch,
        stride=stride,
        padding=padding,
        embed_dim=embed,
        hidden_dim=4,
        head_count=heads,
        num_layers=1,
        num_classes=2,
    )
    profile = "torchlean@411682f" if old else "torchlean@b2a2184"
    cls = ViTClsSpec if cls_variant else ViTSpec
    m = _model(cls, cfg, profile, seed=seed, size=(1, 4, 5))
    x = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = vit_forward(as_lists(m), x.tolist(), cfg, m.variant, REVS[profile], m.profile.ln_eps)
    assert max_diff(m.forward(x).tolist(), want) <= 1e-12
