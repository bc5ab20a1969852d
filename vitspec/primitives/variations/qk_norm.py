"""Attention with a per-head norm on q and k (qk-norm), self- or cross-attention, library head split.

Not in the TorchLean spec. Selected by:

- timm ``VisionTransformer(qk_norm=True)`` / ``Attention(qk_norm=True, norm_layer=...)``:
  ``q_norm = norm_layer(head_dim)`` and ``k_norm`` likewise, applied *after* the head split
  (``q, k = self.q_norm(q), self.k_norm(k)`` on ``(B, heads, tokens, head_dim)``), one
  ``(head_dim,)`` gain (and bias, for LayerNorm) shared by all heads; ``norm_layer`` is the
  model's (LayerNorm, eps 1e-6, or ``RmsNorm``);
- timm ``AttentionPoolLatent(qk_norm=True)`` (MAP pooling, :mod:`.map_pool`), where the queries
  come from the latent and the keys/values from the tokens: the same code with ``x_q != x_kv``.

::

    Q = split(x_q Wq + bq)   K = split(x_kv Wk + bk)   V = split(x_kv Wv + bv)   # (*b, H, n, hd)
    Q' = norm_q(Q)  K' = norm_k(K)           # over head_dim; identity with qk_norm=None
    P = softmax(Q' K'ᵀ / sqrt(hd))           # over keys
    out = merge(P V) Wo + bo

``split`` is the libraries' head split (reshape ``(n, H·hd) -> (n, H, hd)``, then swap), and
``hd = attn_dim / heads`` is read off the weights, so ``attn_dim`` need not equal ``embed_dim``.
This module does not reuse :func:`vitspec.primitives.mha`: that primitive fuses the Q/K/V
projections and the scores with no point between them where a norm could sit, and it follows
the TorchLean revision's head split, which is that module's business.

The backward chains the public primitives' backwards (linear, layer/RMS norm, softmax).
With ``x_q is x_kv`` (self-attention) the caller adds the two input gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ...dims import Float, checked
from ..layernorm import layer_norm, layer_norm_backward
from ..linear import linear, linear_backward
from ..softmax import softmax, softmax_backward
from .rms_norm import rms_norm, rms_norm_backward

QKNorm = Literal["layer", "rms"]


@dataclass
class QKNormCache:
    """Activations kept from a forward for the backward. ``q``/``k`` before the norm, ``qn``/``kn`` after."""

    q: Tensor  # (*batch, heads, queries, head_dim)
    k: Tensor  # (*batch, heads, tokens, head_dim)
    v: Tensor
    qn: Tensor
    kn: Tensor
    probs: Tensor  # (*batch, heads, queries, tokens)
    context: Tensor  # (*batch, queries, attn_dim)


def split_heads(t: Tensor, heads: int) -> Tensor:
    """``(*b, n, H·hd) -> (*b, H, n, hd)``: reshape to ``(n, H, hd)``, then swap (timm, HF, PyTorch)."""
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)


def merge_heads(t: Tensor) -> Tensor:
    """Inverse (and adjoint) of :func:`split_heads`: ``(*b, H, n, hd) -> (*b, n, H·hd)``."""
    return t.transpose(-3, -2).flatten(-2)


def per_head_norm(t: Tensor, gamma: Tensor | None, beta: Tensor | None, kind: QKNorm | None, eps: float) -> Tensor:
    """The per-head norm over ``head_dim`` (identity for ``kind=None``; RMSNorm has no ``beta``)."""
    if kind is None:
        return t
    assert gamma is not None
    if kind == "rms":
        return rms_norm(t, gamma, eps)
    assert beta is not None
    return layer_norm(t, gamma, beta, eps)


def per_head_norm_backward(
    t: Tensor, gamma: Tensor | None, dy: Tensor, kind: QKNorm | None, eps: float
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(dt, d_gamma, d_beta)`` of :func:`per_head_norm` (``None`` for parameters the norm lacks)."""
    if kind is None:
        return dy, None, None
    assert gamma is not None
    if kind == "rms":
        dt, dg = rms_norm_backward(t, gamma, dy, eps)
        return dt, dg, None
    return layer_norm_backward(t, gamma, dy, eps)


