"""A check's memory, estimated from the model's spec config and the batch before anything runs.

``check()`` holds, at its peak, the library model and the spec bundle (both in the check's dtype,
plus a float64 reference copy of the parameters and their gradients) and, per encoder layer, the
captured activations of the library run and the spec run (forward and backward). The estimate
counts those tensors; it is an order-of-magnitude guard (within a small factor of the measured
peak), meant to refuse ``--batch 1000000000000`` with one line instead of an out-of-memory kill.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vitspec.config import ViTConfig

__all__ = ["MemoryEstimate", "available_bytes", "estimate_check_bytes", "format_bytes"]

# Per-layer activation tensors a check keeps alive, in units of batch*tokens*embed (q, k, v,
# attention output, projection, two norms, two residual sums, FFN out) and of batch*tokens*hidden
# (FFN hidden before and after the activation); attention weights are batch*heads*tokens^2.
_EMBED_ACTS, _HIDDEN_ACTS, _ATTN_ACTS = 10, 2, 2
# Library run + spec run, forward captures + backward intermediates.
_RUNS = 4


@dataclass(frozen=True)
class MemoryEstimate:
    bytes: int
    params: int
    activations: int


def estimate_check_bytes(
    cfg: ViTConfig, in_c: int, in_h: int, in_w: int, *, batch: int, itemsize: int = 8, grads: bool = True
) -> MemoryEstimate:
    """Bytes a ``check()`` of a model with this spec config needs at ``batch`` (see the module doc)."""
    tokens = cfg.tokens(in_h, in_w) + 1
    e, f, h = cfg.embed_dim, cfg.hidden_dim, max(cfg.head_count, 1)
    layer_params = 4 * e * e + 2 * e * f + 9 * e + f
    params = cfg.num_layers * layer_params + e * in_c * cfg.patch_h * cfg.patch_w + tokens * e + e * cfg.num_classes
    # model + spec bundle + float64 reference (+ a gradient of each with grads)
    param_bytes = params * (itemsize + itemsize + 8) * (2 if grads else 1)
    per_layer = batch * tokens * (_EMBED_ACTS * e + _HIDDEN_ACTS * f) + _ATTN_ACTS * batch * h * tokens * tokens
    acts = (cfg.num_layers + 2) * per_layer + batch * in_c * in_h * in_w
    act_bytes = acts * max(itemsize, 8) * (_RUNS if grads else _RUNS // 2)
    return MemoryEstimate(param_bytes + act_bytes, params, acts)


def available_bytes() -> int | None:
    """Memory this process can still get: ``MemAvailable`` (Linux), else physical memory; ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop always returns
