"""Capture intermediate tensors of a third-party model at the spec's stage boundaries.

This is the only module that hooks a model. An adapter names, per stage, one or more
*candidate* points (``conformance.adapters.CapturePoint``): a module, whether the stage's
tensor is that module's output (forward hook) or input (forward-pre hook), a transform to
the spec layout and a label. Candidates are in preference order; typically the first is
the *consumer* of the stage (``blocks.1``'s input is ``blocks.0``'s output) and the next
the stage's own module, so a library that skips or replaces a module (a patched
``_pos_embed`` that never calls ``pos_drop``) is still observed through a neighbour, and
the report says which neighbour stood in. When two candidates both ran but saw different
tensors, something between them changed the tensor: that is reported too.

:func:`capture` registers the hooks for the duration of a ``with`` block and *always*
removes them, also when the forward raises, so a checked model is left as it was. The
hooks only read (they return ``None``), so they cannot alter the model's computation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["CaptureError", "Captured", "PointLike", "capture", "first_input"]


class PointLike(Protocol):
    """What :func:`capture` needs of a ``CapturePoint`` (structural, to avoid an import cycle)."""

    module: nn.Module
    kind: str
    transform: Any


class CaptureError(RuntimeError):
    """A capture point is malformed (an adapter bug, not a model bug)."""


def first_input(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """A module's first input: the first positional argument, else the first keyword value."""
    return args[0] if args else next(iter(kwargs.values()), None)


def _label(name: str, index: int, point: PointLike) -> str:
    return str(getattr(point, "where", "") or f"{name} candidate {index} ({point.kind})")


@dataclass
class Captured:
    """What the hooks saw: per stage the chosen tensor, which candidate it came from, and notes.

    ``tensors``: detached copies of the first call of the first candidate that ran.
    ``sources``: the label of that candidate. ``calls``: how often each stage's chosen module
    ran. ``errors``: stages whose transform failed. ``notes``: stand-ins and disagreements.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    autocast: dict[str, str] = field(default_factory=dict)  # module path -> dtype it ran under autocast
    _seen: dict[str, list[Tensor | None]] = field(default_factory=dict, repr=False)
    _counts: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _labels: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _failed: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def get(self, name: str) -> Tensor | None:
        return self.tensors.get(name)

    @property
    def repeated(self) -> list[str]:
        """Stages whose chosen module ran more than once (only the first call was kept)."""
        return [n for n, c in self.calls.items() if c > 1]

    def missing_reason(self, name: str) -> str:
        """Why ``name`` has no tensor: which candidates were tried (or that there were none)."""
        labels = self._labels.get(name)
        if name in self.errors:
            return f"not captured: {self.errors[name]}"
        if not labels:
            return "not captured: the adapter names no capture point for this stage"
        return "not captured: none of " + ", ".join(labels) + " ran during the forward"

    def _resolve(self) -> None:
        """Pick each stage's tensor: the first candidate that ran; note stand-ins and disagreements."""
        for name, seen in self._seen.items():
            labels = self._labels[name]
            ran = [i for i, t in enumerate(seen) if t is not None]
            if not ran:
                self.calls[name] = max(self._counts[name], default=0)
                if self._failed.get(name):
                    self.errors[name] = "; ".join(self._failed[name])
                continue
            pick = ran[0]
            self.tensors[name] = seen[pick]  # type: ignore[assignment]
            self.sources[name] = labels[pick]
            self.calls[name] = self._counts[name][pick]
            if pick > 0:
                skipped = ", ".join(labels[:pick])
                self.notes.append(f"{name}: {skipped} did not run; {labels[pick]} stood in")
            for j in ran[1:]:
                a, b = seen[pick], seen[j]
                assert a is not None and b is not None
                if a.shape != b.shape or not torch.equal(a, b):
                    d = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
                    self.notes.append(
                        f"{name}: {labels[pick]} and {labels[j]} differ (max abs {d:.1e}): something between "
                        f"them changes the tensor; {labels[pick]} was compared"
                    )


def _register(out: Captured, name: str, index: int, point: PointLike) -> torch.utils.hooks.RemovableHandle:
    kind = getattr(point, "kind", None)
    module = getattr(point, "module", None)
    if not isinstance(module, nn.Module):
        raise CaptureError(f"capture point {name!r}: module is {type(module).__name__}, not an nn.Module")
    if kind not in ("output", "input"):
        raise CaptureError(f"capture point {name!r}: kind must be 'output' or 'input', got {kind!r}")
    seen, counts, failed = out._seen[name], out._counts[name], out._failed.setdefault(name, [])

    def keep(value: Any) -> None:
        counts[index] += 1
        if counts[index] > 1:
            return  # keep the first call: a ViT runs each stage module once per forward
        try:
            t = point.transform(value)
        except Exception as e:  # an adapter's transform must not take the model's forward down
            failed.append(f"transform of {_label(name, index, point)} failed: {type(e).__name__}: {e}")
            return
        if not isinstance(t, Tensor):
            failed.append(f"transform of {_label(name, index, point)} returned {type(t).__name__}, not a Tensor")
            return
        # Detach + clone: the hook must not keep the autograd graph alive, and later
        # in-place ops of the model must not change what was captured.
        seen[index] = t.detach().clone()

    if kind == "output":
        return module.register_forward_hook(lambda _m, _a, output: keep(output))
    return module.register_forward_pre_hook(lambda _m, a, kw: keep(first_input(a, kw)), with_kwargs=True)


def _watch_autocast(out: Captured, model: nn.Module, device_type: str) -> list[torch.utils.hooks.RemovableHandle]:
    """A pre-hook on every module that records the ones called inside an enabled ``torch.autocast``
    region (the precision the model *declares* at run time, as opposed to the check's dtype)."""

    def hook(path: str) -> Any:
        def pre(_m: nn.Module, _a: Any) -> None:
            if path not in out.autocast and torch.is_autocast_enabled(device_type):
                out.autocast[path] = str(torch.get_autocast_dtype(device_type)).removeprefix("torch.")

        return pre

    return [m.register_forward_pre_hook(hook(path)) for path, m in model.named_modules()]


@contextmanager
def capture(
    points: Mapping[str, PointLike | Sequence[PointLike]], *, watch: nn.Module | None = None, device_type: str = "cpu"
) -> Iterator[Captured]:
    """Register a hook per candidate point; yield the :class:`Captured` they fill.

    ``points`` maps a stage name to one point or to candidates in preference order.
    ``kind == "output"``: forward hook, the transform gets the module's output.
    ``kind == "input"``: forward-pre hook, the transform gets the module's first input.
    On exit every handle is removed (whatever happens inside the block, also when
    registering a later point fails) and each stage's tensor is chosen. With ``watch`` (the
    model), every module called inside an enabled autocast region on ``device_type`` is recorded
    in :attr:`Captured.autocast`.
    """
    out = Captured()
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        if watch is not None:
            handles += _watch_autocast(out, watch, device_type)
        for name, given in points.items():
            cands = list(given) if isinstance(given, Sequence) else [given]
            out._seen[name] = [None] * len(cands)
            out._counts[name] = [0] * len(cands)
            out._labels[name] = [_label(name, i, p) for i, p in enumerate(cands)]
            for i, p in enumerate(cands):
                handles.append(_register(out, name, i, p))
        yield out
    finally:
        for h in handles:
            h.remove()
        out._resolve()
