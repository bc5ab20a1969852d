"""The tolerance policy: when is a third-party ViT's number "the spec's number"?

Derivation, numbers and the measurements backing them: ``docs/tolerance.md``. In short:

**Error measure (normwise).** For a stage tensor ``a`` (model) and ``r`` (float64 spec)::

    err(a, r) = max|a - r| / max(max|r|, tiny)

Normwise (one scale per tensor) rather than elementwise, because rounding errors of
sums scale with the size of the whole vector, not with each (possibly cancelled) entry.
Gradients are normwise over their *group* (one encoder block, the patch/pos group, the
head group, the input): an analytically zero gradient (the attention key bias: softmax
ignores a per-query constant) is pure rounding noise and must be judged against the
scale of its layer, not against itself.

**float64 (reference mode).** Both sides in float64; the bound is a forward-error bound
of a depth-``L`` network whose longest dot product has length ``K``::

    u      = 2**-53 ≈ 1.11e-16                   (unit roundoff of float64)
    K      = max(embed_dim, hidden_dim, patch_dim, tokens)
    tol_f  = C_FWD  · u · sqrt(K)   · (L + 1)     C_FWD  = 256
    K_g    = max(K, batch · tokens)               (weight gradients sum over all rows)
    tol_g  = C_GRAD · u · sqrt(K_g) · (L + 1)     C_GRAD = 1024

``sqrt(K)`` is the probabilistic (random-rounding) growth of a length-``K`` sum, ``L + 1``
the number of stages errors accumulate through (patch embedding + L blocks), and the
constants absorb the per-block op count (LayerNorm's division by a standard deviation,
softmax, the few matmuls a block chains) with a wide margin; the measured float64 noise
of real models sits 2–3 orders of magnitude below ``tol`` while the smallest functional
change we care about (a LayerNorm eps 1e-5 vs 1e-6 in one layer) sits orders of
magnitude above it.

**Native low precision (float32 / bfloat16 / float16).** The model runs in its dtype;
the spec runs in float64 (the reference) *and* in the same low dtype. A stage passes if::

    err(model, spec64) <= max(NATIVE_K · err(spec_lowp, spec64), NATIVE_FLOOR_ULPS · u_dtype)

i.e. the model may be ``NATIVE_K`` (= 4) times worse than a straightforward
implementation of the spec in that dtype (the idea behind ``torch._dynamo.utils.same``
with an fp64 reference), never worse than a few units of its own roundoff.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "C_FWD",
    "C_GRAD",
    "DTYPES",
    "NATIVE_FLOOR_ULPS",
    "NATIVE_K",
    "UNIT_ROUNDOFF",
    "Errors",
    "Policy",
    "accumulation_length",
    "coarser",
    "errors",
    "float64_forward_tol",
    "float64_grad_tol",
    "grad_errors",
    "group_scales",
    "parse_dtype",
    "policy",
]

#: Unit roundoff (half the machine epsilon) of each supported dtype.
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
}
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: Safety constant of the float64 forward bound (see docs/tolerance.md for the margin).
C_FWD = 256.0
#: Safety constant of the float64 gradient bound (backward chains about twice the ops).
C_GRAD = 1024.0
#: Native mode: the model may be this many times worse than the spec in the same dtype.
NATIVE_K = 4.0
#: Native mode: never demand less than this many units of the dtype's roundoff.
NATIVE_FLOOR_ULPS = 8.0

_TINY = torch.finfo(torch.float64).tiny


def parse_dtype(dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    """``("float32", torch.float32)`` from either spelling; ``ValueError`` for others."""
    if isinstance(dtype, torch.dtype):
        for name, dt in DTYPES.items():
            if dt == dtype:
                return name, dt
        raise ValueError(f"unsupported dtype {dtype}; valid: {', '.join(DTYPES)}")
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return name, DTYPES[name]


def accumulation_length(*, embed_dim: int, hidden_dim: int, patch_dim: int, tokens: int) -> int:
    """``K``: the longest dot product / reduction of a forward pass.

    Patch-embedding conv (``patch_dim`` terms), Q·Kᵀ and the out projection
    (``embed_dim``), attention·V (``tokens``), FFN second matmul (``hidden_dim``).
    """
    return max(embed_dim, hidden_dim, patch_dim, tokens, 1)


def float64_forward_tol(k: int, layers: int) -> float:
    """``C_FWD · u · sqrt(K) · (L + 1)`` with u = 2**-53."""
    return C_FWD * UNIT_ROUNDOFF["float64"] * math.sqrt(k) * (layers + 1)


def float64_grad_tol(k: int, layers: int, batch_rows: int) -> float:
    """``C_GRAD · u · sqrt(max(K, batch·tokens)) · (L + 1)``."""
    return C_GRAD * UNIT_ROUNDOFF["float64"] * math.sqrt(max(k, batch_rows)) * (layers + 1)


@dataclass(frozen=True)
class Errors:
    """``max|a - r|`` and the normwise relative error against ``scale`` (default ``max|r|``)."""

    max_abs: float
    rel: float


def errors(a: torch.Tensor, ref: torch.Tensor, *, scale: float | None = None) -> Errors:
    """Normwise error of ``a`` against the reference ``ref`` (computed in float64).

    Shapes must agree (the caller reports a mismatch separately). Non-finite values
    give ``inf``/``nan`` errors, which never pass.
    """
    a64 = a.detach().to(torch.float64)
    r64 = ref.detach().to(device=a64.device, dtype=torch.float64)
    if a64.numel() == 0:
        return Errors(0.0, 0.0)
    # One pass, no isfinite() sweep: max() propagates NaN, and an infinite difference stays inf. A
    # row-major operand goes first: torch iterates in its layout, several times faster when the other
    # is a transposed view (a library weight's gradient against the spec's (d_in, d_out) one).
    transposed = a64.dim() == r64.dim() > 0 and a64.stride(-1) != 1 and r64.stride(-1) == 1
    first, second = (r64, a64) if transposed else (a64, r64)
    max_abs = float(torch.sub(first, second).abs_().max())
    if scale is None:
        scale = float(r64.abs().max())
    rel = max_abs / max(scale, _TINY) if math.isfinite(max_abs) else max_abs
    return Errors(max_abs, rel)


def coarser(dtype: str, than: str) -> bool:
    """Whether ``dtype`` rounds more coarsely than ``than`` (larger unit roundoff)."""
    return UNIT_ROUNDOFF[dtype] > UNIT_ROUNDOFF[than]


def group_scales(ref: Mapping[str, torch.Tensor], group_of: Callable[[str], str]) -> dict[str, float]:
    """The scale each gradient *group* is judged against: its largest reference entry.

    Normwise per group, not per parameter: an analytically zero gradient (the attention
    key bias) is rounding noise and must be measured against its layer's scale.
    """
    out: dict[str, float] = {}
    for k, t in ref.items():
        g = group_of(k)
        if t.numel():  # max |t| in one pass without a temporary (NaN propagates through maximum)
            lo, hi = torch.aminmax(t.detach())
            out[g] = max(out.get(g, 0.0), float(torch.maximum(-lo, hi)))
        else:
            out.setdefault(g, 0.0)
    return out


def grad_errors(model: Sequence[torch.Tensor], ref: Sequence[torch.Tensor], scale: float) -> Errors:
    """``max|model - ref|`` over several tensors (one library parameter may feed several spec keys),
    relative to the group ``scale``."""
    worst = max((errors(a, r, scale=scale) for a, r in zip(model, ref, strict=True)), key=lambda e: _order(e.max_abs))
    return worst


def _order(v: float) -> float:
    return math.inf if math.isnan(v) else v


@dataclass(frozen=True)
class Policy:
    """The numbers a check uses; stored in the report (``Report.tolerance``)."""

    dtype: str
    k_accum: int
    layers: int
    batch_rows: int
    fwd_tol64: float
    grad_tol64: float
    native_k: float | None = None
    native_floor: float | None = None

    @property
    def native(self) -> bool:
        return self.dtype != "float64"

    def judge(self, err: float, spec_lowp_err: float | None = None, *, grad: bool = False) -> tuple[bool, float]:
        """``(ok, tol)`` for one normwise error.

        float64: ``err <= tol64`` (forward or gradient bound). Native mode (and a stage the model
        declares it computes in a coarser dtype, judged with that dtype's policy):
        ``err <= max(NATIVE_K · spec_lowp_err, floor)``; a missing or non-finite spec error falls
        back to the floor. ``nan``/``inf`` errors never pass.
        """
        if not self.native:
            tol = self.grad_tol64 if grad else self.fwd_tol64
        else:
            assert self.native_k is not None and self.native_floor is not None
            lowp = spec_lowp_err if spec_lowp_err is not None and math.isfinite(spec_lowp_err) else 0.0
            tol = max(self.native_k * lowp, self.native_floor)
        return (math.isfinite(err) and err <= tol), tol

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"] = "err = max|model-spec64| / max|spec64| (gradients: over the group); " + (
            f"pass if err <= {NATIVE_K:g} * err(spec_{self.dtype}) or <= {NATIVE_FLOOR_ULPS:g} u_{self.dtype}"
            if self.native
            else "pass if err <= C*u*sqrt(K)*(L+1)"
        )
        return d


def policy(
    *,
    dtype: str | torch.dtype,
    embed_dim: int,
    hidden_dim: int,
    patch_dim: int,
    tokens: int,
    layers: int,
    batch: int,
) -> Policy:
    """The policy for one model configuration, batch size and dtype."""
    name, _ = parse_dtype(dtype)
    k = accumulation_length(embed_dim=embed_dim, hidden_dim=hidden_dim, patch_dim=patch_dim, tokens=tokens)
    rows = max(batch, 1) * max(tokens, 1)
    native = name != "float64"
    return Policy(
        dtype=name,
        k_accum=k,
        layers=layers,
        batch_rows=rows,
        fwd_tol64=float64_forward_tol(k, layers),
        grad_tol64=float64_grad_tol(k, layers, rows),
        native_k=NATIVE_K if native else None,
        native_floor=NATIVE_FLOOR_ULPS * UNIT_ROUNDOFF[name] if native else None,
    )
