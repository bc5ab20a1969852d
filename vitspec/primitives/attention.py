"""Multi-head self-attention (Lean ``MultiHeadAttention.forward``, no mask).

::

    Q = x Wq (+ bq)   K = x Wk (+ bk)   V = x Wv (+ bv)       # (tokens, heads*head_dim)
    per head h:  P_h = softmax(Q_h K_hᵀ / sqrt(head_dim))     # stable, over keys
                 C_h = P_h V_h
    out = concat_h(C_h) Wo (+ bo)

``head_dim = embed_dim / heads`` with ``Nat`` floor, so ``attn_dim = heads*head_dim``
may be smaller than ``embed_dim`` (legal for the spec; profiles forbid it).
The spec has no biases; profiles add ``bq bk bv`` and/or ``bo``.

**Head split.** Lean ``splitHeadsSpec`` (``NN/Spec/Layers/Attention.lean``) differs between
TorchLean revisions (see :mod:`vitspec.revisions`): at 411682f it is a direct row-major
``reshapeSpec (n, H·hd) → (H, n, hd)`` (``"direct_reshape"``: head ``h`` receives a block of
the flattened projection, tokens mixed); from c2be276 on it is "reshape to ``(n, H, hd)``, then
swap" (``"reshape_swap"``, the usual split, and every library's). ``combineHeadsSpec`` is
"swap, then reshape" at every revision.

**Backward.** Lean ``MultiHeadAttentionBackward`` uses ``splitHeadsSpec`` as the adjoint of
``combineHeadsSpec`` and ``combineHeadsSpec`` as the adjoint of ``splitHeadsSpec``. For
``reshape_swap`` the two are inverse permutations, so that is the exact VJP. For
``direct_reshape`` they are not each other's adjoints, and the Lean backward is *not* the
gradient of the Lean forward; ``lean_backward=True`` (the default) computes the Lean's formula
literally, ``lean_backward=False`` the exact VJP of the same forward.

:func:`mha` / :func:`mha_backward` are the fused fast path (one GEMM for Q, K, V; all heads at
once). :func:`mha_reference` / :func:`mha_backward_reference` are the readable per-head
transcription in the Lean's order: project, split, scaled dot-product attention per head,
combine, output projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked
from ..schema import HEAD_SPLITS, HeadSplit
from ._batch import flat2
from .linear import linear_inference
from .softmax import softmax, softmax_backward


@dataclass
class AttentionCache:
    """Activations kept from a forward for the backward (``mode='cache'``)."""

    q: Tensor  # (*batch, heads, tokens, head_dim)
    k: Tensor
    v: Tensor
    probs: Tensor  # (*batch, heads, tokens, tokens)
    context: Tensor  # (*batch, tokens, attn_dim)


def split_heads(t: Tensor, heads: int, how: HeadSplit = "reshape_swap") -> Tensor:
    """Lean ``splitHeadsSpec``: ``(*b, T, H·hd) -> (*b, H, T, hd)`` with the revision's split."""
    if how == "reshape_swap":
        return t.unflatten(-1, (heads, -1)).transpose(-3, -2)
    if how == "direct_reshape":
        # 411682f: a row-major reshape of the whole (T, A) block, so head h gets flat
        # elements [h·T·hd, (h+1)·T·hd) of the token-major projection.
        tokens, a = t.shape[-2], t.shape[-1]
        return t.reshape(*t.shape[:-2], heads, tokens, a // heads)
    raise ValueError(f"head split must be one of {', '.join(map(repr, HEAD_SPLITS))}, got {how!r}")


def combine_heads(t: Tensor) -> Tensor:
    """Lean ``combineHeadsSpec`` (every revision): swap, then reshape, ``(*b, H, T, hd) -> (*b, T, H·hd)``."""
    return t.transpose(-3, -2).flatten(-2)


def split_heads_adjoint(t: Tensor, how: HeadSplit = "reshape_swap") -> Tensor:
    """The adjoint (= inverse: a split is a permutation) of :func:`split_heads`."""
    if how == "reshape_swap":
        return combine_heads(t)
    heads, tokens, hd = t.shape[-3:]
    return t.reshape(*t.shape[:-3], tokens, heads * hd)


def _check_split(how: str) -> None:
    if how not in HEAD_SPLITS:
        raise ValueError(f"head split must be one of {', '.join(map(repr, HEAD_SPLITS))}, got {how!r}")


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
    head_split: HeadSplit = "reshape_swap",
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], AttentionCache]:
    # One GEMM for Q, K and V: concatenating the (in, out) weights costs a copy of 3·E·A
    # numbers, far less than the two extra passes over x that three GEMMs would make.
    # Biases are all present or all absent (a profile sets qkv_bias for the three).
    w_qkv = torch.cat((wq, wk, wv), dim=1)
    b_qkv = torch.cat((bq, bk, bv)) if bq is not None and bk is not None and bv is not None else None
    if b_qkv is None and (bq is not None or bk is not None or bv is not None):
        raise ValueError("q/k/v biases must be all given or all None")
    _check_split(head_split)
    if head_split == "reshape_swap":
        qkv = F.linear(x, w_qkv.mT, b_qkv).unflatten(-1, (3, heads, -1))  # (*b, T, 3, H, hd)
        q, k, v = (qkv.select(-3, i).transpose(-3, -2) for i in range(3))  # each (*b, H, T, hd)
    else:
        qkv = F.linear(x, w_qkv.mT, b_qkv).unflatten(-1, (3, -1))  # (*b, T, 3, A)
        q, k, v = (split_heads(qkv.select(-2, i), heads, head_split) for i in range(3))
    scale = 1.0 / math.sqrt(q.shape[-1])
    # In-place scale: the product is a fresh temporary that autograd does not need.
    probs = softmax((q @ k.transpose(-1, -2)).mul_(scale))
    context = combine_heads(probs @ v)
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
    head_split: HeadSplit = "reshape_swap",
) -> tuple[Tensor, AttentionCache]:
    """Self-attention output and the cache its backward can reuse (``head_split``: see the module doc)."""
    return _mha_core(x, wq, wk, wv, wo, bq, bk, bv, bo, heads, head_split)


