"""Judge a module by what it computes, not by its class: numeric probes for activations and norms.

An adapter that meets an activation or normalisation module of a class it does not know
(a user's ``CustomGELU``, timm's ``QuickGELU``, a LayerNorm subclass) runs it on a fixed probe
input, in float64 on a private copy, and compares it with the spec's candidates:

- activations: ``relu``, ``gelu_erf``, ``gelu_tanh`` (the profile activations) on the grid
  ``linspace(-10, 10, 401)`` (wide enough to tell ReLU6 from ReLU), forward *and*
  vector-Jacobian product with a fixed cotangent;
- LayerNorm: ``layer_norm(x, weight, bias, eps)`` over the last axis for the module's own
  ``eps`` and the usual ones, on rows of two scales (a small variance makes ``eps`` visible).

A forward within :data:`PROBE_TOL` (normwise) makes the module that op: the check then
compares the model with the spec as usual, so a module whose *backward* is wrong (forward
exactly GELU, gradient 1 % off) passes the probe and fails the gradient comparison, at its
block. No match gives the closest candidate and its error, for an UNSUPPORTED reason.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from vitspec.primitives import (
    gelu_erf,
    gelu_erf_backward,
    gelu_tanh,
    gelu_tanh_backward,
    layer_norm,
    relu,
    relu_backward,
)
from vitspec.primitives.variations import ACTIVATIONS as VARIATION_ACTIVATIONS
from vitspec.primitives.variations import rms_norm
from vitspec.profiles import Activation

__all__ = ["PROBE_TOL", "Probe", "probe_activation", "probe_layer_norm", "probe_rms_norm"]

#: Normwise forward error under which a probed module *is* the candidate. Far above float64
#: rounding (1e-16), far below the nearest distinct candidate (GELU erf vs tanh: 3e-4).
PROBE_TOL = 1e-9

_ACTIVATIONS: dict[Activation, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "relu": (relu, relu_backward),
    "gelu_erf": (gelu_erf, gelu_erf_backward),
    "gelu_tanh": (gelu_tanh, gelu_tanh_backward),
    # variation points (vitspec.primitives.variations): CLIP's QuickGELU, the GLU gates' SiLU and sigmoid
    "quick_gelu": VARIATION_ACTIVATIONS["quick_gelu"],
    "silu": VARIATION_ACTIVATIONS["silu"],
    "sigmoid": VARIATION_ACTIVATIONS["sigmoid"],
}
_EPS_CANDIDATES = (1e-6, 1e-5, 1e-12, 1e-8)


@dataclass(frozen=True)
class Probe:
    """The outcome of a probe: the matched candidate (``None``: no match) and the errors."""

    match: str | None
    closest: str
    forward_err: float
    vjp_err: float | None = None
    error: str = ""  # the module raised on the probe input

    def describe(self, what: str, module: nn.Module) -> str:
        """One line for a report: what the module was probed as, and how close it came."""
        cls = type(module).__name__
        if self.error:
            return f"{what} is {cls}; probing it failed ({self.error})"
        vjp = f", vjp err {self.vjp_err:.1e}" if self.vjp_err is not None else ""
        if self.match is not None:
            return f"{what} is {cls}: probed as {self.match} (forward err {self.forward_err:.1e}{vjp})"
        return (
            f"{what} is {cls}, which matches no spec candidate on the probe "
            f"(closest {self.closest}: forward err {self.forward_err:.1e}{vjp})"
        )


def _rel(a: Tensor, r: Tensor) -> float:
    d = float((a.detach().to(torch.float64) - r).abs().max())
    return d / max(float(r.abs().max()), 1e-300) if math.isfinite(d) else math.inf


def _private(m: nn.Module) -> nn.Module:
    """A float64 copy: the probe must neither touch the model's module nor round in its dtype."""
    return copy.deepcopy(m).to(torch.float64)


