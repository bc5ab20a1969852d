"""Affine maps: the spec's ``(in, out)`` linear (FFN, Q/K/V/O) and the ``(out, in)`` head.

Lean: ``FeedForward`` uses ``matMulSpec x W1`` with ``W1 : (embedDim, hiddenDim)``;
the head is ``LinearSpec embedDim numClasses`` with weight ``(numClasses, embedDim)``
(``ViTGrads.d_head_W``), i.e. ``y = W x + b``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked
from ._batch import flat2, sum_to


@checked
def linear(
    x: Float[Tensor, "*batch n d_in"], w: Float[Tensor, "d_in d_out"], b: Float[Tensor, " d_out"] | None = None
) -> Float[Tensor, "*batch n d_out"]:
    """``y = x @ W + b`` with ``W`` in the spec's ``(in, out)`` layout.

    ``F.linear`` takes ``(out, in)``; ``w.mT`` is that view of the same storage, so the
    call is one ``addmm`` with the bias fused in and no copy of ``W``.
    """
    return F.linear(x, w.mT, b)


@checked
def linear_inference(
    x: Float[Tensor, "*batch n d_in"],
    w: Float[Tensor, "d_in d_out"],
    b: Float[Tensor, " d_out"] | None = None,
    residual: Float[Tensor, "*batch n d_out"] | None = None,
) -> Float[Tensor, "*batch n d_out"]:
    """``residual + (x @ W + b)`` for a forward that keeps nothing (:func:`linear` without ``residual``).

    The skip connection after a block's attention or FFN, in one GEMM: a fresh tensor
    ``residual + b`` that the GEMM accumulates ``x @ W`` into (BLAS ``beta = 1``), instead of
    the GEMM's own copy of ``b`` into its output followed by a separate sum: one pass over the
    output fewer. Equal to ``residual + linear(x, W, b)`` up to rounding (the sums associate
    differently). Not for autograd: ``addmm_`` writes in place.
    """
    if residual is None:
        return F.linear(x, w.mT, b)
    out = residual + b if b is not None else residual.clone(memory_format=torch.contiguous_format)
    out = out.contiguous()  # a no-op unless residual was strided: addmm_ needs the flat (rows, d_out) view
    out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), w)
    return out


@checked
def linear_backward(
    x: Float[Tensor, "*batch n d_in"], w: Float[Tensor, "d_in d_out"], dy: Float[Tensor, "*batch n d_out"]
) -> tuple[Float[Tensor, "*batch n d_in"], Float[Tensor, "d_in d_out"], Float[Tensor, " d_out"]]:
    """``dx = dy @ Wᵀ``, ``dW = Σ xᵀ dy`` (over batch and rows), ``db = Σ dy``."""
    dx = dy @ w.T
    dw = flat2(x).T @ flat2(dy)
    db = flat2(dy).sum(0)
    return dx, dw, db


@checked
def head(
    pooled: Float[Tensor, "*batch embed_dim"], w: Float[Tensor, "classes embed_dim"], b: Float[Tensor, " classes"]
) -> Float[Tensor, "*batch classes"]:
    """Classifier ``logits = W_head @ pooled + b_head`` (Lean ``linearSpec m.head pooled``)."""
    return pooled @ w.T + b


@checked
def head_backward(
    pooled: Float[Tensor, "*batch embed_dim"],
    w: Float[Tensor, "classes embed_dim"],
    dy: Float[Tensor, "*batch classes"],
) -> tuple[Float[Tensor, "*batch embed_dim"], Float[Tensor, "classes embed_dim"], Float[Tensor, " classes"]]:
    """Lean ``linearBackwardSpec``: ``d_pooled = Wᵀ dy``, ``d_head_W = Σ dy ⊗ pooled``, ``d_head_b = Σ dy``."""
    d_pooled = dy @ w
    dw = sum_to(dy.unsqueeze(-1) * pooled.unsqueeze(-2), 2) if dy.dim() == 1 else flat2(dy).T @ flat2(pooled)
    db = sum_to(dy, 1)
    return d_pooled, dw, db
