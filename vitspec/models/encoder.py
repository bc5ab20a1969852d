"""One Transformer encoder layer: forward and explicit backward, built from :mod:`vitspec.primitives`.

Lean ``Spec.TransformerEncoderLayer`` is post-norm (``torch.nn.TransformerEncoderLayer(norm_first=False)``
without dropout); the third-party profiles are pre-norm::

    post:  h = LN1(x + MHA(x));      y = LN2(h + FFN(h))
    pre:   h = x + MHA(LN1(x));      y = h + FFN(LN2(h))
    FFN(v) = act(v W1 + b1) W2 + b2      act ∈ {relu (spec), gelu_erf, gelu_tanh}

The backward is the chain rule written out with each primitive's explicit backward,
in reverse order of the forward; it never calls autograd. ``LayerCache`` holds the
activations one forward produces so a backward can reuse them (``mode='cache'``);
without a cache the backward recomputes this layer's forward first
(``mode='recompute'``, Lean's "intermediates are recomputed locally").

A profile that selects a variation point changing the layer's dataflow (LayerScale, qk-norm,
RMSNorm, a GLU FFN, FFN biases off; :attr:`LayerOptions.is_core` is false) is run by
:mod:`vitspec.models.variant_layer` instead (:func:`layer_forward` / :func:`layer_backward` dispatch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..dims import Float, checked
from ..primitives import (
    AttentionCache,
    gelu_erf,
    gelu_erf_backward,
    gelu_tanh,
    gelu_tanh_backward,
    layer_norm,
    layer_norm_backward,
    linear,
    linear_backward,
    mha,
    mha_backward,
    relu,
    relu_backward,
)
from ..primitives.activations import IN_PLACE
from ..primitives.attention import HeadSplit, mha_inference
from ..primitives.linear import linear_inference
from ..primitives.variations import ACTIVATIONS as VARIATION_ACTIVATIONS
from ..schema import Activation, NormPlacement, sub_op_order
from .grads import EncoderLayerGrads, FFNGrads, MHAGrads
from .layer import LayerOptions, LayerParams
from .variant_layer import VariantCache, variant_layer_backward, variant_layer_forward, variant_sub_op

__all__ = [
    "LayerCache",
    "LayerOptions",
    "LayerParams",
    "encoder_layer",
    "encoder_layer_backward",
    "layer_backward",
    "layer_forward",
    "sub_op_forward",
    "sub_op_input",
    "sub_op_names",
]


_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "relu": (relu, relu_backward),
    "gelu_erf": (gelu_erf, gelu_erf_backward),
    "gelu_tanh": (gelu_tanh, gelu_tanh_backward),
    # variation points (vitspec.primitives.variations): QuickGELU (CLIP), SiLU, sigmoid
    **{k: f for k, f in VARIATION_ACTIVATIONS.items() if k in ("quick_gelu", "silu", "sigmoid")},
}


def sub_op_names(norm_placement: NormPlacement, layer_scale: bool = False) -> tuple[str, ...]:
    """The layer's captured sub-ops in execution order (:func:`vitspec.schema.sub_op_order`)."""
    return sub_op_order(norm_placement, layer_scale)


def sub_op_input(
    name: str, x: Tensor, outputs: Mapping[str, Tensor], norm_placement: NormPlacement, layer_scale: bool = False
) -> Tensor | None:
    """The input of sub-op ``name`` given the layer input ``x`` and the sub-op ``outputs`` before it.

    The residual sums have no sub-op of their own, so they are rebuilt from their summands
    (pre-norm ``norm2`` sees ``x + attn``; post-norm ``norm1`` sees ``x + attn``, ``norm2``
    sees ``norm1 + mlp``). ``None`` when a needed output is missing. Used to check one
    sub-op *in isolation* on another implementation's own intermediate tensors.
    """
    # What feeds each sub-op; two names are a residual sum (it has no sub-op of its own).
    feeds: dict[str, tuple[str, ...]] = (
        {"norm1": ("x",), "attn": ("norm1",), "norm2": ("x", "attn"), "mlp": ("norm2",)}
        if norm_placement == "pre"
        else {"attn": ("x",), "norm1": ("x", "attn"), "mlp": ("norm1",), "norm2": ("norm1", "mlp")}
    )
    if layer_scale and norm_placement == "pre":  # LayerScale sits between each branch and its residual
        feeds = {**feeds, "ls1": ("attn",), "norm2": ("x", "ls1"), "ls2": ("mlp",)}
    values = {**outputs, "x": x}
    parts = [values.get(k) for k in feeds[name]]
    if any(t is None for t in parts):
        return None
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]  # type: ignore[operator]