def probe_activation(m: nn.Module) -> Probe:
    """Which spec activation ``m`` computes elementwise (forward match), with its VJP error."""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False):  # the probe needs autograd even inside a caller's inference_mode
        grid = torch.linspace(-10.0, 10.0, 401, dtype=torch.float64).requires_grad_(True)
        cot = torch.randn(grid.shape, generator=g, dtype=torch.float64)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            y = _private(m)(grid)
            (vjp,) = torch.autograd.grad(y, grid, cot, allow_unused=True)
    except Exception as e:
        return Probe(None, "", math.inf, None, f"{type(e).__name__}: {e}")
    if not isinstance(y, Tensor) or y.shape != grid.shape:
        return Probe(None, "", math.inf, None, "the output is not an elementwise tensor")
    x = grid.detach()
    errs = {k: _rel(y, f(x)) for k, (f, _) in _ACTIVATIONS.items()}
    best = min(errs, key=lambda k: errs[k])
    vjp_err = _rel(vjp, _ACTIVATIONS[best][1](x, cot)) if vjp is not None else math.inf
    return Probe(best if errs[best] <= PROBE_TOL else None, best, errs[best], vjp_err)


def probe_layer_norm(m: nn.Module, dim: int) -> tuple[Probe, float]:
    """``(probe, eps)``: whether ``m`` is an affine LayerNorm over the last axis of width ``dim``, and its eps.

    The module's own ``weight`` and ``bias`` are the candidate's gamma and beta (they are what the
    adapter maps onto the spec); ``eps`` is the best of the module's ``eps`` attribute and the usual values.
    """
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    if not (isinstance(w, Tensor) and isinstance(b, Tensor) and w.shape == (dim,) and b.shape == (dim,)):
        return Probe(None, "layer_norm", math.inf, None, f"no affine weight and bias of shape ({dim},)"), 0.0

    def ref(x: Tensor, pm: nn.Module, eps: float) -> Tensor:
        w64, b64 = (cast(Tensor, getattr(pm, n)).detach() for n in ("weight", "bias"))
        return layer_norm(x, w64, b64, eps)

    return _probe_norm(m, dim, "layer_norm", ref)


def probe_rms_norm(m: nn.Module, dim: int) -> tuple[Probe, float]:
    """``(probe, eps)``: whether ``m`` is an RMSNorm ``x / sqrt(mean(x²) + eps) * weight`` over the last axis of
    width ``dim`` (a variation point: timm ``RmsNorm``), and its eps; as :func:`probe_layer_norm`."""
    w = getattr(m, "weight", None)
    if not (isinstance(w, Tensor) and w.shape == (dim,)) or getattr(m, "bias", None) is not None:
        return Probe(None, "rms_norm", math.inf, None, f"no weight of shape ({dim},) without a bias"), 0.0

    def ref(x: Tensor, pm: nn.Module, eps: float) -> Tensor:
        return rms_norm(x, cast(Tensor, pm.weight).detach(), eps)

    return _probe_norm(m, dim, "rms_norm", ref)


def _probe_norm(
    m: nn.Module, dim: int, kind: str, ref: Callable[[Tensor, nn.Module, float], Tensor]
) -> tuple[Probe, float]:
    """``(probe, eps)`` of a norm over the last axis of width ``dim``: ``m`` runs on a private float64 copy and
    ``ref(x, copy, eps)`` (the spec's ``kind`` with the copy's own parameters) is tried at the module's ``eps``
    and the usual values; the closest eps wins."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 8, dim), generator=g, dtype=torch.float64)
    x[1] *= 1e-3  # small-magnitude (so small-variance) rows make the eps visible
    try:
        pm = _private(m)
        with torch.no_grad():
            y = pm(x)
    except Exception as e:
        return Probe(None, kind, math.inf, None, f"{type(e).__name__}: {e}"), 0.0
    if not isinstance(y, Tensor) or y.shape != x.shape:
        return Probe(None, kind, math.inf, None, "the output does not have the input's shape"), 0.0
    own = getattr(m, "eps", None)
    cands = ([float(own)] if isinstance(own, int | float) else []) + list(_EPS_CANDIDATES)
    errs = {eps: _rel(y, ref(x, pm, eps)) for eps in cands}
    eps = min(errs, key=lambda e: errs[e])
    name = f"{kind}(eps={eps:g})"
    return Probe(name if errs[eps] <= PROBE_TOL else None, name, errs[eps]), eps
