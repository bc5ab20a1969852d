"""Plug in your own ViT: a key map, a profile and the stage boundaries (docs/custom-adapters.md).

Subclass :class:`CustomAdapter`, set ``model_class``, and write three methods:

- ``describe()`` -> :class:`Description` (config, input size, variant, profile);
- ``key_map()`` -> a list of :class:`Rule` (one per entry of ``model.named_parameters()``;
  the builders :func:`linear_rules`, :func:`norm_rules`, :func:`fused_qkv_rules` cover the
  usual layers and do the ``(out, in) -> (in, out)`` transposes);
- ``stages()`` -> ``{stage name: module path}`` (a forward hook on that module's output), or a
  :class:`CapturePoint` from :meth:`CustomAdapter.output` / :meth:`CustomAdapter.input` when the
  tensor needs a transform or only exists as some module's input.

``to_spec``, ``links`` and ``capture_points`` follow, with the same strictness as the built-in
adapters; ``run`` calls the model. Register the class with
:func:`conformance.adapters.register` so :func:`conformance.adapters.detect` finds it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from vitspec.errors import MappingError

from .base import (
    CapturePoint,
    Description,
    Rule,
    RuleAdapter,
    Unsupported,
    as_vector,
    copy,
    expected_stages,
    flatten_grid,
    fused_qkv_rules,
    linear_rules,
    norm_rules,
    split_rows,
    squeeze_to,
    take0,
    transpose,
)

__all__ = [
    "CapturePoint",
    "CustomAdapter",
    "Description",
    "Rule",
    "Unsupported",
    "as_vector",
    "copy",
    "flatten_grid",
    "fused_qkv_rules",
    "linear_rules",
    "norm_rules",
    "split_rows",
    "squeeze_to",
    "take0",
    "transpose",
]


def _same(v: Any) -> Any:
    return v


class CustomAdapter(RuleAdapter):
    """Base class for an adapter of your own model (see the module docstring)."""

    name: ClassVar[str] = "custom"
    #: The model class (or classes) this adapter is for; ``matches`` is ``isinstance``.
    model_class: ClassVar[type[nn.Module] | tuple[type[nn.Module], ...] | None] = None

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.model_class is not None and isinstance(model, cls.model_class)

    @abstractmethod
    def stages(self) -> Mapping[str, str | CapturePoint | Sequence[str | CapturePoint]]:
        """Stage name -> module path (its output), a :class:`CapturePoint`, or candidates in preference order."""

    def output(self, path: str, transform: Callable[[Any], Tensor] = _same) -> CapturePoint:
        """The output of the module at ``path`` (``""`` is the model)."""
        return CapturePoint(self.model.get_submodule(path), "output", transform, f"{path or '<model>'} (output)")

    def input(self, path: str, transform: Callable[[Any], Tensor] = _same) -> CapturePoint:
        """The first input of the module at ``path`` (e.g. the pooled vector is the head's input)."""
        return CapturePoint(self.model.get_submodule(path), "input", transform, f"{path or '<model>'} (input)")

    def capture_points(self) -> dict[str, tuple[CapturePoint, ...]]:
        """:meth:`stages` resolved to hooks, checked against the stages the description implies."""
        want = expected_stages(self.description())
        given = dict(self.stages())
        missing = [s for s in want if s not in given]
        unexpected = [s for s in given if s not in want]
        bad = []
        pts: dict[str, tuple[CapturePoint, ...]] = {}
        for s in want:
            if s not in given:
                continue
            v = given[s]
            cands: list[str | CapturePoint] = list(v) if isinstance(v, list | tuple) else [v]  # type: ignore[list-item]
            try:
                pts[s] = tuple(c if isinstance(c, CapturePoint) else self.output(c) for c in cands)
            except AttributeError as err:
                bad.append(f"{s}: {err}")
        if missing or unexpected or bad:
            raise MappingError(
                f"{type(self).__name__}.stages() does not match the spec's stages",
                missing=missing,
                unexpected=unexpected,
                mismatched=bad,
            )
        return pts
