"""Numerically stable softmax over the last (key) axis.

Lean's ``softmax`` subtracts the row maximum before exponentiating;
``torch.softmax`` does the same. Backward: ``dS = P ⊙ (dP - Σ_k dP ⊙ P)``
(:func:`softmax_backward_reference`; by default computed by ATen's fused kernel for
that formula, see :mod:`._kernels`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dims import Float, checked
from ._kernels import _State


@checked
def softmax(scores: Float[Tensor, "*batch q k"]) -> Float[Tensor, "*batch q k"]:
    return torch.softmax(scores, dim=-1)


@checked
def softmax_backward(
    probs: Float[Tensor, "*batch q k"], dp: Float[Tensor, "*batch q k"]
) -> Float[Tensor, "*batch q k"]:
    """VJP of softmax given its *output* ``probs`` (no recomputation needed)."""
    if _State.fused:
        return torch.ops.aten._softmax_backward_data(dp, probs, -1, probs.dtype)
    return softmax_backward_reference(probs, dp)


@checked
def softmax_backward_reference(
    probs: Float[Tensor, "*batch q k"], dp: Float[Tensor, "*batch q k"]
) -> Float[Tensor, "*batch q k"]:
    """The formula of :func:`softmax_backward`."""
    return probs * (dp - (dp * probs).sum(-1, keepdim=True))
