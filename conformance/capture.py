"""Capture intermediate tensors of a third-party model at the spec's stage boundaries.

An adapter names, per stage, a module and whether the stage is that module's output
(forward hook) or input (forward-pre hook), plus a transform to the spec layout
(``conformance.adapters.CapturePoint``). :func:`capture` registers those hooks for the
duration of a ``with`` block and *always* removes them, also when the forward raises,
so a checked model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["CaptureError", "Captured", "PointLike", "capture"]


class PointLike(Protocol):
    """What :func:`capture` needs of a ``CapturePoint`` (structural, to avoid an import cycle)."""

    module: nn.Module
    kind: str
    transform: Any


class CaptureError(RuntimeError):
    """A capture point is malformed or its transform failed (an adapter bug, not a model bug)."""


@dataclass
class Captured:
    """Captured tensors by stage name (detached float copies, first call only) and call counts."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def get(self, name: str) -> Tensor | None:
        return self.tensors.get(name)

    @property
    def repeated(self) -> list[str]:
        """Stages whose module ran more than once (only the first call was kept)."""
        return [n for n, c in self.calls.items() if c > 1]


def _register(out: Captured, name: str, point: PointLike) -> torch.utils.hooks.RemovableHandle:
    kind = getattr(point, "kind", None)
    module = getattr(point, "module", None)
    if not isinstance(module, nn.Module):
        raise CaptureError(f"capture point {name!r}: module is {type(module).__name__}, not an nn.Module")
    if kind not in ("output", "input"):
        raise CaptureError(f"capture point {name!r}: kind must be 'output' or 'input', got {kind!r}")

    def transformed(value: Any) -> None:
        out.calls[name] = out.calls.get(name, 0) + 1
        if name in out.tensors or name in out.errors:
            return  # keep the first call: a ViT runs each stage module once per forward
        try:
            t = point.transform(value)
        except Exception as e:  # an adapter's transform must not take the model's forward down
            out.errors[name] = f"{type(e).__name__}: {e}"
            return
        if not isinstance(t, Tensor):
            out.errors[name] = f"transform returned {type(t).__name__}, not a Tensor"
            return
        # Detach + clone: the hook must not keep the autograd graph alive, and later
        # in-place ops of the model must not change what was captured.
        out.tensors[name] = t.detach().clone()

    if kind == "output":
        return module.register_forward_hook(lambda _m, _a, output: transformed(output))

    # Same convention as CapturePoint.register: the first positional input, else the first keyword value.
    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        transformed(args[0] if args else next(iter(kwargs.values())))

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@contextmanager
def capture(points: Mapping[str, PointLike]) -> Iterator[Captured]:
    """Register a hook per capture point; yield the :class:`Captured` they fill.

    ``kind == "output"``: forward hook, the transform gets the module's output.
    ``kind == "input"``: forward-pre hook, the transform gets the module's first input
    (as ``conformance.adapters.CapturePoint.register`` does). The hooks only read;
    they never return a value, so they cannot alter the model's computation. All
    handles are removed on exit, whatever happens inside the block (also when
    registering a later point fails).
    """
    out = Captured()
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for name, point in points.items():
            handles.append(_register(out, name, point))
        yield out
    finally:
        for h in handles:
            h.remove()