def sub_op_forward(name: str, x: Tensor, p: LayerParams, opts: LayerOptions) -> Tensor:
    """Sub-op ``name`` of a layer applied to its own input ``x`` (see :func:`sub_op_input`).

    ``norm1`` / ``norm2``: the LayerNorm; ``attn``: the MHA (no residual); ``mlp``: the FFN
    ``act(x W1 + b1) W2 + b2`` (no residual): the same primitives :func:`encoder_layer` chains.
    Under a variation point (``not opts.is_core``) the sub-ops are those of
    :func:`~vitspec.models.variant_layer.variant_sub_op` (``ls1``/``ls2`` with LayerScale).
    """
    if not opts.is_core:
        return variant_sub_op(name, x, p, opts)
    if name in ("norm1", "norm2"):
        g, b = (p.norm1_gamma, p.norm1_beta) if name == "norm1" else (p.norm2_gamma, p.norm2_beta)
        assert b is not None  # a core layer's norms are LayerNorms
        return layer_norm(x, g, b, opts.eps)
    if name == "attn":
        return mha(x, p.Wq, p.Wk, p.Wv, p.Wo, p.bq, p.bk, p.bv, p.bo, heads=opts.heads, head_split=opts.head_split)[0]
    if name == "mlp":
        return linear(_ACTIVATIONS[opts.activation][0](linear(x, p.W1, p.b1)), p.W2, p.b2)
    raise ValueError(f"unknown sub-op {name!r}; sub-ops: norm1, attn, norm2, mlp")


@dataclass
class LayerCache:
    """What the backward needs from one forward, named by role so post- and pre-norm share it.

    Shapes ``(*batch, tokens, ·)``. ``attn_in`` is the MHA input (post: ``x``; pre: ``LN1(x)``),
    ``ln1_in`` / ``ln2_in`` the LayerNorm inputs (post: ``x + a`` / ``h + f``; pre: ``x`` / ``h``),
    ``ffn_in`` the FFN input (post: ``h``; pre: ``LN2(h)``), ``z`` the pre-activation (kept only
    for GELU: ReLU's derivative is read off its output ``u``, as autograd does), ``u`` the activation.
    """

    attn_in: Tensor
    attn: AttentionCache
    ln1_in: Tensor
    ffn_in: Tensor
    z: Tensor | None
    u: Tensor
    ln2_in: Tensor