@checked
def mha_qk_norm(
    x_q: Float[Tensor, "*batch queries embed_dim"],
    x_kv: Float[Tensor, "*batch tokens embed_dim"],
    wq: Float[Tensor, "embed_dim attn_dim"],
    wk: Float[Tensor, "embed_dim attn_dim"],
    wv: Float[Tensor, "embed_dim attn_dim"],
    wo: Float[Tensor, "attn_dim embed_dim"],
    bq: Float[Tensor, " attn_dim"] | None = None,
    bk: Float[Tensor, " attn_dim"] | None = None,
    bv: Float[Tensor, " attn_dim"] | None = None,
    bo: Float[Tensor, " embed_dim"] | None = None,
    q_gamma: Float[Tensor, " head_dim"] | None = None,
    q_beta: Float[Tensor, " head_dim"] | None = None,
    k_gamma: Float[Tensor, " head_dim"] | None = None,
    k_beta: Float[Tensor, " head_dim"] | None = None,
    *,
    heads: int,
    qk_norm: QKNorm | None = "layer",
    eps: float = 1e-6,
) -> tuple[Float[Tensor, "*batch queries embed_dim"], QKNormCache]:
    """Attention output and the cache its backward reuses (see the module docstring)."""
    q = split_heads(linear(x_q, wq, bq), heads)
    k = split_heads(linear(x_kv, wk, bk), heads)
    v = split_heads(linear(x_kv, wv, bv), heads)
    qn = per_head_norm(q, q_gamma, q_beta, qk_norm, eps)
    kn = per_head_norm(k, k_gamma, k_beta, qk_norm, eps)
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = softmax((qn @ kn.transpose(-1, -2)) * scale)
    context = merge_heads(probs @ v)
    return linear(context, wo, bo), QKNormCache(q, k, v, qn, kn, probs, context)


@checked
def mha_qk_norm_backward(
    x_q: Float[Tensor, "*batch queries embed_dim"],
    x_kv: Float[Tensor, "*batch tokens embed_dim"],
    wq: Float[Tensor, "embed_dim attn_dim"],
    wk: Float[Tensor, "embed_dim attn_dim"],
    wv: Float[Tensor, "embed_dim attn_dim"],
    wo: Float[Tensor, "attn_dim embed_dim"],
    d_out: Float[Tensor, "*batch queries embed_dim"],
    q_gamma: Float[Tensor, " head_dim"] | None = None,
    k_gamma: Float[Tensor, " head_dim"] | None = None,
    *,
    cache: QKNormCache,
    qk_norm: QKNorm | None = "layer",
    eps: float = 1e-6,
) -> tuple[Float[Tensor, "*batch queries embed_dim"], Float[Tensor, "*batch tokens embed_dim"], dict[str, Tensor]]:
    """``(d_x_q, d_x_kv, grads)``; ``grads`` keyed ``dWq dWk dWv dWo dbq dbk dbv dbo`` and, with a
    qk-norm, ``dq_norm_gamma dk_norm_gamma`` (+ ``dq_norm_beta dk_norm_beta`` for LayerNorm).
    Bias gradients are returned whether or not the biases exist; callers keep the ones they own."""
    c = cache
    scale = 1.0 / math.sqrt(c.q.shape[-1])
    d_context, dwo, dbo = linear_backward(c.context, wo, d_out)
    dc = split_heads(d_context, c.q.shape[-3])
    d_probs = dc @ c.v.transpose(-1, -2)
    dv = c.probs.transpose(-1, -2) @ dc
    d_scores = softmax_backward(c.probs, d_probs) * scale
    dqn = d_scores @ c.kn
    dkn = d_scores.transpose(-1, -2) @ c.qn
    dq, dqg, dqb = per_head_norm_backward(c.q, q_gamma, dqn, qk_norm, eps)
    dk, dkg, dkb = per_head_norm_backward(c.k, k_gamma, dkn, qk_norm, eps)
    dx_q, dwq, dbq = linear_backward(x_q, wq, merge_heads(dq))
    dx_k, dwk, dbk = linear_backward(x_kv, wk, merge_heads(dk))
    dx_v, dwv, dbv = linear_backward(x_kv, wv, merge_heads(dv))
    grads = {"dWq": dwq, "dWk": dwk, "dWv": dwv, "dWo": dwo, "dbq": dbq, "dbk": dbk, "dbv": dbv, "dbo": dbo}
    for name, g in (("dq_norm_gamma", dqg), ("dq_norm_beta", dqb), ("dk_norm_gamma", dkg), ("dk_norm_beta", dkb)):
        if g is not None:
            grads[name] = g
    return dx_q, dx_k + dx_v, grads
