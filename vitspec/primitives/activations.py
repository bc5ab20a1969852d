"""FFN nonlinearities: ReLU (the spec), GELU with erf and with tanh (profiles)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@checked
def relu(x: Float[Tensor, "*batch features"]) -> Float[Tensor, "*batch features"]:
    return torch.relu(x)


@checked
def relu_backward(
    x: Float[Tensor, "*batch features"], dy: Float[Tensor, "*batch features"]
) -> Float[Tensor, "*batch features"]:
    """``dy ⊙ 1[x > 0]`` (subgradient 0 at 0, as PyTorch and Lean's ``reluSpec`` derivative)."""
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
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    t = torch.tanh(u)
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
