"""``assert_conforms``: conformance as an assertion in a user's own test suite (like ``torch.testing.assert_close``).

    from conformance import assert_conforms

    def test_my_vit_follows_the_spec():
        assert_conforms(build_my_vit(), dtype="float32")

On failure it raises :class:`ConformanceError` (an ``AssertionError``, so pytest reports a
failure, not an error) whose message is the report's headline, the failing stages and
gradients with their errors and tolerances, and the model's deviations from the spec; the
full :class:`~conformance.report.Report` is on the exception's ``report``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .compare import check
from .report import Report, Status, format_err

__all__ = ["ConformanceError", "assert_conforms", "failure_message"]

_MAX_GRADS = 10  # failing gradient rows listed before "… and N more"


class ConformanceError(AssertionError):
    """``assert_conforms`` failed; ``report`` is the full conformance report."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def assert_conforms(model: nn.Module, *, msg: str | None = None, **check_kwargs: Any) -> Report:
    """Run :func:`conformance.check` (same keywords) and raise :class:`ConformanceError` unless it PASSes.

    ``msg`` is put before the generated message. Returns the report when the model conforms.
    Bad arguments raise :class:`~vitspec.errors.ConfigError`, as ``check`` does.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this frame
    report = check(model, **check_kwargs)
    if not report.ok:
        raise ConformanceError(failure_message(report, msg), report)
    return report


def failure_message(report: Report, msg: str | None = None) -> str:
    """Headline, the failing stages and gradients (error > tolerance), and the deviations; several lines."""
    lines = [msg] if msg else []
    lines.append(report.headline())
    if report.reason and report.status in (Status.CRASH, Status.UNSUPPORTED):
        lines.append(f"reason: {report.reason.strip()}")
    stages = [s for s in (*report.stages, *report.subops) if s.failed or "non-finite" in s.note]
    if stages:
        lines.append("failing stages (forward order):")
        lines += [_row(s.name, s.rel_err, s.tol, s.note) for s in stages]
        # The drill-down's verdict on the first divergent block (e.g. "the residual connections").
        first = f"{report.first_divergence}:"
        lines += [f"  note: {n}" for n in report.notes if report.first_divergence and n.startswith(first)]
    grads = [g for g in report.grads if g.ok is False]
    if grads:
        lines.append("failing gradients (backward order):")
        lines += [_row(f"{g.group} {g.library_name}", g.rel_err, g.tol, g.note) for g in grads[:_MAX_GRADS]]
        if len(grads) > _MAX_GRADS:
            lines.append(f"  … and {len(grads) - _MAX_GRADS} more")
    deviations = "; ".join(report.deviations) or "none (the model follows the spec's own numerics)"
    lines.append(f"deviations from the spec: {deviations}")
    return "\n".join(lines)


def _row(name: str, rel: float | None, tol: float | None, note: str) -> str:
    return f"  {name}: rel err {format_err(rel)} > tol {format_err(tol)}" + (f" ({note})" if note else "")
