"""The switch between fused derivative kernels and the spelled-out backward formulas.

Several backward primitives have two implementations computing the same function:

- the **reference** (``*_backward_reference``): the derivative written out as tensor
  arithmetic, formula for formula as in the Lean spec; the readable definition;
- the **fused** kernel: ATen's hand-written derivative kernel for that one op
  (``gelu_backward``, ``threshold_backward``, ``_softmax_backward_data``,
  ``native_layer_norm_backward``), called directly as a plain function. It is not
  autograd (no graph, no tape, works under ``torch.inference_mode()``); it is the same
  formula in one pass over memory instead of eight to twelve, which is what keeps the
  explicit backward as fast as autograd's.

Fused is the default; ``fused_backward(False)`` (a call or a context manager) or
``VITSPEC_FUSED_BACKWARD=0`` at import selects the references everywhere, so the whole
explicit backward can be run on the formulas alone. Tests hold fused == reference ==
autograd for every such primitive (``tests/test_primitives.py``).
"""

from __future__ import annotations

import os

__all__ = ["fused_backward", "fused_backward_enabled"]


class _State:
    fused: bool = os.environ.get("VITSPEC_FUSED_BACKWARD", "1").strip().lower() not in ("0", "false", "off", "no")


def fused_backward_enabled() -> bool:
    return _State.fused


class fused_backward:  # noqa: N801 - used like a function
    """Use fused derivative kernels (default) or the reference formulas; a call or a context manager."""

    def __init__(self, enabled: bool = True) -> None:
        self._previous = _State.fused
        _State.fused = bool(enabled)

    def __enter__(self) -> fused_backward:
        return self

    def __exit__(self, *exc: object) -> None:
        _State.fused = self._previous