@checked
def encoder_layer(
    x: Float[Tensor, "*batch tokens embed_dim"],
    Wq: Float[Tensor, "embed_dim attn_dim"],
    Wk: Float[Tensor, "embed_dim attn_dim"],
    Wv: Float[Tensor, "embed_dim attn_dim"],
    Wo: Float[Tensor, "attn_dim embed_dim"],
    W1: Float[Tensor, "embed_dim hidden_dim"],
    b1: Float[Tensor, " hidden_dim"],
    W2: Float[Tensor, "hidden_dim embed_dim"],
    b2: Float[Tensor, " embed_dim"],
    norm1_gamma: Float[Tensor, " embed_dim"],
    norm1_beta: Float[Tensor, " embed_dim"],
    norm2_gamma: Float[Tensor, " embed_dim"],
    norm2_beta: Float[Tensor, " embed_dim"],
    bq: Float[Tensor, " attn_dim"] | None = None,
    bk: Float[Tensor, " attn_dim"] | None = None,
    bv: Float[Tensor, " attn_dim"] | None = None,
    bo: Float[Tensor, " embed_dim"] | None = None,
    *,
    heads: int,
    norm_placement: NormPlacement = "post",
    activation: Activation = "relu",
    eps: float = 1e-6,
    head_split: HeadSplit = "reshape_swap",
    keep: bool = False,
    need_y: bool = True,
    capture: MutableMapping[str, Tensor] | None = None,
    prefix: str = "",
    fast: bool = True,
) -> tuple[Float[Tensor, "*batch tokens embed_dim"] | None, LayerCache | None]:
    """Encoder layer forward ``y``; with ``keep`` also the :class:`LayerCache` for the backward.

    ``capture`` receives the sub-op outputs ``{prefix}attn``, ``{prefix}norm1``, ``{prefix}mlp``
    and ``{prefix}norm2`` (the stage table of ``docs/architecture.md``). ``need_y=False`` (with
    ``keep``) is the backward's recomputation: a pre-norm layer's backward needs nothing past the
    activation, so the second FFN matmul is skipped and ``y`` is ``None``.

    When nothing is kept (no ``keep``, no ``capture``, no autograd graph) and ``fast`` is left on,
    ``y`` comes from a forward-only path (fused attention kernel, in-place residual sums) equal
    to the spec's ops up to rounding; ``fast=False`` keeps the spec's ops bit for bit (a forward
    whose layer outputs a backward will replay, as ``mode='recompute'``).
    """
    act = _ACTIVATIONS[activation][0]
    tensors = (x, Wq, Wk, Wv, Wo, W1, b1, W2, b2, norm1_gamma, norm1_beta, norm2_gamma, norm2_beta, bq, bk, bv, bo)
    if fast and not keep and capture is None and not _records_graph(tensors):
        # Nothing is kept (no cache, no capture, no autograd graph): the forward-only path.
        y = _layer_inference(
            x, Wq, Wk, Wv, Wo, W1, b1, W2, b2, norm1_gamma, norm1_beta, norm2_gamma, norm2_beta, bq, bk, bv, bo,
            heads=heads, norm_placement=norm_placement, act=IN_PLACE.get(activation, act), eps=eps,
            head_split=head_split,
        )  # fmt: skip
        return y, None
    if norm_placement == "post":
        attn_in = x
        a, attn = mha(attn_in, Wq, Wk, Wv, Wo, bq, bk, bv, bo, heads=heads, head_split=head_split)
        ln1_in = x + a
        h = layer_norm(ln1_in, norm1_gamma, norm1_beta, eps)
        n1 = h
        ffn_in = h
    else:
        ln1_in = x
        attn_in = n1 = layer_norm(x, norm1_gamma, norm1_beta, eps)
        a, attn = mha(attn_in, Wq, Wk, Wv, Wo, bq, bk, bv, bo, heads=heads, head_split=head_split)
        h = x + a
        ffn_in = layer_norm(h, norm2_gamma, norm2_beta, eps)
    z = linear(ffn_in, W1, b1)
    u = act(z)
    if not need_y and keep and norm_placement == "pre" and capture is None:
        return None, LayerCache(attn_in, attn, ln1_in, ffn_in, None if activation == "relu" else z, u, h)
    f = linear(u, W2, b2)
    if norm_placement == "post":
        ln2_in = h + f
        y = n2 = layer_norm(ln2_in, norm2_gamma, norm2_beta, eps)
    else:
        ln2_in = h
        n2 = ffn_in
        y = h + f
    if capture is not None:
        outputs = {"attn": a, "norm1": n1, "mlp": f, "norm2": n2}
        for name in sub_op_names(norm_placement):
            capture[prefix + name] = outputs[name]
    if not keep:
        return y, None
    return y, LayerCache(attn_in, attn, ln1_in, ffn_in, None if activation == "relu" else z, u, ln2_in)


