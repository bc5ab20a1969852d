"""Numerically stable softmax over the last (key) axis.

Lean's ``softmax`` subtracts the row maximum before exponentiating;
``torch.softmax`` does the same. Backward: ``dS = P ⊙ (dP - Σ_k dP ⊙ P)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dims import Float, checked


@checked
def softmax(scores: Float[Tensor, "*batch q k"]) -> Float[Tensor, "*batch q k"]:
    return torch.softmax(scores, dim=-1)


@checked
def softmax_backward(
    probs: Float[Tensor, "*batch q k"], dp: Float[Tensor, "*batch q k"]
) -> Float[Tensor, "*batch q k"]:
    """VJP of softmax given its *output* ``probs`` (no recomputation needed)."""
    return probs * (dp - (dp * probs).sum(-1, keepdim=True))
