"""Multi-head self-attention (Lean ``MultiHeadAttention.forward``, no mask).

::

    Q = x Wq (+ bq)   K = x Wk (+ bk)   V = x Wv (+ bv)       # (tokens, heads*head_dim)
    per head h:  P_h = softmax(Q_h K_hᵀ / sqrt(head_dim))     # stable, over keys
                 C_h = P_h V_h
    out = concat_h(C_h) Wo (+ bo)

``head_dim = embed_dim / heads`` with ``Nat`` floor, so ``attn_dim = heads*head_dim``
may be smaller than ``embed_dim`` (legal for the spec; profiles forbid it).
The spec has no biases; profiles add ``bq bk bv`` and/or ``bo``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked
from ._batch import flat2
from .softmax import softmax, softmax_backward


@dataclass
class AttentionCache:
    """Activations kept from a forward for the backward (``mode='cache'``)."""

    q: Tensor  # (*batch, heads, tokens, head_dim)
    k: Tensor
    v: Tensor
    probs: Tensor  # (*batch, heads, tokens, tokens)
    context: Tensor  # (*batch, tokens, attn_dim)


def _split(t: Tensor, heads: int) -> Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)  # (*b, T, A) -> (*b, H, T, hd)


def _merge(t: Tensor) -> Tensor:
    return t.transpose(-3, -2).flatten(-2)  # (*b, H, T, hd) -> (*b, T, A)


@checked
def _mha_core(
    x: Float[Tensor, "*batch tokens embed_dim"],
    wq: Float[Tensor, "embed_dim attn_dim"],
    wk: Float[Tensor, "embed_dim attn_dim"],
    wv: Float[Tensor, "embed_dim attn_dim"],
    wo: Float[Tensor, "attn_dim embed_dim"],
    bq: Float[Tensor, " attn_dim"] | None,
    bk: Float[Tensor, " attn_dim"] | None,
    bv: Float[Tensor, " attn_dim"] | None,
    bo: Float[Tensor, " embed_dim"] | None,
    heads: int,
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], AttentionCache]:
    # One GEMM for Q, K and V: concatenating the (in, out) weights costs a copy of 3·E·A
    # numbers, far less than the two extra passes over x that three GEMMs would make.
    # Biases are all present or all absent (a profile sets qkv_bias for the three).
    w_qkv = torch.cat((wq, wk, wv), dim=1)
    b_qkv = torch.cat((bq, bk, bv)) if bq is not None and bk is not None and bv is not None else None
    if b_qkv is None and (bq is not None or bk is not None or bv is not None):
        raise ValueError("q/k/v biases must be all given or all None")
    qkv = F.linear(x, w_qkv.mT, b_qkv).unflatten(-1, (3, heads, -1))  # (*b, T, 3, H, hd)
    q, k, v = (qkv.select(-3, i).transpose(-3, -2) for i in range(3))  # each (*b, H, T, hd)
    scale = 1.0 / math.sqrt(q.shape[-1])
    # In-place scale: the product is a fresh temporary that autograd does not need.
    probs = softmax((q @ k.transpose(-1, -2)).mul_(scale))
    context = _merge(probs @ v)
    out = F.linear(context, wo.mT, bo)
    return out, AttentionCache(q, k, v, probs, context)


def mha(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    bq: Tensor | None = None,
    bk: Tensor | None = None,
    bv: Tensor | None = None,
    bo: Tensor | None = None,
    *,
    heads: int,
) -> tuple[Tensor, AttentionCache]:
    """Self-attention output and the cache its backward can reuse."""
    return _mha_core(x, wq, wk, wv, wo, bq, bk, bv, bo, heads)


@checked
def _mha_backward_core(
    x: Float[Tensor, "*batch tokens embed_dim"],
    wq: Float[Tensor, "embed_dim attn_dim"],
    wk: Float[Tensor, "embed_dim attn_dim"],
    wv: Float[Tensor, "embed_dim attn_dim"],
    wo: Float[Tensor, "attn_dim embed_dim"],
    d_out: Float[Tensor, "*batch tokens embed_dim"],
    cache: AttentionCache,
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], dict[str, Tensor]]:
    q, k, v, probs = cache.q, cache.k, cache.v, cache.probs
    scale = 1.0 / math.sqrt(q.shape[-1])
    d_context = d_out @ wo.T
    grads = {"dWo": flat2(cache.context).T @ flat2(d_out), "dbo": flat2(d_out).sum(0)}
    dc = _split(d_context, q.shape[-3])
    d_probs = dc @ v.transpose(-1, -2)
    dv = probs.transpose(-1, -2) @ dc
    d_scores = softmax_backward(probs, d_probs) * scale
    dq = d_scores @ k
    dk = d_scores.transpose(-1, -2) @ q
    # The forward's fused Q/K/V projection, backwards: stack dQ, dK, dV as (*b, T, 3, A)
    # so the weight gradient and the input gradient are one GEMM each, then split.
    heads, hd = q.shape[-3], q.shape[-1]
    a = heads * hd
    d5 = x.new_empty((*x.shape[:-1], 3, heads, hd))
    for i, d in enumerate((dq, dk, dv)):
        d5.select(-3, i).copy_(d.transpose(-3, -2))  # one strided copy each, no temporaries
    d_qkv = d5.flatten(-3)  # (*b, T, 3A)
    d_qkv2 = flat2(d_qkv)
    dw_qkv = flat2(x).T @ d_qkv2  # (E, 3A)
    db_qkv = d_qkv2.sum(0)
    dx = d_qkv @ torch.cat((wq, wk, wv), dim=1).T
    for i, name in enumerate("qkv"):
        grads[f"dW{name}"] = dw_qkv[:, i * a : (i + 1) * a]
        grads[f"db{name}"] = db_qkv[i * a : (i + 1) * a]
    return dx, grads


def mha_backward(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    d_out: Tensor,
    bq: Tensor | None = None,
    bk: Tensor | None = None,
    bv: Tensor | None = None,
    bo: Tensor | None = None,
    *,
    heads: int,
    cache: AttentionCache | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(d_x, grads)`` with ``grads`` keyed ``dWq dWk dWv dWo dbq dbk dbv dbo``.

    Without ``cache`` the forward intermediates are recomputed (the Lean way).
    Bias gradients are returned whether or not the profile has those biases;
    callers keep the ones their bundle owns.
    """
    if cache is None:
        _, cache = _mha_core(x, wq, wk, wv, wo, bq, bk, bv, bo, heads)
    return _mha_backward_core(x, wq, wk, wv, wo, d_out, cache)
