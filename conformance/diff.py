"""``compare_models(a, b)``: do two ViTs compute the same function? (docs/diff-convert.md; the command
``vitspec diff A B`` is :mod:`conformance.diff_command`)

Both models are mapped onto the spec through their adapters, so models of different libraries are
compared key by key and stage by stage in one vocabulary:

1. **parameters**: each spec key's tensors, ``max|a - b|`` and ``max|a - b| / max|a|`` in float64;
   a key agrees when that relative difference is within the unit roundoff of the coarser of the
   two models' parameter dtypes (a float32 copy of float64 weights agrees, anything else does not);
2. **function**: both models, copied and run in float64 on the same seeded input (or ``inputs``),
   with capture hooks at every spec stage and sub-op (:mod:`conformance.capture`); each stage of B
   against A's, normwise, and the value each model returned (``output``);
3. **gradients**: the same seeded cotangent backpropagated through both; each spec key's gradient of
   B against A's, normwise over its group (as :func:`conformance.check` does);
4. **each against the spec** (``against_spec``): :func:`conformance.check` on each model, under its
   own profile; the stage table shows both beside A vs B;
5. **where and why they part**: the first stage (sub-ops included, forward order) whose A-vs-B
   error fails, and the cause: the weights (the spec keys that differ), a variation point (the
   profile fields that differ, and the two deviation lists side by side), or neither (the
   libraries compute differently: each model's own check says which one departs from the spec).

Tolerance (:mod:`conformance.tolerance`): the float64 forward and gradient bounds of the check. Each
model may be ``tol`` away from the spec, so two models may be ``2 * tol`` apart (triangle inequality);
that is the bound A vs B is judged with. The verdict (``ok``, exit 0) is "same function": every
stage and every gradient within it. Differing weights or variation points that the function does
not see (the attention key bias: softmax ignores it) are reported as notes, not failures.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from vitspec._fs import atomic_write_text
from vitspec.cli import one_line
from vitspec.errors import ConfigError
from vitspec.profiles import Profile
from vitspec.profiles import deviations as profile_deviations
from vitspec.schema import grad_group, group_rank

from .adapters import detect, expected_stages
from .adapters.base import Description
from .capture import capture
from .compare import check
from .tolerance import UNIT_ROUNDOFF, errors, grad_errors, group_scales, parse_dtype, policy

__all__ = [
    "OUTPUT",
    "TRIANGLE",
    "Comparison",
    "GradDiff",
    "ParamDiff",
    "Side",
    "StageDiff",
    "compare_models",
    "description_diff",
    "differing_fields",
    "render",
    "spec_bundle",
]

#: The stage holding what ``model(x)`` returned (after the adapter's output extractor).
OUTPUT = "output"
#: A vs B may be this many tolerances apart: each may be one tolerance from the spec.
TRIANGLE = 2.0
_SHOWN = 5  # spec keys named in a one-line reason before "and N more"
#: Profile fields that label a profile rather than say what it computes.
_LABEL_FIELDS = ("name", "source", "revision")
#: One field where two descriptions differ: its name, A's value, B's value.
Difference = tuple[str, Any, Any]


# -- result records ---------------------------------------------------------------------------------
@dataclass
class ParamDiff:
    """One spec key: ``max|a - b|``, ``max|a - b| / max|a|`` and whether that is within ``tol``."""

    key: str
    max_abs: float | None = None
    rel: float | None = None
    tol: float | None = None
    ok: bool | None = None
    note: str = ""


@dataclass
class StageDiff:
    """One stage (or sub-op): B against A, normwise, and each against the spec (from its check)."""

    name: str
    max_abs: float | None = None
    rel: float | None = None
    tol: float | None = None
    ok: bool | None = None
    note: str = ""
    a_vs_spec: float | None = None
    a_ok: bool | None = None
    b_vs_spec: float | None = None
    b_ok: bool | None = None


@dataclass
class GradDiff:
    """The gradient of one spec key (``grad_x``: the input), B against A, normwise over its group."""

    key: str
    group: str
    max_abs: float | None = None
    rel: float | None = None
    tol: float | None = None
    ok: bool | None = None
    note: str = ""


@dataclass
class Side:
    """One of the two models: what its adapter found, its deviations from the spec, its own check."""

    label: str
    library: str = ""
    model_name: str = ""
    profile: str = ""
    dtype: str = ""
    deviations: list[str] = field(default_factory=list)
    check: dict[str, Any] | None = None


@dataclass(repr=False)
class Comparison:
    """The result of :func:`compare_models` (``ok``: same function; ``exit_code`` 0 / 1).

    ``repr`` is one line; a notebook renders :meth:`to_markdown` (``_repr_markdown_``).
    """

    a: Side
    b: Side
    ok: bool = False
    first_divergence: str | None = None
    first_grad_divergence: str | None = None
    why: str = ""
    weights: list[str] = field(default_factory=list)
    variation_points: list[str] = field(default_factory=list)
    architecture: list[str] = field(default_factory=list)
    params: list[ParamDiff] = field(default_factory=list)
    stages: list[StageDiff] = field(default_factory=list)
    grads: list[GradDiff] = field(default_factory=list)
    tolerance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def headline(self) -> str:
        """One line: the verdict, and where and why A and B part."""
        names = "A vs B" if len(self.a.label + self.b.label) > 60 else f"{self.a.label} vs {self.b.label}"
        if self.ok:
            worst = max((s.rel for s in self.stages if s.rel is not None), default=0.0)
            g = f" and {len(self.grads)} gradients" if self.grads else ""
            return f"SAME FUNCTION: {names}: {len(self.stages)} stages{g} agree (worst stage {worst:.1e})"
        return f"DIFFERENT: {names}: {self.why}"

    def __repr__(self) -> str:
        return f"<Comparison ok={self.ok} first_divergence={self.first_divergence!r}: {self.headline()}>"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        return _finite_json(dataclasses.asdict(self)) | {"ok": self.ok, "exit_code": self.exit_code}

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        return _markdown(self)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")

    def write_markdown(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_markdown())

    def write_reports(
        self, json_path: str | os.PathLike[str] | None, markdown_path: str | os.PathLike[str] | None
    ) -> None:
        """The ``--json`` / ``--markdown`` reports of ``vitspec diff`` and ``convert``; no path, no file."""
        if json_path:
            self.write_json(json_path)
        if markdown_path:
            self.write_markdown(markdown_path)


def _finite_json(v: Any) -> Any:
    """JSON has no inf/nan: they become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _finite_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite_json(x) for x in v]
    return v


