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
from ._kernels import _State


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
    """Lean ``layerNormBackward`` (statistics recomputed from ``x``): ``(dx, dγ, dβ)``.

    The formula is :func:`layer_norm_backward_reference`; by default it is evaluated by
    ATen's fused kernel for it from the recomputed ``mean`` and ``1/std`` (see :mod:`._kernels`).
    """
    if not _State.fused:
        return layer_norm_backward_reference(x, gamma, dy, eps)
    n = x.shape[-1]
    # The forward kernel's own statistics (mean, 1/sqrt(var + eps)), bit for bit what autograd saves;
    # it is also much faster on the CPU than var_mean over the last axis.
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [n], None, None, eps)
    # The bias argument only tells the kernel that a beta exists (so it returns dβ); its values are unused.
    dx, dgamma, dbeta = torch.ops.aten.native_layer_norm_backward(
        dy, x, [n], mean, rstd, gamma, gamma, [True, True, True]
    )
    return dx, dgamma, dbeta


@checked
def layer_norm_backward_reference(
    x: Float[Tensor, "*batch features"],
    gamma: Float[Tensor, " features"],
    dy: Float[Tensor, "*batch features"],
    eps: float,
) -> tuple[Float[Tensor, "*batch features"], Float[Tensor, " features"], Float[Tensor, " features"]]:
    """The formula of :func:`layer_norm_backward`, op for op::

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