@checked
def mha_inference(
    x: Float[Tensor, "*batch tokens embed_dim"],
    wq: Float[Tensor, "embed_dim attn_dim"],
    wk: Float[Tensor, "embed_dim attn_dim"],
    wv: Float[Tensor, "embed_dim attn_dim"],
    wo: Float[Tensor, "attn_dim embed_dim"],
    bq: Float[Tensor, " attn_dim"] | None = None,
    bk: Float[Tensor, " attn_dim"] | None = None,
    bv: Float[Tensor, " attn_dim"] | None = None,
    bo: Float[Tensor, " embed_dim"] | None = None,
    *,
    heads: int,
    head_split: HeadSplit = "reshape_swap",
    residual: Float[Tensor, "*batch tokens embed_dim"] | None = None,
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """:func:`mha`'s output alone (plus ``residual`` if given), for a forward that keeps nothing.

    The same projections and head split as :func:`mha`; the per-head ``softmax(Q Kᵀ / √hd) V``
    is ``F.scaled_dot_product_attention``, one fused kernel that reads Q, K, V through their
    strides and never materialises the ``(T, T)`` probabilities; a ``residual`` (the block's skip
    connection) is accumulated by the output projection's GEMM
    (:func:`~vitspec.primitives.linear.linear_inference`). Equal to :func:`mha` (``+ residual``)
    up to rounding. Not for autograd: it would differentiate ATen's kernel rather than the
    spec's ops, and the residual sum is written in place.
    """
    _check_split(head_split)
    if (bq is None) != (bk is None) or (bq is None) != (bv is None):
        raise ValueError("q/k/v biases must be all given or all None")
    b_qkv = None if bq is None else torch.cat((bq, bk, bv))  # type: ignore[arg-type]
    qkv = F.linear(x, torch.cat((wq, wk, wv), dim=1).mT, b_qkv)  # (*b, T, 3A): one GEMM, as in mha
    if head_split == "reshape_swap":  # strided views, no copies: the kernel takes any strides
        q, k, v = (t.transpose(-3, -2) for t in qkv.unflatten(-1, (3, heads, -1)).unbind(-3))
    else:
        q, k, v = (split_heads(t, heads, head_split) for t in qkv.unflatten(-1, (3, -1)).unbind(-2))
    # The default scale is 1/sqrt(q.shape[-1]) = 1/sqrt(head_dim), the spec's.
    context = combine_heads(F.scaled_dot_product_attention(q, k, v))
    return linear_inference(context, wo, bo, residual)


@checked
def _mha_backward_core(
    x: Float[Tensor, "*batch tokens embed_dim"],
    wq: Float[Tensor, "embed_dim attn_dim"],
    wk: Float[Tensor, "embed_dim attn_dim"],
    wv: Float[Tensor, "embed_dim attn_dim"],
    wo: Float[Tensor, "attn_dim embed_dim"],
    d_out: Float[Tensor, "*batch tokens embed_dim"],
    cache: AttentionCache,
    head_split: HeadSplit = "reshape_swap",
    lean_backward: bool = True,
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], dict[str, Tensor]]:
    q, k, v, probs = cache.q, cache.k, cache.v, cache.probs
    scale = 1.0 / math.sqrt(q.shape[-1])
    d_context = d_out @ wo.T
    grads = {"dWo": flat2(cache.context).T @ flat2(d_out), "dbo": flat2(d_out).sum(0)}
    # Backprop through combineHeadsSpec: the Lean applies splitHeadsSpec (its own split); the
    # exact adjoint of combine is the reshape-then-swap split. They agree for "reshape_swap".
    dc = split_heads(d_context, q.shape[-3], head_split if lean_backward else "reshape_swap")
    d_probs = dc @ v.transpose(-1, -2)
    dv = probs.transpose(-1, -2) @ dc
    d_scores = softmax_backward(probs, d_probs) * scale
    dq = d_scores @ k
    dk = d_scores.transpose(-1, -2) @ q
    # The forward's fused Q/K/V projection, backwards: stack dQ, dK, dV as (*b, T, 3, A)
    # so the weight gradient and the input gradient are one GEMM each, then split.
    heads, hd = q.shape[-3], q.shape[-1]
    a = heads * hd
    if head_split == "reshape_swap" or lean_backward:
        # Backprop through splitHeadsSpec: the Lean applies combineHeadsSpec (swap, reshape),
        # which is the exact adjoint only for "reshape_swap".
        d5 = x.new_empty((*x.shape[:-1], 3, heads, hd))
        for i, d in enumerate((dq, dk, dv)):
            d5.select(-3, i).copy_(d.transpose(-3, -2))  # one strided copy each, no temporaries
        d_qkv = d5.flatten(-3)  # (*b, T, 3A)
    else:
        d_qkv = torch.cat([split_heads_adjoint(d, head_split) for d in (dq, dk, dv)], dim=-1)
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
    head_split: HeadSplit = "reshape_swap",
    lean_backward: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(d_x, grads)`` with ``grads`` keyed ``dWq dWk dWv dWo dbq dbk dbv dbo``.

    Without ``cache`` the forward intermediates are recomputed (the Lean way); a ``cache``
    must come from a forward with the same ``head_split``. ``lean_backward``: the Lean's
    ``MultiHeadAttentionBackward`` literally (split/combine as each other's adjoints), else
    the exact VJP; the two differ only for ``head_split="direct_reshape"`` (module doc).
    Bias gradients are returned whether or not the profile has those biases;
    callers keep the ones their bundle owns.
    """
    _check_split(head_split)
    if cache is None:
        _, cache = _mha_core(x, wq, wk, wv, wo, bq, bk, bv, bo, heads, head_split)
    return _mha_backward_core(x, wq, wk, wv, wo, d_out, cache, head_split, lean_backward)


# -- the readable reference: per head, in the Lean's order --------------------------------
def sdpa_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Lean ``scaledDotProductAttention`` (no mask) for one head: ``softmax(Q Kᵀ / √d) V``."""
    weights = softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])))
    return weights @ v


