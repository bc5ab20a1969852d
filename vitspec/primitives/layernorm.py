"""LayerNorm over the last axis (Lean ``Spec.layerNorm`` / ``layerNormBackward``).

Lean semantics, per row::

    mean     = Σ x / N
    centered = x - mean
    var      = max(Σ centered² / N, 0)          # population variance
    y        = centered / sqrt(var + ε) * γ + β

``torch.nn.functional.layer_norm`` computes the same function (biased variance,
ε inside the square root); the forward uses it for speed, and
:func:`layer_norm_reference` spells the Lean formula out so tests can hold the two
together. The clamp is a no-op in exact arithmetic (a mean of squares is ≥ 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked
from ._batch import sum_to


@checked
def layer_norm(
    x: Float[Tensor, "*batch features"],
    gamma: Float[Tensor, " features"],
    beta: Float[Tensor, " features"],
    eps: float,
) -> Float[Tensor, "*batch features"]:
    return F.layer_norm(x, (x.shape[-1],), gamma, beta, eps)


@checked
def layer_norm_reference(
    x: Float[Tensor, "*batch features"],
    gamma: Float[Tensor, " features"],
    beta: Float[Tensor, " features"],
    eps: float,
) -> Float[Tensor, "*batch features"]:
    """The Lean formula, op for op."""
    centered = x - x.mean(-1, keepdim=True)
    var = torch.clamp_min((centered * centered).mean(-1, keepdim=True), 0.0)
    return centered / torch.sqrt(var + eps) * gamma + beta


@checked
def layer_norm_backward(
    x: Float[Tensor, "*batch features"],
    gamma: Float[Tensor, " features"],
    dy: Float[Tensor, "*batch features"],
    eps: float,
) -> tuple[Float[Tensor, "*batch features"], Float[Tensor, " features"], Float[Tensor, " features"]]:
    """Lean ``layerNormBackward`` (statistics recomputed from ``x``)::

    xhat = centered / std;   g = dy ⊙ γ
    dx   = (g - mean(g) - xhat ⊙ mean(g ⊙ xhat)) / std
    dγ   = Σ_rows dy ⊙ xhat;  dβ = Σ_rows dy
    """
    centered = x - x.mean(-1, keepdim=True)
    var = torch.clamp_min((centered * centered).mean(-1, keepdim=True), 0.0)
    inv_std = torch.rsqrt(var + eps)
    xhat = centered * inv_std
    g = dy * gamma
    dx = inv_std * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dgamma = sum_to(dy * xhat, 1)
    dbeta = sum_to(dy, 1)
    return dx, dgamma, dbeta