def _records_graph(tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether autograd records this call (then the forward must be the spec's own ops)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _layer_inference(
    x: Tensor,
    Wq: Tensor,
    Wk: Tensor,
    Wv: Tensor,
    Wo: Tensor,
    W1: Tensor,
    b1: Tensor,
    W2: Tensor,
    b2: Tensor,
    norm1_gamma: Tensor,
    norm1_beta: Tensor,
    norm2_gamma: Tensor,
    norm2_beta: Tensor,
    bq: Tensor | None,
    bk: Tensor | None,
    bv: Tensor | None,
    bo: Tensor | None,
    *,
    heads: int,
    norm_placement: NormPlacement,
    act: Callable[[Tensor], Tensor],
    eps: float,
    head_split: HeadSplit,
) -> Tensor:
    """:func:`encoder_layer`'s ``y`` when nothing is kept: the same function, equal up to rounding,
    with the attention core fused (:func:`~vitspec.primitives.attention.mha_inference`), each
    residual sum accumulated by the GEMM of the branch it closes
    (:func:`~vitspec.primitives.linear.linear_inference`), and ``act`` allowed to work in place
    (its input, the FFN's pre-activation, is never needed again)."""
    if norm_placement == "post":
        a = mha_inference(x, Wq, Wk, Wv, Wo, bq, bk, bv, bo, heads=heads, head_split=head_split, residual=x)
        h = layer_norm(a, norm1_gamma, norm1_beta, eps)  # LN1(x + MHA(x))
        f = linear_inference(act(linear(h, W1, b1)), W2, b2, residual=h)
        return layer_norm(f, norm2_gamma, norm2_beta, eps)  # LN2(h + FFN(h))
    n1 = layer_norm(x, norm1_gamma, norm1_beta, eps)
    h = mha_inference(n1, Wq, Wk, Wv, Wo, bq, bk, bv, bo, heads=heads, head_split=head_split, residual=x)
    u = act(linear(layer_norm(h, norm2_gamma, norm2_beta, eps), W1, b1))
    return linear_inference(u, W2, b2, residual=h)  # h + FFN(LN2(h))


@checked
def encoder_layer_backward(
    x: Float[Tensor, "*batch tokens embed_dim"],
    Wq: Float[Tensor, "embed_dim attn_dim"],
    Wk: Float[Tensor, "embed_dim attn_dim"],
    Wv: Float[Tensor, "embed_dim attn_dim"],
    Wo: Float[Tensor, "attn_dim embed_dim"],
    W1: Float[Tensor, "embed_dim hidden_dim"],
    b1: Float[Tensor, " hidden_dim"],
    W2: Float[Tensor, "hidden_dim embed_dim"],
    b2: Float[Tensor, " embed_dim"],
    norm1_gamma: Float[Tensor, " embed_dim"],
    norm1_beta: Float[Tensor, " embed_dim"],
    norm2_gamma: Float[Tensor, " embed_dim"],
    norm2_beta: Float[Tensor, " embed_dim"],
    dy: Float[Tensor, "*batch tokens embed_dim"],
    bq: Float[Tensor, " attn_dim"] | None = None,
    bk: Float[Tensor, " attn_dim"] | None = None,
    bv: Float[Tensor, " attn_dim"] | None = None,
    bo: Float[Tensor, " embed_dim"] | None = None,
    *,
    heads: int,
    norm_placement: NormPlacement = "post",
    activation: Activation = "relu",
    eps: float = 1e-6,
    head_split: HeadSplit = "reshape_swap",
    lean_backward: bool = True,
    cache: LayerCache | None = None,
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], EncoderLayerGrads]:
    """``(dx, grads)`` for ``dy = ∂L/∂y``; parameter gradients summed over ``*batch``.

    Without ``cache`` the layer's forward is recomputed from ``x`` first.
    Bias gradients are reported only for the biases passed in.
    """
    if cache is None:
        _, cache = encoder_layer(
            x, Wq, Wk, Wv, Wo, W1, b1, W2, b2, norm1_gamma, norm1_beta, norm2_gamma, norm2_beta, bq, bk, bv, bo,
            heads=heads, norm_placement=norm_placement, activation=activation, eps=eps, head_split=head_split,
            keep=True, need_y=False,
        )  # fmt: skip
        assert cache is not None
    act_backward = _ACTIVATIONS[activation][1]
    # ReLU's mask 1[z > 0] equals 1[u > 0] for u = relu(z), so its backward can read the output.
    z = cache.u if activation == "relu" else cache.z
    assert z is not None

    def ffn_backward(df: Tensor) -> tuple[Tensor, FFNGrads]:
        du, dW2, db2 = linear_backward(cache.u, W2, df)
        dz = act_backward(z, du)
        d_in, dW1, db1 = linear_backward(cache.ffn_in, W1, dz)
        return d_in, FFNGrads(dW1=dW1, dW2=dW2, db1=db1, db2=db2)

    def mha_bw(d_out: Tensor) -> tuple[Tensor, MHAGrads]:
        d_in, g = mha_backward(
            cache.attn_in, Wq, Wk, Wv, Wo, d_out, bq, bk, bv, bo,
            heads=heads, cache=cache.attn, head_split=head_split, lean_backward=lean_backward,
        )  # fmt: skip
        return d_in, MHAGrads(
            dWq=g["dWq"],
            dWk=g["dWk"],
            dWv=g["dWv"],
            dWo=g["dWo"],
            dbq=g["dbq"] if bq is not None else None,
            dbk=g["dbk"] if bk is not None else None,
            dbv=g["dbv"] if bv is not None else None,
            dbo=g["dbo"] if bo is not None else None,
        )

    if norm_placement == "post":
        # y = LN2(h + f): the residual sum's gradient flows to both h and f.
        d_r2, dg2, dbeta2 = layer_norm_backward(cache.ln2_in, norm2_gamma, dy, eps)
        dh_ffn, ffn_grads = ffn_backward(d_r2)
        dh = d_r2 + dh_ffn
        # h = LN1(x + a)
        d_r1, dg1, dbeta1 = layer_norm_backward(cache.ln1_in, norm1_gamma, dh, eps)
        dx_attn, mha_grads = mha_bw(d_r1)
        dx = d_r1 + dx_attn
    else:
        # y = h + FFN(LN2(h))
        dn2, ffn_grads = ffn_backward(dy)
        dh_ln, dg2, dbeta2 = layer_norm_backward(cache.ln2_in, norm2_gamma, dn2, eps)
        dh = dy + dh_ln
        # h = x + MHA(LN1(x))
        dn1, mha_grads = mha_bw(dh)
        dx_ln, dg1, dbeta1 = layer_norm_backward(cache.ln1_in, norm1_gamma, dn1, eps)
        dx = dh + dx_ln
    grads = EncoderLayerGrads(
        mha=mha_grads,
        ffn=ffn_grads,
        d_norm1_gamma=dg1,
        d_norm1_beta=dbeta1,
        d_norm2_gamma=dg2,
        d_norm2_beta=dbeta2,
    )
    return dx, grads


