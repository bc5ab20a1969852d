"""The conformance :class:`Report`: what was compared, how far apart, and the verdict.

A report is plain data (dataclasses of str/float/bool/None), so it round-trips
through JSON exactly (``Report.from_json(r.to_json()) == r``) and can be rendered
as Markdown or plotted without the model. Files are written atomically (temporary
file in the target directory + ``os.replace``), so an interrupted run never leaves a
truncated report behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from vitspec._fs import atomic_write, atomic_write_bytes, atomic_write_text
from vitspec.cli import EXIT_FAIL, EXIT_OK, EXIT_UNSUPPORTED

__all__ = [
    "SCHEMA_VERSION",
    "SCOPES",
    "GradResult",
    "Report",
    "StageResult",
    "Status",
    "atomic_write_bytes",
    "atomic_write_text",
    "format_err",
]

#: Bumped when a field changes meaning; ``from_json`` refuses other major versions.
#: 2: the ``output`` stage, isolated errors (``isolated_*``), ``source`` and ``precision`` per stage.
#: 3: ``scope`` ("trunk": a PASS says nothing about the head, so a reader of 2 must not take it for a full PASS).
SCHEMA_VERSION = 3
#: Schema versions ``from_json`` reads: a version-2 report is a full check (``scope="full"``).
_READS = (2, SCHEMA_VERSION)

#: What a check compares: ``full`` (every stage, the head and the value model(x) returned) or ``trunk``
#: (everything up to the pooled features; the head left out).
SCOPES = ("full", "trunk")


class Status(StrEnum):
    """Overall verdict of a check (``str`` subclass so it serialises as its value)."""

    PASS = "PASS"
    MISMATCH = "MISMATCH"  # some stage or gradient exceeds its tolerance
    NONFINITE = "NONFINITE"  # the model produced inf/nan where the spec did not
    CRASH = "CRASH"  # the model's own forward or backward raised
    UNSUPPORTED = "UNSUPPORTED"  # the model cannot be expressed in the spec (or mapped onto it)


@dataclass
class StageResult:
    """One forward stage (or sub-op) of the model compared with the float64 spec, two ways.

    *Propagated* (``rel_err``, ``tol``, ``ok``): the model's stage tensor against the spec run
    end to end on the same input, so it carries every upstream difference. *Isolated*
    (``isolated_err``, ``isolated_tol``, ``isolated_ok``): the model's stage tensor against the
    spec's stage applied to the model's *own* input of that stage (its neighbour's captured
    output), so it measures this stage alone; the first stage whose isolated error fails is
    where the model diverges. Errors are normwise: ``max|model - spec| / max(max|spec|, tiny)``.
    ``ok`` / ``isolated_ok`` are ``None`` when not compared (not captured, no input); such a
    stage never counts as passed. An encoder block's isolated comparison is also ``None`` when a
    float64 check skipped it because every propagated error sat far inside the tolerance (a
    report note says so; docs/conformance.md, "When the isolated errors are computed").
    ``source`` names the module (and input/output) the tensor was read from; ``precision`` a
    lower precision the model declares for this stage (its tolerance follows it). In native
    low-precision mode ``spec_lowp_err`` is the error of the spec itself run in the model's dtype,
    and ``tol`` is derived from it.
    """

    name: str
    max_abs_err: float | None = None
    rel_err: float | None = None
    tol: float | None = None
    ok: bool | None = None
    captured: bool = True
    spec_lowp_err: float | None = None
    shape: list[int] | None = None
    note: str = ""
    isolated_err: float | None = None
    isolated_tol: float | None = None
    isolated_ok: bool | None = None
    source: str = ""
    precision: str = ""

    @property
    def compared(self) -> bool:
        return self.ok is not None

    @property
    def failed(self) -> bool:
        """Whether the propagated or the isolated comparison failed."""
        return self.ok is False or self.isolated_ok is False


@dataclass
class GradResult:
    """The gradient of one library parameter (or of the input, ``grad_x``) vs the spec.

    ``spec_names`` are the spec keys the library parameter feeds (a fused qkv weight
    feeds three). ``group`` is the stage the parameter belongs to (``blocks.3``,
    ``patch_embed``, ``pos_embed``, ``final_norm``, ``head``, ``input``); errors are
    normwise over the *group* (see ``docs/tolerance.md``): ``rel_err = max|Δ_param| /
    max|spec gradient of the group|``, so an analytically-zero gradient (the key bias)
    is judged against its layer's scale, not against its own rounding noise.
    """

    library_name: str
    spec_names: list[str]
    group: str
    max_abs_err: float | None = None
    rel_err: float | None = None
    tol: float | None = None
    ok: bool | None = None
    spec_lowp_err: float | None = None
    note: str = ""


def _float_out(v: float | None) -> Any:
    # JSON has no inf/nan; encode them as strings so the report stays valid JSON.
    if v is None or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _float_in(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return float(v)
    return float(v)


_FLOAT_FIELDS = {"max_abs_err", "rel_err", "tol", "spec_lowp_err", "elapsed_s", "isolated_err", "isolated_tol"}


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            out[f.name] = _float_out(v) if f.name in _FLOAT_FIELDS else _encode(v)
        return out
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, float):
        return _float_out(obj)
    return obj


def _decode_result(cls: type[Any], data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: (_float_in(v) if k in _FLOAT_FIELDS else v) for k, v in data.items() if k in names}
    return cls(**kwargs)


def format_err(v: float | None) -> str:
    """``2.1e-03`` style, ``-`` for missing."""
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.1e}"


@dataclass
class Report:
    """The result of :func:`conformance.check`.

    Fields: ``status`` (:class:`Status`), ``ok`` (PASS), ``forward_ok`` / ``backward_ok``
    (``None`` when not run), ``first_divergence`` (the first stage in forward order that is
    wrong *on its own inputs*, i.e. whose isolated error fails, or ``None``; the last stage,
    ``output``, is the value the model returned) with ``first_divergence_subop`` (the first
    sub-op of that block wrong on its own inputs, e.g. ``blocks.1.attn``),
    ``first_grad_divergence`` (first failing gradient group in backward order: head first,
    input last), ``stages`` (ordered), ``subops`` (the drill-down of the first divergent
    block), ``grads``, ``deviations`` (the model's variation points vs the torchlean spec),
    ``description``, ``tolerance`` (the policy and its numbers), ``notes``, ``environment``,
    ``elapsed_s``, ``reason`` (one line: why any status other than PASS), ``spec_revision`` (the
    TorchLean revision checked against, e.g. ``torchlean@b2a2184``; the deviations are relative to it),
    ``scope`` (``"full"``, or ``"trunk"``: the head was not checked, :data:`SCOPES`).
    """

    status: Status
    forward_ok: bool | None = None
    backward_ok: bool | None = None
    first_divergence: str | None = None
    first_divergence_subop: str | None = None
    first_grad_divergence: str | None = None
    stages: list[StageResult] = field(default_factory=list)
    subops: list[StageResult] = field(default_factory=list)
    grads: list[GradResult] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    reason: str = ""
    spec_revision: str = ""
    scope: str = "full"
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    # -- verdicts ------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.status is Status.PASS

    @property
    def exit_code(self) -> int:
        """CLI convention: 0 conformant, 1 not conformant, 3 the spec cannot express the model (UNSUPPORTED).

        2 is kept for usage errors (bad flags, a target that cannot be built), so CI can tell them apart."""
        if self.status is Status.PASS:
            return EXIT_OK
        return EXIT_UNSUPPORTED if self.status is Status.UNSUPPORTED else EXIT_FAIL

    def stage(self, name: str) -> StageResult:
        """The stage (or drilled-down sub-op) called ``name``; ``KeyError`` if absent."""
        for s in (*self.stages, *self.subops):
            if s.name == name:
                return s
        raise KeyError(name)

    def grad_groups(self) -> dict[str, list[GradResult]]:
        """Gradient results by group, in the report's (backward) order."""
        out: dict[str, list[GradResult]] = {}
        for g in self.grads:
            out.setdefault(g.group, []).append(g)
        return out

    @property
    def not_captured(self) -> list[str]:
        return [s.name for s in self.stages if not s.captured]

    # -- JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = _encode(self)
        d["ok"] = self.ok  # convenience for readers; ignored by from_json
        return d

    def to_json(self, *, indent: int | None = 2) -> str:
        """Stable JSON (fixed key order, inf/nan as strings); ``Report.from_json`` inverts it."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        schema = int(data.get("schema", SCHEMA_VERSION))
        if schema not in _READS:
            raise ValueError(f"report schema {schema} is not supported (this version reads {SCHEMA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in names}
        kwargs["stages"] = [_decode_result(StageResult, s) for s in data.get("stages", [])]
        kwargs["subops"] = [_decode_result(StageResult, s) for s in data.get("subops", [])]
        kwargs["grads"] = [_decode_result(GradResult, g) for g in data.get("grads", [])]
        kwargs["elapsed_s"] = _float_in(data.get("elapsed_s", 0.0)) or 0.0
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    # -- Markdown ------------------------------------------------------------------
    def headline(self) -> str:
        d = self.description
        who = f"{d.get('library', '?')}:{d.get('model_name', '?')}" if d else "model"
        head = f"{self.status.value}{self.scope_label()}: {who}"
        if self.first_divergence:
            sub = f" (sub-op {self.first_divergence_subop})" if self.first_divergence_subop else ""
            head += f" — first divergence at {self.first_divergence}{sub}"
        elif self.first_grad_divergence:
            head += f" — forward conforms; gradients diverge first at {self.first_grad_divergence}"
        if self.reason and self.status in (Status.CRASH, Status.UNSUPPORTED):
            head += f" — {self.reason.splitlines()[0]}"
        return head

    def scope_label(self) -> str:
        """`` (trunk only: the head was not checked)`` for a trunk-only check (a PASS says nothing about the
        head), else empty."""
        if self.scope != "trunk":
            return ""
        return " (trunk only: the head was not checked)" if self.status is Status.PASS else " (trunk only)"

    def to_markdown(self) -> str:
        """Headline, description, deviations, stage table, gradient table, notes."""
        lines = [f"# Conformance report: {self.status.value}", "", f"**{self.headline()}**", ""]
        if self.scope == "trunk":
            lines += [
                "Scope: **trunk only**. Everything up to the pooled features was compared; the head was not "
                "checked, and the value model(x) returned was not compared.",
                "",
            ]
        if self.reason:
            lines += ["```", self.reason.rstrip(), "```", ""]
        if self.description:
            lines += ["## Model", ""]
            lines += [f"- {k}: `{v}`" for k, v in self.description.items()]
            lines.append("")
        at = f" at revision `{self.spec_revision}`" if self.spec_revision else ""
        lines += [f"## Deviations from the TorchLean spec{at} (variation points)", ""]
        lines += [f"- {d}" for d in self.deviations] or ["- none: the model follows the spec's own numerics"]
        lines.append("")
        if self.tolerance:
            lines += ["## Tolerance", ""]
            lines += [f"- {k}: `{v}`" for k, v in self.tolerance.items()]
            lines.append("")
        native = any(s.spec_lowp_err is not None for s in self.stages) or any(
            g.spec_lowp_err is not None for g in self.grads
        )
        if self.stages:
            lines += ["## Forward stages", ""]
            lines += _md_table(_stage_header(native, "stage"), [_stage_row(s, native) for s in self.stages])
            lines.append("")
        if self.subops:
            lines += [f"### Drill-down of {self.first_divergence}", ""]
            lines += _md_table(_stage_header(native, "sub-op"), [_stage_row(s, native) for s in self.subops])
            lines.append("")
        if self.grads:
            lines += ["## Gradients", ""]
            lines += _md_table(
                [
                    "group",
                    "parameter",
                    "spec keys",
                    "max abs err",
                    "rel err",
                    *(["spec low-prec err"] if native else []),
                    "tol",
                    "result",
                ],
                [_grad_row(g, native) for g in self.grads],
            )
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""]
            lines += [f"- {n}" for n in self.notes]
            lines.append("")
        if self.environment:
            lines += ["## Environment", ""]
            lines += [f"- {k}: `{v}`" for k, v in self.environment.items()]
            lines.append("")
        lines.append(f"_elapsed: {self.elapsed_s:.2f} s_")
        return "\n".join(lines) + "\n"

    # -- notebooks (a short repr; Jupyter picks the rich forms) ----------------------
    def __repr__(self) -> str:
        head = self.headline()
        head = head if len(head) <= 160 else head[:157] + "..."
        return f"<Report {head}; {len(self.stages)} stages, {len(self.grads)} gradients, {self.elapsed_s:.1f} s>"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        """Headline, deviations, and the stage and gradient-group tables as HTML."""
        from html import escape

        color = "green" if self.ok else "#b00"
        parts = [f'<p><strong style="color:{color}">{escape(self.headline())}</strong></p>']
        if self.deviations:
            items = "".join(f"<li>{escape(d)}</li>" for d in self.deviations)
            parts.append(f"<p>Deviations from the spec:</p><ul>{items}</ul>")
        rows = [(s.name, s.rel_err, s.tol, _verdict(s.ok, s.captured, s.note)) for s in (*self.stages, *self.subops)]
        for group, gs in self.grad_groups().items():
            errs = [g.rel_err for g in gs if g.rel_err is not None]
            tols = [g.tol for g in gs if g.tol is not None]
            failed = any(g.ok is False for g in gs)
            verdict = "**FAIL**" if failed else _verdict(True if all(g.ok for g in gs) else None)
            rows.append((f"grad {group}", max(errs, default=None), min(tols, default=None), verdict))
        if rows:
            body = "".join(
                f"<tr><td>{escape(n)}</td><td>{format_err(e)}</td><td>{format_err(t)}</td>"
                f"<td>{escape(v.strip('*'))}</td></tr>"
                for n, e, t, v in rows
            )
            parts.append(
                "<table><thead><tr><th>stage</th><th>rel err</th><th>tol</th><th>result</th></tr></thead>"
                f"<tbody>{body}</tbody></table>"
            )
        parts += [f"<p><em>note: {escape(n)}</em></p>" for n in self.notes]
        return "\n".join(parts)

    # -- files ---------------------------------------------------------------------
    def write_json(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")

    def write_markdown(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_markdown())

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """PNG: per-stage (and gradient-group) error on a log scale against the tolerance.

        Uses matplotlib's Agg canvas directly (no global backend switch, no display).
        Failing entries are drawn red, passing green, uncompared grey at the bottom.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        panels: list[tuple[str, list[tuple[str, float | None, float | None, bool | None]]]] = []
        panels.append(
            ("forward stages (bars: propagated; x: isolated)", [(s.name, s.rel_err, s.tol, s.ok) for s in self.stages])
        )
        groups = self.grad_groups()
        if groups:
            rows = []
            for name, gs in groups.items():
                errs = [g.rel_err for g in gs if g.rel_err is not None]
                tols = [g.tol for g in gs if g.tol is not None]
                oks = [g.ok for g in gs if g.ok is not None]
                rows.append(
                    (name, max(errs) if errs else None, min(tols) if tols else None, (all(oks) if oks else None))
                )
            panels.append(("gradient groups (max over parameters)", rows))
        fig = Figure(figsize=(max(6.0, 0.45 * max(len(p[1]) for p in panels) + 2), 3.6 * len(panels)))
        FigureCanvasAgg(fig)
        for i, (title, rows) in enumerate(panels):
            ax = fig.add_subplot(len(panels), 1, i + 1)
            _plot_panel(ax, rows)
            if i == 0:  # the isolated error of each stage: where the model is wrong on its own inputs
                iso = [(x, s.isolated_err) for x, s in enumerate(self.stages) if s.isolated_err]
                ax.scatter([x for x, _ in iso], [e if math.isfinite(e) else 1e3 for _, e in iso], marker="x",
                           color="k", zorder=3, label="isolated")  # fmt: skip
            ax.set_title(title, fontsize=9)
        fig.suptitle(textwrap.fill(self.headline(), 90), fontsize=9)
        fig.tight_layout()
        return _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _plot_panel(ax: Any, rows: list[tuple[str, float | None, float | None, bool | None]]) -> None:
    finite = [e for _, e, _, _ in rows if e is not None and math.isfinite(e) and e > 0]
    floor = min([*finite, *[t for _, _, t, _ in rows if t]], default=1e-17) / 10
    xs = list(range(len(rows)))
    heights = []
    colors = []
    labels: list[tuple[int, str]] = []  # bars whose height is not the error itself say so
    for x, (_, err, _, ok) in enumerate(rows):
        if err is None:
            heights.append(floor)
            colors.append("0.7")
            labels.append((x, "n/c"))  # not captured / not compared
            continue
        e = err if math.isfinite(err) else 1e3
        if not math.isfinite(err):
            labels.append((x, str(err)))
        elif err == 0:
            labels.append((x, "0"))  # exact agreement; log axis has no zero
        heights.append(max(e, floor))
        colors.append("tab:red" if ok is False else "tab:green")
    ax.bar(xs, heights, color=colors, bottom=0)
    for x, text in labels:
        ax.text(x, heights[x], text, ha="center", va="bottom", fontsize=7)
    tols = [t for _, _, t, _ in rows]
    if any(t is not None for t in tols):
        ax.step(
            xs,
            [t if t is not None else float("nan") for t in tols],
            where="mid",
            color="k",
            linestyle="--",
            label="tolerance",
        )
        ax.legend(loc="best", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([r[0] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("normwise rel. error")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _verdict(ok: bool | None, captured: bool = True, note: str = "") -> str:
    if ok is None:
        return "not captured" if not captured else (note or "not compared")
    return "ok" if ok else "**FAIL**"


def _stage_header(native: bool, first: str) -> list[str]:
    low = ["spec low-prec err"] if native else []
    return [first, "max abs err", "propagated err", *low, "tol", "isolated err", "isolated tol", "result"]


def _stage_row(s: StageResult, native: bool) -> list[str]:
    row = [s.name, format_err(s.max_abs_err), format_err(s.rel_err)]
    if native:
        row.append(format_err(s.spec_lowp_err))
    row += [format_err(s.tol), format_err(s.isolated_err), format_err(s.isolated_tol)]
    if s.ok is None and s.isolated_ok is None:
        result = _verdict(None, s.captured, s.note)
    elif s.isolated_ok is False:
        result = "**FAIL**"
    elif s.ok is False:
        result = "**FAIL** (propagated only)"
    else:
        result = "ok"
    extra = [x for x in (s.precision and f"{s.precision} declared", s.source and f"from {s.source}") if x]
    return [*row, result + (f" ({'; '.join(extra)})" if extra and s.compared else "")]


def _grad_row(g: GradResult, native: bool) -> list[str]:
    row = [g.group, g.library_name, ", ".join(g.spec_names), format_err(g.max_abs_err), format_err(g.rel_err)]
    if native:
        row.append(format_err(g.spec_lowp_err))
    return [*row, format_err(g.tol), _verdict(g.ok, True, g.note)]


# Atomic writes live in vitspec._fs; ``_atomic_write`` keeps the name this module used.
_atomic_write = atomic_write
