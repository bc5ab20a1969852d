"""The encoder layer under the variation points of :mod:`vitspec.primitives.variations` (not TorchLean).

:mod:`vitspec.models.encoder` is the spec's layer (and the re-parameterisations of the library
profiles); it hands a layer here only when the profile selects a variation point that changes the
layer's dataflow (:attr:`~vitspec.models.encoder.LayerOptions.is_core` is false):

- ``layer_scale``: ``h = x + ls1 ⊙ MHA(N1(x))``, ``y = h + ls2 ⊙ FFN(N2(h))`` (timm ``LayerScale``);
- ``norm="rms"``: RMSNorm for ``N1``/``N2`` (timm ``RmsNorm``);
- ``qk_norm``: the attention normalises q and k per head (:func:`~vitspec.primitives.variations.mha_qk_norm`);
- ``ffn="glu"``: ``FFN(v) = (act(v Wg + bg) ⊙ (v W1 + b1)) W2 + b2`` (timm ``SwiGLU``/``GluMlp``);
- ``ffn_bias=False``: ``b1``/``b2`` (and ``bg``) absent (timm ``proj_bias=False``).

Each is a primitive with its explicit backward; this module only chains them, forward and then
backward in reverse order, like :func:`~vitspec.models.encoder.encoder_layer_backward`::

    pre:   n1 = N1(x);  a = MHA(n1);  h = x + ls1(a);  n2 = N2(h);  f = FFN(n2);  y = h + ls2(f)
    post:  a = MHA(x);  h = N1(x + a);  f = FFN(h);  y = N2(h + f)      (no LayerScale, qk-norm,
                                                                     RMSNorm or GLU with post-norm)
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from torch import Tensor

from ..primitives import (
    AttentionCache,
    layer_norm,
    layer_norm_backward,
    linear,
    linear_backward,
    mha,
    mha_backward,
)
from ..primitives.variations import (
    ACTIVATIONS,
    QKNormCache,
    glu,
    glu_backward,
    layer_scale,
    layer_scale_backward,
    mha_qk_norm,
    mha_qk_norm_backward,
    rms_norm,
    rms_norm_backward,
)
from .grads import EncoderLayerGrads, FFNGrads, MHAGrads
from .layer import LayerOptions, LayerParams

__all__ = [
    "VariantCache",
    "norm",
    "norm_backward",
    "variant_layer_backward",
    "variant_layer_forward",
    "variant_sub_op",
]


# -- the norm of a profile: LayerNorm (the spec) or RMSNorm ---------------------------------------
def norm(x: Tensor, gamma: Tensor, beta: Tensor | None, kind: str, eps: float) -> Tensor:
    """``LayerNorm(x; γ, β)`` for ``kind="layer"``, ``RMSNorm(x; γ)`` for ``kind="rms"``."""
    if kind == "rms":
        return rms_norm(x, gamma, eps)
    assert beta is not None
    return layer_norm(x, gamma, beta, eps)


def norm_backward(x: Tensor, gamma: Tensor, dy: Tensor, kind: str, eps: float) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(dx, dγ, dβ)`` of :func:`norm` (``dβ`` is None for RMSNorm, which has no β)."""
    if kind == "rms":
        dx, dg = rms_norm_backward(x, gamma, dy, eps)
        return dx, dg, None
    return layer_norm_backward(x, gamma, dy, eps)


# -- the cache --------------------------------------------------------------------------------------
@dataclass
class VariantCache:
    """What the backward reads from one forward. ``a`` / ``f`` are the branch outputs *before*
    LayerScale (its backward needs them); ``z`` the FFN value pre-activation (the MLP's only
    pre-activation), ``z_gate`` the GLU gate's; ``u`` the FFN hidden activation."""

    attn_in: Tensor
    attn: AttentionCache | QKNormCache
    a: Tensor
    ln1_in: Tensor
    ffn_in: Tensor
    z: Tensor
    z_gate: Tensor | None
    u: Tensor
    f: Tensor
    ln2_in: Tensor


# -- pieces ------------------------------------------------------------------------------------------
def _attention(x: Tensor, p: LayerParams, o: LayerOptions) -> tuple[Tensor, AttentionCache | QKNormCache]:
    if o.qk_norm:
        return mha_qk_norm(
            x, x, p.Wq, p.Wk, p.Wv, p.Wo, p.bq, p.bk, p.bv, p.bo,
            p.q_norm_gamma, p.q_norm_beta, p.k_norm_gamma, p.k_norm_beta,
            heads=o.heads, qk_norm=o.norm, eps=o.eps,  # type: ignore[arg-type]  # o.norm is a NormKind
        )  # fmt: skip
    return mha(x, p.Wq, p.Wk, p.Wv, p.Wo, p.bq, p.bk, p.bv, p.bo, heads=o.heads, head_split=o.head_split)


