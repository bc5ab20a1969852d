"""RMSNorm over the last axis: ``y = x / sqrt(mean(x²) + ε) ⊙ w`` (no centring, no bias).

Not in the TorchLean spec (whose normalisation is LayerNorm). Selected by:

- timm ``VisionTransformer(norm_layer='rmsnorm')`` / ``norm_layer=RmsNorm`` (every norm of the
  model: ``norm1``, ``norm2``, ``norm``, ``fc_norm``, ``norm_pre`` and, with ``qk_norm=True``,
  ``q_norm`` / ``k_norm`` over ``head_dim``); timm ``RmsNorm(channels, eps=1e-6, affine=True)``;
- EVA-02 / many LLM-style vision towers (``norm_layer=RmsNorm``).

timm's formula (``timm.layers.fast_norm.rms_norm``, the path taken without APEX)::

    v = mean(x², last axis);  y = x * rsqrt(v + eps);  y = y * weight

``torch.nn.functional.rms_norm`` computes the same function; the forward uses it and
:func:`rms_norm_reference` spells the formula out. Backward, per row with
``r = 1/sqrt(mean(x²) + ε)``, ``x̂ = x r``, ``g = dy ⊙ w``::

    dx = r (g - x̂ mean(g ⊙ x̂));   dw = Σ_rows dy ⊙ x̂

On CUDA the default backward evaluates it with ATen's fused ``_fused_rms_norm_backward`` kernel
from the forward kernel's own ``rstd``; ATen has no CPU kernel for it (torch 2.14), so on the CPU,
and with ``fused_backward(False)``, the backward is :func:`rms_norm_backward_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...dims import Float, checked
from .._batch import sum_to
from .._kernels import fused_backward_enabled


@checked
def rms_norm(
    x: Float[Tensor, "*batch features"], weight: Float[Tensor, " features"], eps: float
) -> Float[Tensor, "*batch features"]:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


@checked
def rms_norm_reference(
    x: Float[Tensor, "*batch features"], weight: Float[Tensor, " features"], eps: float
) -> Float[Tensor, "*batch features"]:
    """timm's ``rms_norm``, op for op."""
    v = (x * x).mean(-1, keepdim=True)
    return x * torch.rsqrt(v + eps) * weight


@checked
def rms_norm_backward(
    x: Float[Tensor, "*batch features"],
    weight: Float[Tensor, " features"],
    dy: Float[Tensor, "*batch features"],
    eps: float,
) -> tuple[Float[Tensor, "*batch features"], Float[Tensor, " features"]]:
    """``(dx, dw)``, statistics recomputed from ``x``; ``dw`` summed over every row."""
    if not fused_backward_enabled() or x.device.type != "cuda":
        return rms_norm_backward_reference(x, weight, dy, eps)
    n = x.shape[-1]
    _, rstd = torch.ops.aten._fused_rms_norm(x, [n], weight, eps)
    dx, dw = torch.ops.aten._fused_rms_norm_backward(dy, x, [n], rstd, weight, [True, True])
    return dx, dw


@checked
def rms_norm_backward_reference(
    x: Float[Tensor, "*batch features"],
    weight: Float[Tensor, " features"],
    dy: Float[Tensor, "*batch features"],
    eps: float,
) -> tuple[Float[Tensor, "*batch features"], Float[Tensor, " features"]]:
    """The formula of :func:`rms_norm_backward`, op for op."""
    r = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    xhat = x * r
    g = dy * weight
    dx = r * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = sum_to(dy * xhat, 1)
    return dx, dw
