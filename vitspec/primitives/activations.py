"""FFN nonlinearities: ReLU (the spec), GELU with erf and with tanh (profiles).

Each backward has a reference formula (``*_backward_reference``) and, by default, runs
ATen's fused derivative kernel for the same formula (see :mod:`._kernels`).

:data:`IN_PLACE` holds in-place forms of the forwards (the same ATen kernels, writing into
their input) for a forward that keeps nothing: the FFN's pre-activation is a fresh
temporary there, so overwriting it saves a tensor of ``tokens × hidden_dim`` per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked
from ._kernels import _State

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@checked
def relu(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    return torch.relu(x)


@checked
def relu_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ 1[x > 0]`` (subgradient 0 at 0, as PyTorch and Lean's ``reluSpec`` derivative).

    ``x`` may be the input or the output of ``relu``: ``1[relu(x) > 0] = 1[x > 0]``.
    """
    if _State.fused:
        return torch.ops.aten.threshold_backward(dy, x, 0)
    return relu_backward_reference(x, dy)


@checked
def relu_backward_reference(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """The formula of :func:`relu_backward`."""
    return dy * (x > 0).to(dy.dtype)


@checked
def gelu_erf(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """``x Φ(x)`` with the exact normal CDF."""
    return F.gelu(x)


@checked
def gelu_erf_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ (Φ(x) + x φ(x))``."""
    if _State.fused:
        return torch.ops.aten.gelu_backward(dy, x, approximate="none")
    return gelu_erf_backward_reference(x, dy)


@checked
def gelu_erf_backward_reference(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """The formula of :func:`gelu_erf_backward`."""
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return dy * (cdf + x * pdf)


@checked
def gelu_tanh(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """``0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))``."""
    return F.gelu(x, approximate="tanh")


@checked
def gelu_tanh_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ (0.5 (1 + t) + 0.5 x (1 - t²) √(2/π)(1 + 3·0.044715 x²))`` with ``t = tanh(√(2/π)(x + 0.044715 x³))``."""
    if _State.fused:
        return torch.ops.aten.gelu_backward(dy, x, approximate="tanh")
    return gelu_tanh_backward_reference(x, dy)


@checked
def gelu_tanh_backward_reference(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """The formula of :func:`gelu_tanh_backward`."""
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    t = torch.tanh(u)
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


@checked
def relu_(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """:func:`relu`, overwriting ``x`` (which must not be needed afterwards)."""
    return torch.relu_(x)


@checked
def gelu_erf_(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """:func:`gelu_erf`, overwriting ``x`` (ATen's ``gelu_``: the kernel of ``F.gelu``)."""
    return torch.ops.aten.gelu_(x)


@checked
def gelu_tanh_(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    """:func:`gelu_tanh`, overwriting ``x``."""
    return torch.ops.aten.gelu_(x, approximate="tanh")


#: Activation name -> its in-place forward (names as :data:`vitspec.schema.ACTIVATIONS`).
IN_PLACE: dict[str, Callable[[Tensor], Tensor]] = {"relu": relu_, "gelu_erf": gelu_erf_, "gelu_tanh": gelu_tanh_}