def _attention_backward(
    x: Tensor, p: LayerParams, o: LayerOptions, d_out: Tensor, cache: AttentionCache | QKNormCache
) -> tuple[Tensor, MHAGrads]:
    if isinstance(cache, QKNormCache):
        dx_q, dx_kv, g = mha_qk_norm_backward(
            x, x, p.Wq, p.Wk, p.Wv, p.Wo, d_out, p.q_norm_gamma, p.k_norm_gamma,
            cache=cache, qk_norm=o.norm, eps=o.eps,  # type: ignore[arg-type]
        )  # fmt: skip
        dx = dx_q + dx_kv  # self-attention: x feeds both the queries and the keys/values
    else:
        dx, g = mha_backward(
            x, p.Wq, p.Wk, p.Wv, p.Wo, d_out, p.bq, p.bk, p.bv, p.bo,
            heads=o.heads, cache=cache, head_split=o.head_split, lean_backward=o.lean_backward,
        )  # fmt: skip
    own = {  # keep the gradients of the parameters this layer has
        "dbq": p.bq, "dbk": p.bk, "dbv": p.bv, "dbo": p.bo,
        "dq_norm_gamma": p.q_norm_gamma, "dq_norm_beta": p.q_norm_beta,
        "dk_norm_gamma": p.k_norm_gamma, "dk_norm_beta": p.k_norm_beta,
    }  # fmt: skip
    extra = {k: g[k] for k, t in own.items() if t is not None}
    return dx, MHAGrads(dWq=g["dWq"], dWk=g["dWk"], dWv=g["dWv"], dWo=g["dWo"], **extra)


def _ffn(x: Tensor, p: LayerParams, o: LayerOptions) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``(f, z, z_gate, u)``: the FFN output, the value (MLP: the only) pre-activation, the gate's, the hidden."""
    z = linear(x, p.W1, p.b1)
    if o.ffn == "glu":
        assert p.Wg is not None
        z_gate = linear(x, p.Wg, p.bg)
        u = glu(z, z_gate, o.activation)  # type: ignore[arg-type]  # config_violations demands a gate activation
    else:
        z_gate, u = None, ACTIVATIONS[o.activation][0](z)
    return linear(u, p.W2, p.b2), z, z_gate, u


def _ffn_backward(p: LayerParams, o: LayerOptions, df: Tensor, c: VariantCache) -> tuple[Tensor, FFNGrads]:
    du, dW2, db2 = linear_backward(c.u, p.W2, df)
    dWg = dbg = None
    if c.z_gate is not None:
        assert p.Wg is not None
        dz, dz_gate = glu_backward(c.z, c.z_gate, du, o.activation)  # type: ignore[arg-type]
        dx_gate, dWg, dbg = linear_backward(c.ffn_in, p.Wg, dz_gate)
    else:
        dz, dx_gate = ACTIVATIONS[o.activation][1](c.z, du), None
    dx, dW1, db1 = linear_backward(c.ffn_in, p.W1, dz)
    if dx_gate is not None:
        dx = dx + dx_gate
    return dx, FFNGrads(
        dW1=dW1,
        dW2=dW2,
        db1=db1 if p.b1 is not None else None,
        db2=db2 if p.b2 is not None else None,
        dWg=dWg,
        dbg=dbg if p.bg is not None else None,
    )


def _scale(t: Tensor, gamma: Tensor | None) -> Tensor:
    return t if gamma is None else layer_scale(t, gamma)