# -- descriptions ---------------------------------------------------------------------------------------
def differing_fields(a: Description, b: Description) -> tuple[list[Difference], list[Difference]]:
    """``(architecture, variation points)``: every field where two descriptions differ, as
    ``(field, A value, B value)``. Architecture: the config, input size, variant and head; variation
    points: the profile fields that say what it computes."""
    arch: list[Difference] = [
        (f"cfg.{f.name}", getattr(a.cfg, f.name), getattr(b.cfg, f.name)) for f in dataclasses.fields(a.cfg)
    ]
    arch += [
        ("input size", a.input_shape, b.input_shape),
        ("variant", a.variant, b.variant),
        ("classifier head", a.has_head, b.has_head),
    ]
    points: list[Difference] = [
        (f.name, getattr(a.profile, f.name), getattr(b.profile, f.name))
        for f in dataclasses.fields(Profile)
        if f.name not in _LABEL_FIELDS
    ]
    return [d for d in arch if d[1] != d[2]], [d for d in points if d[1] != d[2]]


def description_diff(a: Description, b: Description) -> tuple[list[str], list[str]]:
    """:func:`differing_fields` as ``"field: A value | B value"`` lines."""
    arch, points = differing_fields(a, b)
    return [f"{n}: {x} | {y}" for n, x, y in arch], [f"{n}: {x} | {y}" for n, x, y in points]


