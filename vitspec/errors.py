"""The typed errors vitspec raises.

Every error is a ``ValueError`` so callers that already guard user input with
``except ValueError`` keep working, and each carries structured fields so tools
(the conformance report, the CLI) can render them without parsing messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "LoadError", "MappingError", "ShapeError", "Violation", "VitSpecError"]


class VitSpecError(ValueError):
    """Base class of every error raised on purpose by vitspec and conformance."""


@dataclass(frozen=True)
class Violation:
    """One failed well-formedness condition.

    ``lean`` is the name of the Lean fact (``patchH_ne0``) or, for conditions the
    Lean ``ViTConfig.WF`` leaves out, a name of ours prefixed ``extra:``.
    """

    field: str
    lean: str
    condition: str
    actual: str
    note: str = ""

    def __str__(self) -> str:
        msg = f"{self.field}: needs {self.condition} [{self.lean}], got {self.actual}"
        return f"{msg} ({self.note})" if self.note else msg


class ConfigError(VitSpecError):
    """A configuration violates the spec's well-formedness (all violations listed)."""

    def __init__(self, violations: Sequence[Violation] | str, *, context: str = "") -> None:
        if isinstance(violations, str):
            self.violations: tuple[Violation, ...] = ()
            super().__init__(violations)
            return
        self.violations = tuple(violations)
        head = f"{context}: " if context else ""
        n = len(self.violations)
        lines = [f"{head}{n} well-formedness condition{'s' if n != 1 else ''} violated:"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(v.field for v in self.violations)


class ShapeError(VitSpecError):
    """A tensor's shape, dtype or device disagrees with the spec.

    Fields: ``function``, ``argument``, ``dim`` (the named dimension, or None for
    rank/dtype/device problems), ``expected``, ``actual``, ``formula`` (how the
    expected value follows from the config, numbers plugged in) and ``shape``.
    """

    def __init__(
        self,
        message: str,
        *,
        function: str = "",
        argument: str = "",
        dim: str | None = None,
        expected: object = None,
        actual: object = None,
        formula: str = "",
        shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.function = function
        self.argument = argument
        self.dim = dim
        self.expected = expected
        self.actual = actual
        self.formula = formula
        self.shape = shape


class LoadError(VitSpecError):
    """A checkpoint cannot be loaded; nothing was modified."""


class MappingError(VitSpecError):
    """Third-party weights cannot be mapped onto the spec bundle.

    ``missing``, ``unexpected`` and ``mismatched`` list every problem at once.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> None:
        parts = [message]
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected))
        if mismatched:
            parts.append("mis-shaped: " + "; ".join(mismatched))
        super().__init__("\n  ".join(parts))
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)