def layer_forward(
    x: Tensor,
    p: LayerParams,
    opts: LayerOptions,
    *,
    keep: bool = False,
    capture: MutableMapping[str, Tensor] | None = None,
    prefix: str = "",
    fast: bool = True,
) -> tuple[Tensor, LayerCache | VariantCache | None]:
    """:func:`encoder_layer` with the tensors of a :class:`LayerParams` and the settings of a :class:`LayerOptions`
    (:func:`~vitspec.models.variant_layer.variant_layer_forward` under a variation point)."""
    if not opts.is_core:
        return variant_layer_forward(x, p, opts, keep=keep, capture=capture, prefix=prefix)
    assert p.b1 is not None and p.b2 is not None and p.norm1_beta is not None and p.norm2_beta is not None
    y, cache = encoder_layer(
        x, p.Wq, p.Wk, p.Wv, p.Wo, p.W1, p.b1, p.W2, p.b2,
        p.norm1_gamma, p.norm1_beta, p.norm2_gamma, p.norm2_beta, p.bq, p.bk, p.bv, p.bo,
        heads=opts.heads, norm_placement=opts.norm_placement, activation=opts.activation, eps=opts.eps,
        head_split=opts.head_split, keep=keep, capture=capture, prefix=prefix, fast=fast,
    )  # fmt: skip
    assert y is not None  # need_y is left True
    return y, cache


def layer_backward(
    x: Tensor, p: LayerParams, opts: LayerOptions, dy: Tensor, *, cache: LayerCache | VariantCache | None = None
) -> tuple[Tensor, EncoderLayerGrads]:
    """:func:`encoder_layer_backward` with a :class:`LayerParams` and :class:`LayerOptions`
    (:func:`~vitspec.models.variant_layer.variant_layer_backward` under a variation point)."""
    if not opts.is_core:
        assert cache is None or isinstance(cache, VariantCache)
        return variant_layer_backward(x, p, opts, dy, cache=cache)
    assert cache is None or isinstance(cache, LayerCache)
    assert p.b1 is not None and p.b2 is not None and p.norm1_beta is not None and p.norm2_beta is not None
    return encoder_layer_backward(
        x, p.Wq, p.Wk, p.Wv, p.Wo, p.W1, p.b1, p.W2, p.b2,
        p.norm1_gamma, p.norm1_beta, p.norm2_gamma, p.norm2_beta, dy, p.bq, p.bk, p.bv, p.bo,
        heads=opts.heads, norm_placement=opts.norm_placement, activation=opts.activation, eps=opts.eps,
        head_split=opts.head_split, lean_backward=opts.lean_backward, cache=cache,
    )  # fmt: skip