def _side(label: str, adapter: Any, d: Description) -> Side:
    dtypes = {str(p.dtype).removeprefix("torch.") for p in adapter.model.parameters()}
    return Side(
        label=label,
        library=d.library,
        model_name=d.model_name,
        profile=d.profile.name,
        dtype="/".join(sorted(dtypes)),
        deviations=profile_deviations(d.profile, variant=d.variant),
    )


# -- 1. parameters -----------------------------------------------------------------------------------------
def spec_bundle(adapter: Any) -> dict[str, Tensor]:
    """The adapter's model parameters mapped onto spec keys, detached, in their own dtype and device."""
    return dict(adapter.to_spec({k: v.detach() for k, v in adapter.model.named_parameters()}))


def _within(rel: float, tol: float) -> bool:
    """The verdict of every A-vs-B row: a finite relative error no larger than ``tol`` (nan/inf fail)."""
    return math.isfinite(rel) and rel <= tol


def _shapes(x: Tensor, y: Tensor) -> str:
    """The note of a row whose two tensors cannot be compared: A's shape | B's."""
    return f"shape {tuple(x.shape)} | {tuple(y.shape)}"


def _param_tol(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """The unit roundoff of the coarsest parameter dtype on either side."""
    names = {parse_dtype(t.dtype)[0] for t in [*a.values(), *b.values()] if t.is_floating_point()}
    return max((UNIT_ROUNDOFF[n] for n in names), default=UNIT_ROUNDOFF["float64"])


def _compare_params(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> list[ParamDiff]:
    tol = _param_tol(a, b)
    rows = []
    for key in [*a, *(k for k in b if k not in a)]:
        if key not in a or key not in b:
            rows.append(ParamDiff(key, ok=False, note=f"only in {'A' if key in a else 'B'}"))
            continue
        x, y = a[key], b[key]
        if x.shape != y.shape:
            rows.append(ParamDiff(key, ok=False, note=_shapes(x, y)))
            continue
        e = errors(y, x)
        rows.append(ParamDiff(key, e.max_abs, e.rel, tol, _within(e.rel, tol)))
    return rows


# -- 2./3. running both models -------------------------------------------------------------------------------
@dataclass
class _Run:
    """One model's float64 run: stage tensors (spec layout), where each came from, gradients per spec key."""

    stages: dict[str, Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    grads: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    crash: str = ""


def _run(adapter: Any, d: Description, x: Tensor, cot: Tensor | None, label: str) -> _Run:
    """``adapter.run(x)`` on a float64 copy with capture hooks; backpropagates ``cot`` when given."""
    ad = copy.deepcopy(adapter)
    m = ad.model.to(device="cpu", dtype=torch.float64).eval()
    for p in m.parameters():
        p.requires_grad_(cot is not None)
    xin = x.clone().requires_grad_(cot is not None)
    r = _Run()
    try:
        with capture(ad.capture_points()) as cap, torch.set_grad_enabled(cot is not None):
            out = ad.run(xin)
        if cot is not None and isinstance(out, Tensor) and out.shape == cot.shape:
            out.backward(cot)
    except Exception as e:  # the model's own forward/backward: reported, never a traceback
        r.crash = f"{label}'s forward/backward raised {type(e).__name__}: {one_line(e)}"
        return r
    if not isinstance(out, Tensor):
        r.crash = f"{label} returned {type(out).__name__}, not a tensor"
        return r
    r.stages, r.sources, r.notes = dict(cap.tensors), dict(cap.sources), [f"{label}: {n}" for n in cap.notes]
    r.stages[OUTPUT] = out.detach()
    if cot is not None and out.shape == cot.shape:
        named = dict(m.named_parameters())
        g = ad.to_spec({n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in named.items()})
        r.grads = {k: v for k, v in g.items() if k not in d.synthetic}
        r.grads["grad_x"] = xin.grad if xin.grad is not None else torch.zeros_like(xin)
    return r


def _stage_order(da: Description, db: Description) -> list[str]:
    """A's stages (sub-ops included) in forward order, then any B has and A lacks, ``output`` last."""
    names = expected_stages(da)
    names += [s for s in expected_stages(db) if s not in names]
    return [*names, OUTPUT]


def _compare_stages(ra: _Run, rb: _Run, order: Sequence[str], tol: float) -> list[StageDiff]:
    rows = []
    for name in order:
        ta, tb = ra.stages.get(name), rb.stages.get(name)
        if ta is None or tb is None:
            missing = " and ".join(s for s, t in (("A", ta), ("B", tb)) if t is None)
            rows.append(StageDiff(name, note=f"not captured in {missing}"))
            continue
        if ta.shape != tb.shape:
            rows.append(StageDiff(name, ok=False, note=_shapes(ta, tb)))
            continue
        e = errors(tb, ta)
        rows.append(StageDiff(name, e.max_abs, e.rel, tol, _within(e.rel, tol)))
    return rows


def _compare_grads(ra: _Run, rb: _Run, tol: float, layers: int) -> list[GradDiff]:
    scale = group_scales(ra.grads, grad_group)
    rows = []
    for key in [*ra.grads, *(k for k in rb.grads if k not in ra.grads)]:
        group = grad_group(key)
        ga, gb = ra.grads.get(key), rb.grads.get(key)
        if ga is None or gb is None:
            rows.append(GradDiff(key, group, ok=False, note=f"only in {'A' if gb is None else 'B'}"))
            continue
        if ga.shape != gb.shape:
            rows.append(GradDiff(key, group, ok=False, note=_shapes(ga, gb)))
            continue
        e = grad_errors([gb], [ga], scale.get(group, 0.0))
        rows.append(GradDiff(key, group, e.max_abs, e.rel, tol, _within(e.rel, tol)))
    rows.sort(key=lambda r: group_rank(r.group, layers))  # backward order, as the check reports them
    return rows


# -- 4. each against the spec -------------------------------------------------------------------------------
def _against_spec(
    cmp: Comparison,
    a: tuple[nn.Module, Any],
    b: tuple[nn.Module, Any],
    batch: int,
    seed: int,
    grads: bool,
    inputs: Tensor | None,
) -> None:
    """:func:`conformance.check` on each ``(model, adapter)``; the summary goes to its side, the stage errors
    into the stage rows."""
    for side, (model, adapter) in ((cmp.a, a), (cmp.b, b)):
        rep = check(model, adapter=adapter, batch=batch, seed=seed, grads=grads, inputs=inputs)
        side.check = {
            "status": str(rep.status),
            "headline": rep.headline(),
            "first_divergence": rep.first_divergence_subop or rep.first_divergence,
            "first_grad_divergence": rep.first_grad_divergence,
            "reason": rep.reason,
        }
        by_name = {s.name: s for s in [*rep.stages, *rep.subops]}
        for row in cmp.stages:
            s = by_name.get(row.name)
            if s is None:
                continue
            if side is cmp.a:
                row.a_vs_spec, row.a_ok = s.rel_err, (None if s.ok is None else not s.failed)
            else:
                row.b_vs_spec, row.b_ok = s.rel_err, (None if s.ok is None else not s.failed)


# -- 5. where and why ----------------------------------------------------------------------------------------
def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _explain(cmp: Comparison) -> None:
    """``ok``, ``first_divergence`` and ``why`` from the rows."""
    bad_stage = next((s for s in cmp.stages if s.ok is False), None)
    bad_grad = next((g for g in cmp.grads if g.ok is False), None)
    cmp.first_divergence = bad_stage.name if bad_stage else None
    cmp.first_grad_divergence = bad_grad.key if bad_grad else None
    compared = [s for s in cmp.stages if s.ok is not None]
    cmp.ok = bad_stage is None and bad_grad is None and bool(compared) and not cmp.architecture
    causes = []
    if cmp.weights:
        worst = {p.key: p for p in cmp.params}
        named = [f"{k} (max abs {worst[k].max_abs:.1e})" if worst[k].max_abs is not None else k for k in cmp.weights]
        causes.append("weights differ at " + _listing(named))
    if cmp.variation_points:
        causes.append("variation points differ (A | B): " + "; ".join(cmp.variation_points))
    if cmp.ok:
        if causes:
            cmp.notes.append("the function agrees although " + "; ".join(causes) + " (a direction the function "
                             "ignores, e.g. the attention key bias, or a difference below the tolerance)")  # fmt: skip
        return
    if cmp.architecture:
        points = ["variation points differ (A | B): " + "; ".join(cmp.variation_points)] if cmp.variation_points else []
        cmp.why = "; ".join(["the architectures differ (A | B): " + "; ".join(cmp.architecture), *points])
        return
    if not compared:
        cmp.why = "no stage could be compared"
        return
    if bad_stage is not None:
        where = f"they part at {bad_stage.name} (B vs A {_err(bad_stage.rel)} > tol {_err(bad_stage.tol)})"
    else:
        assert bad_grad is not None
        where = f"the forward agrees; the gradient of {bad_grad.key} ({bad_grad.group}) differs ({_err(bad_grad.rel)})"
    if not causes:
        causes.append("same weights and variation points: the two libraries compute differently "
                      "(each model's check against the spec says which departs)")  # fmt: skip
    cmp.why = f"{where}: " + "; ".join(causes)


def _err(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


# -- the comparison --------------------------------------------------------------------------------------------
def compare_models(
    a: nn.Module,
    b: nn.Module,
    *,
    adapter_a: Any = None,
    adapter_b: Any = None,
    batch: int = 2,
    seed: int = 0,
    grads: bool = True,
    inputs: Tensor | None = None,
    against_spec: bool = True,
    labels: tuple[str, str] = ("A", "B"),
) -> Comparison:
    """Compare two ViTs through the spec (see the module doc); the :class:`Comparison`.

    ``adapter_a`` / ``adapter_b``: adapter instances (default :func:`conformance.adapters.detect`; the
    models are never modified: every run is on a float64 copy). ``inputs``: a ``(B, C, H, W)`` batch
    instead of the seeded ``N(0, 1)`` one. ``against_spec``: also :func:`conformance.check` each model.
    Raises :class:`~conformance.adapters.Unsupported` if the spec cannot express either model, and
    :class:`~vitspec.errors.ConfigError` for ``inputs`` that do not fit A. Runs on the CPU.
    """
    t0 = time.perf_counter()
    ad_a = adapter_a if adapter_a is not None else detect(a)
    ad_b = adapter_b if adapter_b is not None else detect(b)
    da, db = ad_a.description(), ad_b.description()
    if inputs is not None and (inputs.ndim != 4 or tuple(inputs.shape[1:]) != da.input_shape or not len(inputs)):
        raise ConfigError(
            f"inputs have shape {tuple(inputs.shape)}; A takes (B, {', '.join(map(str, da.input_shape))})"
        )
    cmp = Comparison(_side(labels[0], ad_a, da), _side(labels[1], ad_b, db))
    cmp.architecture, cmp.variation_points = description_diff(da, db)
    bundle_a, bundle_b = spec_bundle(ad_a), spec_bundle(ad_b)
    cmp.params = _compare_params(bundle_a, bundle_b)
    cmp.weights = [p.key for p in cmp.params if p.ok is False]
    pol = policy(
        dtype="float64",
        embed_dim=da.cfg.embed_dim,
        hidden_dim=da.cfg.hidden_dim,
        patch_dim=da.in_c * da.cfg.patch_h * da.cfg.patch_w,
        tokens=da.cfg.tokens(da.in_h, da.in_w) + (1 if da.variant == "cls" else 0),
        layers=da.cfg.num_layers,
        batch=batch if inputs is None else int(inputs.shape[0]),
    )
    fwd_tol, grad_tol = TRIANGLE * pol.fwd_tol64, TRIANGLE * pol.grad_tol64
    cmp.tolerance = {
        "rule": f"B vs A: max|b-a| / max|a| (gradients: over the group) <= {TRIANGLE:g} * the check's float64 bound; "
        "parameters: within the unit roundoff of the coarser parameter dtype",
        "forward": fwd_tol,
        "gradient": grad_tol,
        "parameter": _param_tol(bundle_a, bundle_b),
        "policy": pol.to_dict(),
    }
    if da.input_shape == db.input_shape:
        _compare_function(cmp, ad_a, ad_b, da, db, batch, seed, grads, inputs, fwd_tol, grad_tol)
    else:
        cmp.notes.append("the input sizes differ: the function is not compared")
    if against_spec:
        _against_spec(cmp, (a, ad_a), (b, ad_b), batch, seed, grads, inputs)
    _explain(cmp)
    cmp.elapsed_s = time.perf_counter() - t0
    return cmp


def _compare_function(
    cmp: Comparison,
    ad_a: Any,
    ad_b: Any,
    da: Description,
    db: Description,
    batch: int,
    seed: int,
    grads: bool,
    inputs: Tensor | None,
    fwd_tol: float,
    grad_tol: float,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = (
        inputs.detach().to(torch.float64)
        if inputs is not None
        else torch.randn(batch, *da.input_shape, generator=gen, dtype=torch.float64)
    )
    out_dim = da.cfg.num_classes if da.has_head else da.cfg.embed_dim
    cot = torch.randn(x.shape[0], out_dim, generator=gen, dtype=torch.float64) if grads else None
    ra, rb = _run(ad_a, da, x, cot, "A"), _run(ad_b, db, x, cot, "B")
    cmp.notes += ra.notes + rb.notes
    if ra.crash or rb.crash:
        cmp.notes += [c for c in (ra.crash, rb.crash) if c]
        cmp.stages = [StageDiff(OUTPUT, ok=False, note="; ".join(c for c in (ra.crash, rb.crash) if c))]
        return
    cmp.stages = _compare_stages(ra, rb, _stage_order(da, db), fwd_tol)
    if grads:
        cmp.grads = _compare_grads(ra, rb, grad_tol, da.cfg.num_layers)
        if not ra.grads and not rb.grads:  # asked for, not compared: never a silent pass
            why = f"no gradients: neither output is ({x.shape[0]}, {out_dim})"
            cmp.grads.append(GradDiff("grad_x", "input", ok=False, note=why))


# -- rendering ----------------------------------------------------------------------------------------------------
def _mark(ok: bool | None) -> str:
    return "ok" if ok else ("FAIL" if ok is False else "-")


def _markdown(cmp: Comparison) -> str:
    lines = [f"# vitspec diff: {cmp.a.label} vs {cmp.b.label}", "", f"**{cmp.headline()}**", ""]
    lines += ["| | A | B |", "|---|---|---|"]
    for what in ("label", "library", "model_name", "profile", "dtype"):
        lines.append(f"| {what} | {getattr(cmp.a, what)} | {getattr(cmp.b, what)} |")
    for side_check in ("status", "first_divergence"):
        va = (cmp.a.check or {}).get(side_check, "not run")
        vb = (cmp.b.check or {}).get(side_check, "not run")
        lines.append(f"| check vs spec: {side_check} | {va} | {vb} |")
    lines += ["", "## Deviations from the spec (side by side)", "", "| A | B |", "|---|---|"]
    dev_a, dev_b = cmp.a.deviations, cmp.b.deviations
    for i in range(max(len(dev_a), len(dev_b), 1)):
        lines.append(f"| {dev_a[i] if i < len(dev_a) else ''} | {dev_b[i] if i < len(dev_b) else ''} |")
    if cmp.architecture or cmp.variation_points:
        lines += ["", "Differences (A | B): " + "; ".join([*cmp.architecture, *cmp.variation_points])]
    same = sum(1 for p in cmp.params if p.max_abs == 0.0)
    ptol = cmp.tolerance.get("parameter", 0.0)
    lines += ["", "## Parameters", "", f"{len(cmp.params)} spec keys, {same} bit-identical in value, "
              f"{len(cmp.weights)} beyond the parameter tolerance {ptol:.1e}."]  # fmt: skip
    shown = [p for p in cmp.params if p.ok is False or (p.max_abs or 0) > 0]
    if shown:
        lines += ["", "| spec key | max abs | rel | result |", "|---|---|---|---|"]
        lines += [f"| {p.key} | {_err(p.max_abs)} | {_err(p.rel)} | {_mark(p.ok)} {p.note} |" for p in shown]
    lines += ["", "## Function, stage by stage", "",
              "| stage | B vs A (max abs) | B vs A (rel) | tol | A vs B | A vs spec | B vs spec |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in cmp.stages:
        lines.append(f"| {s.name} | {_err(s.max_abs)} | {_err(s.rel)} | {_err(s.tol)} | {_mark(s.ok)} {s.note} | "
                     f"{_err(s.a_vs_spec)} {_mark(s.a_ok)} | {_err(s.b_vs_spec)} {_mark(s.b_ok)} |")  # fmt: skip
    if cmp.grads:
        lines += [
            "",
            "## Gradients, by group",
            "",
            "| group | keys | worst rel | tol | result |",
            "|---|---|---|---|---|",
        ]
        groups: dict[str, list[GradDiff]] = {}
        for g in cmp.grads:
            groups.setdefault(g.group, []).append(g)
        for name, rows in groups.items():
            worst = max((r.rel for r in rows if r.rel is not None), default=None)
            bad = [r.key for r in rows if r.ok is False]
            lines.append(f"| {name} | {len(rows)} | {_err(worst)} | {_err(rows[0].tol)} | "
                         f"{'FAIL: ' + ', '.join(bad) if bad else 'ok'} |")  # fmt: skip
    if cmp.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in cmp.notes]]
    return "\n".join(lines) + "\n"


def render(cmp: Comparison, stream: IO[str], *, quiet: bool = False) -> None:
    """The verdict, and unless ``quiet`` the stages and the causes, as plain text."""
    print(cmp.headline(), file=stream)
    if quiet:
        return
    for name, side in (("A", cmp.a), ("B", cmp.b)):
        print(f"{name}: {side.label} ({side.library} {side.model_name}, {side.dtype})", file=stream)
    for name, side in (("A", cmp.a), ("B", cmp.b)):
        if side.check:
            print(f"{name} vs spec: {side.check['headline']}", file=stream)
    rows = [("stage", "B vs A rel", "tol", "result", "A vs spec", "B vs spec")]
    rows += [(s.name, _err(s.rel), _err(s.tol), (_mark(s.ok) + " " + s.note).strip(),
              _err(s.a_vs_spec), _err(s.b_vs_spec)) for s in cmp.stages]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=stream)
    bad = [g for g in cmp.grads if g.ok is False]
    print(
        f"gradients: {len(cmp.grads) - len(bad)}/{len(cmp.grads)} agree"
        + (f"; first off: {bad[0].key} ({_err(bad[0].rel)} > {_err(bad[0].tol)})" if bad else ""),
        file=stream,
    )
    print("deviations A: " + ("; ".join(cmp.a.deviations) or "none"), file=stream)
    print("deviations B: " + ("; ".join(cmp.b.deviations) or "none"), file=stream)
    for n in cmp.notes:
        print(f"note: {n}", file=stream)
