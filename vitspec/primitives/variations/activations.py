"""Activations beyond the spec's ReLU that are built on the sigmoid: QuickGELU, SiLU, sigmoid.

Not in the TorchLean spec. :data:`ACTIVATIONS` is the one table of every activation a variation
point can name (the core's ReLU and GELUs included), as ``name -> (forward, backward)``.

**QuickGELU** ``x ⊙ σ(1.702 x)``, OpenAI CLIP's sigmoid approximation of GELU. Selected by:

- timm ``VisionTransformer(act_layer='quick_gelu')`` / ``act_layer=QuickGELU`` (the
  ``vit_*_clip_quickgelu_*`` models; the plain ``*_clip_*`` models use exact GELU);
- HF ``CLIPVisionConfig(hidden_act='quick_gelu')`` (the default of CLIP), ``ACT2FN['quick_gelu']``;
- open_clip ``QuickGELU``.

The libraries compute ``x * sigmoid(1.702 * x)`` in that order, and so does :func:`quick_gelu`.

Backward, with ``s = σ(1.702 x)``::

    d/dx [x s] = s + 1.702 x s (1 - s)

Because ``quick_gelu(x) = silu(1.702 x) / 1.702``, the derivative equals ``silu'(1.702 x)``;
the default backward therefore runs ATen's fused ``silu_backward`` kernel at ``1.702 x``
(one pass over memory), and :func:`quick_gelu_backward_reference` keeps the formula.

**SiLU** ``x σ(x)`` is the gate of SwiGLU and **sigmoid** the gate of the original GLU
(see :mod:`.glu`); timm ``act_layer='silu'`` also selects SiLU as a plain FFN activation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...dims import Float, checked
from .._kernels import fused_backward_enabled
from ..activations import gelu_erf, gelu_erf_backward, gelu_tanh, gelu_tanh_backward, relu, relu_backward

#: The slope inside the sigmoid (CLIP's constant, the same in timm, HF and open_clip).
QUICK_GELU_ALPHA = 1.702


@checked
def quick_gelu(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """``x ⊙ σ(1.702 x)``."""
    return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


@checked
def quick_gelu_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ (s + 1.702 x s (1 - s))`` with ``s = σ(1.702 x)``."""
    if fused_backward_enabled():
        return torch.ops.aten.silu_backward(dy, QUICK_GELU_ALPHA * x)
    return quick_gelu_backward_reference(x, dy)


@checked
def quick_gelu_backward_reference(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """The formula of :func:`quick_gelu_backward`."""
    s = torch.sigmoid(QUICK_GELU_ALPHA * x)
    return dy * (s + QUICK_GELU_ALPHA * x * s * (1.0 - s))


@checked
def silu(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """``x σ(x)`` (``torch.nn.SiLU``)."""
    return F.silu(x)


@checked
def silu_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ σ(x)(1 + x (1 - σ(x)))``."""
    if fused_backward_enabled():
        return torch.ops.aten.silu_backward(dy, x)
    return silu_backward_reference(x, dy)


@checked
def silu_backward_reference(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """The formula of :func:`silu_backward`."""
    s = torch.sigmoid(x)
    return dy * s * (1.0 + x * (1.0 - s))


@checked
def sigmoid(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    return torch.sigmoid(x)


@checked
def sigmoid_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ σ(x)(1 - σ(x))`` (the fused kernel reads the output ``σ(x)``)."""
    if fused_backward_enabled():
        return torch.ops.aten.sigmoid_backward(dy, torch.sigmoid(x))
    return sigmoid_backward_reference(x, dy)


@checked
def sigmoid_backward_reference(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """The formula of :func:`sigmoid_backward`."""
    s = torch.sigmoid(x)
    return dy * s * (1.0 - s)


#: Every activation a profile can name: ``name -> (forward(x), backward(x, dy))``.
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "relu": (relu, relu_backward),
    "gelu_erf": (gelu_erf, gelu_erf_backward),
    "gelu_tanh": (gelu_tanh, gelu_tanh_backward),
    "quick_gelu": (quick_gelu, quick_gelu_backward),
    "silu": (silu, silu_backward),
    "sigmoid": (sigmoid, sigmoid_backward),
}