# -- the layer ------------------------------------------------------------------------------------------
def variant_layer_forward(
    x: Tensor,
    p: LayerParams,
    o: LayerOptions,
    *,
    keep: bool = False,
    capture: MutableMapping[str, Tensor] | None = None,
    prefix: str = "",
) -> tuple[Tensor, VariantCache | None]:
    """The layer's output ``y`` and, with ``keep``, the :class:`VariantCache` for the backward;
    ``capture`` receives the sub-op outputs (:func:`vitspec.schema.sub_op_order` with ``layer_scale``)."""
    if o.norm_placement == "pre":
        ln1_in, attn_in = x, norm(x, p.norm1_gamma, p.norm1_beta, o.norm, o.eps)
        a, attn = _attention(attn_in, p, o)
        a_s = _scale(a, p.ls1_gamma)
        h = x + a_s
        ffn_in = norm(h, p.norm2_gamma, p.norm2_beta, o.norm, o.eps)
        f, z, z_gate, u = _ffn(ffn_in, p, o)
        f_s = _scale(f, p.ls2_gamma)
        ln2_in = h  # the pre-norm N2 reads h
        y = h + f_s
        outputs = {"norm1": attn_in, "attn": a, "ls1": a_s, "norm2": ffn_in, "mlp": f, "ls2": f_s}
    else:
        attn_in = x
        a, attn = _attention(attn_in, p, o)
        ln1_in = x + a
        ffn_in = h = norm(ln1_in, p.norm1_gamma, p.norm1_beta, o.norm, o.eps)
        f, z, z_gate, u = _ffn(ffn_in, p, o)
        ln2_in = h + f
        y = norm(ln2_in, p.norm2_gamma, p.norm2_beta, o.norm, o.eps)
        outputs = {"attn": a, "norm1": h, "mlp": f, "norm2": y}
    if capture is not None:
        for name in o.sub_ops:
            capture[prefix + name] = outputs[name]
    if not keep:
        return y, None
    return y, VariantCache(attn_in, attn, a, ln1_in, ffn_in, z, z_gate, u, f, ln2_in)


def variant_layer_backward(
    x: Tensor, p: LayerParams, o: LayerOptions, dy: Tensor, *, cache: VariantCache | None = None
) -> tuple[Tensor, EncoderLayerGrads]:
    """``(dx, grads)`` for ``dy = ∂L/∂y``, chaining each primitive's explicit backward in reverse order
    (the forward is recomputed from ``x`` when no ``cache`` is given)."""
    c = cache if cache is not None else variant_layer_forward(x, p, o, keep=True)[1]
    assert c is not None
    dls1 = dls2 = None
    if o.norm_placement == "pre":
        # y = h + ls2(FFN(N2(h)))
        df = dy
        if p.ls2_gamma is not None:
            df, dls2 = layer_scale_backward(c.f, p.ls2_gamma, dy)
        dn2, ffn_grads = _ffn_backward(p, o, df, c)
        dh_n, dg2, db2 = norm_backward(c.ln2_in, p.norm2_gamma, dn2, o.norm, o.eps)
        dh = dy + dh_n
        # h = x + ls1(MHA(N1(x)))
        da = dh
        if p.ls1_gamma is not None:
            da, dls1 = layer_scale_backward(c.a, p.ls1_gamma, dh)
        dn1, mha_grads = _attention_backward(c.attn_in, p, o, da, c.attn)
        dx_n, dg1, db1 = norm_backward(c.ln1_in, p.norm1_gamma, dn1, o.norm, o.eps)
        dx = dh + dx_n
    else:
        # y = N2(h + FFN(h)), h = N1(x + MHA(x))
        d_r2, dg2, db2 = norm_backward(c.ln2_in, p.norm2_gamma, dy, o.norm, o.eps)
        dh_ffn, ffn_grads = _ffn_backward(p, o, d_r2, c)
        dh = d_r2 + dh_ffn
        d_r1, dg1, db1 = norm_backward(c.ln1_in, p.norm1_gamma, dh, o.norm, o.eps)
        dx_attn, mha_grads = _attention_backward(c.attn_in, p, o, d_r1, c.attn)
        dx = d_r1 + dx_attn
    return dx, EncoderLayerGrads(
        mha=mha_grads,
        ffn=ffn_grads,
        d_norm1_gamma=dg1,
        d_norm1_beta=db1,
        d_norm2_gamma=dg2,
        d_norm2_beta=db2,
        d_ls1_gamma=dls1,
        d_ls2_gamma=dls2,
    )


def variant_sub_op(name: str, x: Tensor, p: LayerParams, o: LayerOptions) -> Tensor:
    """Sub-op ``name`` applied to its own input ``x`` (isolation; see :func:`vitspec.models.encoder.sub_op_input`)."""
    if name in ("norm1", "norm2"):
        g, b = (p.norm1_gamma, p.norm1_beta) if name == "norm1" else (p.norm2_gamma, p.norm2_beta)
        return norm(x, g, b, o.norm, o.eps)
    if name == "attn":
        return _attention(x, p, o)[0]
    if name == "mlp":
        return _ffn(x, p, o)[0]
    gammas: Mapping[str, Tensor | None] = {"ls1": p.ls1_gamma, "ls2": p.ls2_gamma}
    if name in gammas and gammas[name] is not None:
        return layer_scale(x, gammas[name])  # type: ignore[arg-type]  # checked just above
    raise ValueError(f"unknown sub-op {name!r}; sub-ops: {', '.join(o.sub_ops)}")