def sdpa_backward_reference(q: Tensor, k: Tensor, v: Tensor, d_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lean ``scaledDotProductAttentionBackward`` for one head: ``(dQ, dK, dV)``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    weights = softmax((q @ k.transpose(-1, -2)) * scale)
    d_weights = d_out @ v.transpose(-1, -2)  # Out = A V
    dv = weights.transpose(-1, -2) @ d_out
    d_scores = softmax_backward(weights, d_weights) * scale  # softmaxBackwardFromWeightsSpec, then the scale
    return d_scores @ k, d_scores.transpose(-1, -2) @ q, dv


def mha_reference(
    x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, *, heads: int, head_split: HeadSplit = "reshape_swap"
) -> Tensor:
    """Lean ``MultiHeadAttention.forward`` (no mask, no biases), one head at a time.

    Project, split (the revision's ``splitHeadsSpec``), scaled dot-product attention per head,
    combine (``combineHeadsSpec``), output projection. Slower than :func:`mha`, and meant to be read.
    """
    _check_split(head_split)
    q_heads = split_heads(x @ wq, heads, head_split)
    k_heads = split_heads(x @ wk, heads, head_split)
    v_heads = split_heads(x @ wv, heads, head_split)
    per_head = [
        sdpa_reference(q_heads[..., h, :, :], k_heads[..., h, :, :], v_heads[..., h, :, :]) for h in range(heads)
    ]
    return combine_heads(torch.stack(per_head, dim=-3)) @ wo


def mha_backward_reference(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    d_out: Tensor,
    *,
    heads: int,
    head_split: HeadSplit = "reshape_swap",
    lean_backward: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Lean ``MultiHeadAttentionBackward``, step by step: ``(d_x, {dWq, dWk, dWv, dWo})``.

    With ``lean_backward`` (the Lean as written) ``splitHeadsSpec`` stands in for the adjoint
    of ``combineHeadsSpec`` and ``combineHeadsSpec`` for the adjoint of ``splitHeadsSpec``;
    without it the true adjoints are used (the exact VJP). See the module doc.
    """
    _check_split(head_split)
    xf, dof = x.reshape(-1, x.shape[-1]), d_out.reshape(-1, d_out.shape[-1])
    # Forward recomputation.
    q_heads = split_heads(x @ wq, heads, head_split)
    k_heads = split_heads(x @ wk, heads, head_split)
    v_heads = split_heads(x @ wv, heads, head_split)
    per_head = [
        sdpa_reference(q_heads[..., h, :, :], k_heads[..., h, :, :], v_heads[..., h, :, :]) for h in range(heads)
    ]
    concatenated = combine_heads(torch.stack(per_head, dim=-3))
    # Output projection: concatenated @ Wo.
    d_concat = d_out @ wo.T
    d_wo = concatenated.reshape(-1, concatenated.shape[-1]).T @ dof
    # Combine heads, backwards.
    d_heads = split_heads(d_concat, heads, head_split) if lean_backward else split_heads(d_concat, heads)
    # Each head's attention, backwards.
    per_head_grads = [
        sdpa_backward_reference(
            q_heads[..., h, :, :], k_heads[..., h, :, :], v_heads[..., h, :, :], d_heads[..., h, :, :]
        )
        for h in range(heads)
    ]
    # Split heads, backwards, for Q, K and V.
    unsplit = combine_heads if lean_backward else (lambda t: split_heads_adjoint(t, head_split))
    d_q, d_k, d_v = (unsplit(torch.stack([g[i] for g in per_head_grads], dim=-3)) for i in range(3))
    # Input projections.
    grads = {"dWq": xf.T @ d_q.reshape(xf.shape[0], -1), "dWk": xf.T @ d_k.reshape(xf.shape[0], -1)}
    grads |= {"dWv": xf.T @ d_v.reshape(xf.shape[0], -1), "dWo": d_wo}
    d_x = d_q @ wq.T + d_k @ wk.T + d_v @ wv.T
    return d_x, grads
