"""``check()``: compare a third-party ViT with the executable spec, stage by stage and gradient by gradient.

The recipe (docs/conformance.md; tolerance numbers in docs/tolerance.md), one named step each:

1. **prepare**: resolve an adapter (given, or :func:`conformance.adapters.detect`) on a deep
   copy of the model in eval mode, moved to the requested device and dtype; ``describe()``
   it (UNSUPPORTED lists every feature the spec cannot express); map its parameters onto
   the spec bundle; build the spec model in **float64** (and, in native low-precision mode,
   also in the model's dtype); draw the seeded input and cotangent.
2. **run the model**: ``adapter.run(x)`` (the model object itself: every hook, instance
   attribute and wrapper), with capture hooks at the stage boundaries and autograd on.
3. **run the spec** on the same input, capturing every stage.
4. **compare**: every stage, and the value the model *returned* (stage ``output``), two
   ways: *propagated* (model stage vs the spec run end to end) and *isolated* (model stage
   vs the spec's stage applied to the model's own input of that stage). The first stage
   whose isolated error fails is the first divergence; inside a divergent block the same is
   done per sub-op. Then gradients: the cotangent is backpropagated from the returned value
   and every parameter's gradient is compared with the spec's explicit backward.
5. **verdict**.

Exceptions raised by the model's own forward/backward become a CRASH report, non-finite
model values NONFINITE; errors of the harness itself propagate.
"""

from __future__ import annotations

import copy
import math
import platform
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vitspec._env import machine_info
from vitspec.errors import ConfigError, MappingError, ShapeError, VitSpecError
from vitspec.profiles import deviations as profile_deviations
from vitspec.schema import STAGES, grad_group, group_rank, stage_names, sub_op_order

from .capture import Captured, capture
from .report import GradResult, Report, StageResult, Status
from .tolerance import Policy, coarser, errors, grad_errors, group_scales, parse_dtype, policy

__all__ = ["ProgressFn", "check", "environment"]

_BLOCK_RE = re.compile(r"^blocks\.(\d+)$")
#: The stage that compares what ``model(x)`` returned (after every hook and wrapper): the last
#: entry of :data:`vitspec.schema.STAGES`.
OUTPUT = STAGES[-1].name
#: Dtypes from finest to coarsest rounding (the coarsest declared one sets the reference).
_UNIT_ORDER = ("float64", "float32", "float16", "bfloat16")

#: Third-party libraries whose versions go into the report's environment.
_LIBRARIES = ("timm", "torchvision", "transformers", "vit-pytorch", "numpy")


class ProgressFn(Protocol):
    """Progress callback: ``step`` just finished, ``done`` of ``total`` steps."""

    def __call__(self, step: str, done: int, total: int) -> None: ...


# -- small pure helpers ----------------------------------------------------------------
def environment(device: torch.device | str, dtype: str) -> dict[str, Any]:
    """The machine record (:func:`vitspec._env.machine_info`) plus device, dtype and library versions."""
    dev = torch.device(device)
    env: dict[str, Any] = dict(machine_info())
    env["device"] = str(dev)
    env["device_name"] = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine() or "cpu"
    )
    env["dtype"] = dtype
    if dev.type == "cuda":
        env["cuda"] = torch.version.cuda
    for lib in _LIBRARIES:
        try:
            env[f"{lib}_version"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return env


def _exc_text(e: BaseException) -> str:
    """``Type: message`` plus where in the model it was raised (last frame), no full traceback."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _input_batch(inputs: Any) -> int:
    """The batch size of user-given ``inputs``: a finite floating ``(B, C, H, W)`` tensor with ``B >= 1``."""
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or inputs.shape[0] == 0:
        what = f"shape {tuple(inputs.shape)}" if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ConfigError(f"inputs must be a (B, C, H, W) tensor with B >= 1, got {what}")
    if not inputs.is_floating_point() or not _finite(inputs):
        raise ConfigError(f"inputs must be finite floating-point values, got dtype {inputs.dtype}")
    return int(inputs.shape[0])


def _resolve_adapter(model: nn.Module, adapter: Any) -> Any:
    """An adapter instance owning its own copy of the model (the caller's model is never touched)."""
    from .adapters.base import Adapter

    if adapter is None:
        from .adapters import detect

        return detect(model)
    if isinstance(adapter, type) and issubclass(adapter, Adapter):
        return adapter(model)
    if isinstance(adapter, Adapter):
        # Deep-copy the instance (with the model it holds): hooks and dtype changes must not
        # leak into the caller's adapter or model.
        return copy.deepcopy(adapter)
    raise TypeError(f"adapter must be None, an Adapter subclass or an Adapter instance, got {type(adapter).__name__}")


class _ModelCrashError(Exception):
    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(f"{where}: {_exc_text(exc)}")


class _Done(Exception):  # noqa: N818 -- control flow, not an error: the report is final
    """A step decided the verdict early (UNSUPPORTED, CRASH); ``check`` returns the report as is."""


# -- the context the steps share ---------------------------------------------------------
@dataclass(frozen=True)
class _Inputs:
    """The seeded input and cotangent: as the model sees them (``x_in`` tracks grad) and in float64;
    the reference sees exactly the (rounded) values the model sees."""

    x_in: Tensor
    x_ref: Tensor
    cot_m: Tensor
    cot_ref: Tensor


@dataclass
class _LowRef:
    """The spec run in a lower precision: the yardstick of a stage the model computes in that dtype.

    Native mode has one for the check's dtype; a model that declares a coarser op (HF eager
    attention's float32 softmax in a float64 check) gets one for that dtype. A stage judged against
    it passes if ``err <= max(NATIVE_K * err(spec_dtype), floor)`` (:class:`~conformance.tolerance.Policy`).
    """

    dtype: torch.dtype
    spec: Any
    pol: Policy
    stages: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Context:
    """Everything one check computes, filled step by step."""

    report: Report
    adapter: Any
    desc: Any
    pol: Policy
    dev: torch.device
    tdtype: torch.dtype
    grads: bool
    step: Callable[[str], None]
    io: _Inputs
    batch: int = 1
    spec64: Any = None
    native: _LowRef | None = None  # native mode: the spec in the model's dtype
    declared: _LowRef | None = None  # the spec in the coarsest dtype the model declares for an op
    out: Tensor | None = None  # what the model returned
    cap: Captured | None = None
    model_t: dict[str, Tensor] = field(default_factory=dict)  # model stage tensors (incl. output)
    model_t64: dict[str, Tensor] = field(default_factory=dict)  # the same in float64: isolation inputs
    ref_t: dict[str, Tensor] = field(default_factory=dict)  # spec64 stage tensors
    precision: dict[str, str] = field(default_factory=dict)  # stage -> declared coarser dtype

    @property
    def model(self) -> nn.Module:
        return self.adapter.model  # type: ignore[no-any-return]


# -- the check ---------------------------------------------------------------------------
def check(
    model: nn.Module,
    *,
    adapter: Any = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float64,
    batch: int = 2,
    seed: int = 0,
    grads: bool = True,
    progress: ProgressFn | Callable[[str, int, int], None] | None = None,
    inputs: Tensor | None = None,
) -> Report:
    """Check ``model`` against the executable spec; return a :class:`~conformance.report.Report`.

    ``adapter``: ``None`` (auto-detect), an ``Adapter`` subclass, or an instance (deep-copied).
    ``dtype``: ``float64`` compares against the float64 bound; a lower precision runs the model
    in that dtype and judges it against the spec run in the same dtype (docs/tolerance.md).
    ``inputs``: the model input ``(B, C, H, W)`` (e.g. real images, see :mod:`conformance.inputs`)
    instead of the seeded ``N(0, 1)`` one; ``batch`` is then ``B``.
    Never raises for a model problem: UNSUPPORTED / CRASH / NONFINITE / MISMATCH are statuses.
    Raises :class:`~vitspec.errors.ConfigError` for bad arguments (batch, dtype, device, inputs).
    """
    t0 = time.perf_counter()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"batch must be a positive int, got {batch!r}")
    if inputs is not None:
        batch = _input_batch(inputs)
    try:
        dtype_name, tdtype = parse_dtype(dtype)
        dev = torch.device(device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False")
    report = Report(Status.PASS, environment=environment(dev, dtype_name))
    # A caller inside torch.inference_mode() still gets gradients checked: autograd is the check's own.
    with torch.inference_mode(False), torch.enable_grad():
        try:
            ctx = _prepare(model, adapter, report, dev, dtype_name, tdtype, batch, seed, grads, progress, inputs)
            _run_model(ctx)
            _run_spec(ctx)
            _compare_forward(ctx)
            if grads and ctx.out is not None:
                _compare_gradients(ctx)
            _verdict(ctx)
        except _Done:
            pass
    report.elapsed_s = time.perf_counter() - t0
    return report


# -- step 1: prepare ---------------------------------------------------------------------
def _prepare(
    model: nn.Module,
    adapter: Any,
    report: Report,
    dev: torch.device,
    dtype_name: str,
    tdtype: torch.dtype,
    batch: int,
    seed: int,
    grads: bool,
    progress: Callable[[str, int, int], None] | None,
    inputs: Tensor | None,
) -> _Context:
    try:
        ad = _resolve_adapter(model, adapter)
        desc = ad.description()
    except VitSpecError as e:  # Unsupported (every reason at once), or detect() finding no adapter
        report.status, report.reason = Status.UNSUPPORTED, getattr(e, "reason", None) or str(e)
        report.notes.append(f"{type(e).__name__}: {e}")
        raise _Done from None
    expected = (desc.in_c, desc.in_h, desc.in_w)
    if inputs is not None and tuple(inputs.shape[1:]) != expected:
        raise ConfigError(
            f"inputs have shape {tuple(inputs.shape)}, but the model takes (B, {', '.join(map(str, expected))})"
        )
    ad.model.eval()
    try:
        ad.model.to(device=dev, dtype=tdtype)
    except Exception as e:  # e.g. parameters on the meta device hold no values to move
        report.status, report.forward_ok = Status.CRASH, False
        report.reason = f"the model could not be moved to {dev} / {dtype_name}: {_exc_text(e)}"
        raise _Done from None
    cfg = desc.cfg
    pol = _policy(desc, dtype_name, batch)
    report.description = {
        "library": desc.library,
        "model_name": desc.model_name,
        "cfg": asdict(cfg),
        "input_size": [desc.in_c, desc.in_h, desc.in_w],
        "variant": desc.variant,
        "profile": desc.profile.name,
        "has_head": desc.has_head,
        "batch": batch,
        "seed": seed,
    }
    report.deviations = profile_deviations(desc.profile, variant=desc.variant)
    report.tolerance = pol.to_dict()
    report.notes += list(desc.notes)
    report.notes += [f"not compared: {n} ({why})" if why else f"not compared: {n}" for n, why in ad.ignored()]

    total = 4 + cfg.num_layers + 5 + ((3 + cfg.num_layers + 5) if grads else 0)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(what, min(done, total), total)

    io = _draw_inputs(desc, dev, tdtype, grads, batch, seed, inputs)
    ctx = _Context(report, ad, desc, pol, dev, tdtype, grads, step, io, batch=batch)
    _build_specs(ctx, dtype_name)
    step("mapped weights onto the spec")
    return ctx


def _build_specs(ctx: _Context, dtype_name: str) -> None:
    """The spec model from the mapped weights in float64, and in native mode also in the model's dtype."""
    from vitspec.models import ViTClsSpec, ViTSpec

    desc, report = ctx.desc, ctx.report
    spec_cls = ViTClsSpec if desc.variant == "cls" else ViTSpec
    try:
        sd = ctx.adapter.to_spec(dict(ctx.model.named_parameters()))
        sd64 = {k: v.detach().to(device=ctx.dev, dtype=torch.float64) for k, v in sd.items()}
        ctx.spec64 = spec_cls.from_state_dict(desc.cfg, desc.in_c, desc.in_h, desc.in_w, sd64, profile=desc.profile)
    except MappingError as e:
        names = [*e.missing, *e.unexpected, *e.mismatched]
        report.status = Status.UNSUPPORTED
        report.reason = f"the model's parameters do not map onto the spec bundle: {e}"
        report.notes.append("unmapped: " + ", ".join(names) if names else str(e))
        raise _Done from None
    except VitSpecError as e:
        report.status, report.reason = Status.UNSUPPORTED, f"the spec cannot express this model: {e}"
        raise _Done from None
    if dtype_name != "float64":
        ctx.native = _low_ref(ctx, dtype_name, ctx.pol)


def _low_ref(ctx: _Context, dtype: str, pol: Policy) -> _LowRef | None:
    """The float64 spec's weights rounded to ``dtype``, as a spec model of their own."""
    tdt = parse_dtype(dtype)[1]
    s64 = ctx.spec64
    try:
        sd = {k: v.to(tdt) for k, v in s64.state_dict().items()}
        spec = type(s64).from_state_dict(s64.cfg, s64.in_c, s64.in_h, s64.in_w, sd, profile=s64.profile)
    except Exception as e:  # the floor still applies; say so
        ctx.report.notes.append(f"spec could not be built in {dtype} ({_exc_text(e)}); tolerance = floor only")
        return None
    return _LowRef(tdt, spec, pol)


def _policy(desc: Any, dtype: str, batch: int) -> Policy:
    cfg = desc.cfg
    return policy(
        dtype=dtype,
        embed_dim=cfg.embed_dim,
        hidden_dim=cfg.hidden_dim,
        patch_dim=desc.in_c * cfg.patch_h * cfg.patch_w,
        tokens=cfg.tokens(desc.in_h, desc.in_w) + (1 if desc.variant == "cls" else 0),
        layers=cfg.num_layers,
        batch=batch,
    )


def _declare_precision(ctx: _Context) -> None:
    """Stages the model computes in a coarser dtype than the check's: declared by the adapter
    (HF eager attention's float32 softmax) or seen at run time (a module called inside an enabled
    ``torch.autocast`` region). Each is named in a note, and a spec run in the coarsest such dtype
    becomes their yardstick (docs/tolerance.md, "Declared lower precision")."""
    check_dtype = ctx.pol.dtype
    found = [(lp.stages, lp.dtype, lp.op) for lp in ctx.desc.precision] + _autocast_regions(ctx)
    for stages, dtype, op in found:
        if not coarser(dtype, check_dtype):
            continue
        for st in stages:
            if st not in ctx.precision or coarser(dtype, ctx.precision[st]):
                ctx.precision[st] = dtype
        ctx.report.notes.append(
            f"precision: {op} runs in {dtype} at {_span(stages)} (check dtype {check_dtype}); that op, every stage "
            f"downstream of it and the gradients are judged against the spec run in {dtype}, as in native "
            f"{dtype} mode (docs/tolerance.md, 'Declared lower precision')"
        )
    if ctx.precision:
        coarsest = max(ctx.precision.values(), key=_UNIT_ORDER.index)
        pol = _policy(ctx.desc, coarsest, ctx.batch)
        ctx.declared = _low_ref(ctx, coarsest, pol)
        ctx.report.tolerance["declared"] = pol.to_dict()


def _autocast_regions(ctx: _Context) -> list[tuple[tuple[str, ...], str, str]]:
    """``(stages, dtype, op)`` for the modules that ran under autocast, mapped to the stage whose
    module contains them (the innermost: a sub-op before its block)."""
    assert ctx.cap is not None
    if not ctx.cap.autocast:
        return []
    owner: dict[int, str] = {}
    for stage, pts in sorted(ctx.adapter.capture_points().items(), key=lambda kv: kv[0].count(".")):
        for p in pts:
            if p.kind == "output":
                owner.update({id(sub): stage for sub in p.module.modules()})
    by_dtype: dict[str, set[str]] = {}
    for path, dtype in ctx.cap.autocast.items():
        stage = owner.get(id(ctx.model.get_submodule(path)))
        if stage is not None:
            by_dtype.setdefault(dtype, set()).add(stage)
    if ctx.pol.dtype == "float64" and by_dtype:  # autocast never casts float64 ops: nothing to loosen
        ctx.report.notes.append(
            "autocast region(s) at "
            + ", ".join(sorted(set().union(*by_dtype.values())))
            + ": torch.autocast does not cast float64 ops, so they ran in float64"
        )
        return []
    order = _top_stages(ctx, sub_ops=True)
    return [
        (tuple(sorted(st, key=order.index)), dtype, "the ops inside a torch.autocast region")
        for dtype, st in by_dtype.items()
    ]


def _span(stages: tuple[str, ...]) -> str:
    """``blocks.{0..11}.attn`` for a run of per-block names, else the names joined."""
    idx = [int(m.group(1)) for s in stages if (m := re.match(r"^blocks\.(\d+)\.(\w+)$", s))]
    subs = {s.split(".", 2)[2] for s in stages if s.count(".") == 2}
    if len(idx) == len(stages) > 1 and len(subs) == 1 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"blocks.{{{idx[0]}..{idx[-1]}}}.{subs.pop()}"
    return ", ".join(stages)


def _draw_inputs(
    desc: Any, dev: torch.device, tdtype: torch.dtype, grads: bool, batch: int, seed: int, inputs: Tensor | None
) -> _Inputs:
    """Seeded ``x ~ N(0, 1)`` (or the caller's ``inputs``) and cotangent."""
    gen = torch.Generator().manual_seed(seed)
    if inputs is None:
        x64 = torch.randn((batch, desc.in_c, desc.in_h, desc.in_w), generator=gen, dtype=torch.float64)
    else:
        x64 = inputs.detach().to(device="cpu", dtype=torch.float64)
    out_dim = desc.cfg.num_classes if desc.has_head else desc.cfg.embed_dim
    cot64 = torch.randn((batch, out_dim), generator=gen, dtype=torch.float64)
    x_m = x64.to(device=dev, dtype=tdtype)
    cot_m = cot64.to(device=dev, dtype=tdtype)
    return _Inputs(x_m.clone().requires_grad_(grads), x_m.to(torch.float64), cot_m, cot_m.to(torch.float64))


# -- step 2: run the model ---------------------------------------------------------------
def _run_model(ctx: _Context) -> None:
    """``adapter.run(x)`` once, with the capture hooks on and autograd on (when gradients are checked)."""
    m, report = ctx.model, ctx.report
    m.zero_grad(set_to_none=True)
    for p in m.parameters():
        p.requires_grad_(ctx.grads)
    try:
        with (
            capture(ctx.adapter.capture_points(), watch=m, device_type=ctx.dev.type) as cap,
            torch.set_grad_enabled(ctx.grads),
        ):
            try:
                out = ctx.adapter.run(ctx.io.x_in)
            except Exception as e:
                raise _ModelCrashError("the model's forward raised", e) from e
    except _ModelCrashError as c:
        report.status, report.reason, report.forward_ok = Status.CRASH, str(c), False
        raise _Done from None
    ctx.cap = cap
    ctx.step("model forward")
    report.notes += cap.notes
    report.notes += [f"{n}: module ran {cap.calls[n]} times; the first call was compared" for n in cap.repeated]
    if not isinstance(out, Tensor):
        report.status, report.forward_ok = Status.CRASH, False
        report.reason = f"the model returned {type(out).__name__}, not a tensor of logits (after the adapter's run)"
        raise _Done
    ctx.out = out
    ctx.model_t = dict(cap.tensors)
    ctx.model_t[OUTPUT] = out.detach()
    ctx.model_t64 = {k: v.to(torch.float64) for k, v in ctx.model_t.items()}
    _declare_precision(ctx)


# -- step 3: run the spec ----------------------------------------------------------------
def _run_spec(ctx: _Context) -> None:
    """The spec forward in float64 (the reference) and in each lower-precision reference, capturing
    every stage; a reference sees the model's input rounded to its dtype."""
    with torch.no_grad():
        ctx.ref_t[OUTPUT] = ctx.spec64.forward(ctx.io.x_ref, capture=ctx.ref_t)
        for ref in (ctx.native, ctx.declared):
            if ref is None:
                continue
            try:
                ref.stages[OUTPUT] = ref.spec.forward(ctx.io.x_ref.to(ref.dtype), capture=ref.stages)
            except Exception as e:
                ref.stages.clear()
                ctx.report.notes.append(f"spec forward failed in {ref.dtype} ({_exc_text(e)}); tolerance = floor only")
    ctx.step("spec forward")


# -- step 4a: compare the forward ----------------------------------------------------------
def _top_stages(ctx: _Context, *, sub_ops: bool = False) -> list[str]:
    """The stages of this model in forward order (no head without a classifier), ``output`` last."""
    p = ctx.desc.profile
    return stage_names(
        ctx.desc.cfg.num_layers,
        final_norm=p.final_norm,
        has_head=ctx.desc.has_head,
        sub_ops=sub_ops,
        norm_placement=p.norm_placement,
        pre_norm=p.pre_norm,
        layer_scale=p.layer_scale,
        pooled=p.head != "distilled",
    )


def _precision_of(ctx: _Context, name: str, order: list[str]) -> tuple[str | None, str | None]:
    """``(propagated, isolated)`` declared precision of a stage.

    Isolated: the stage contains a declared op (a block, its declared sub-op). Propagated: the stage
    is at or after the first declared op in forward order (its error flows downstream).
    """
    if not ctx.precision:
        return None, None
    declared = ctx.precision
    own = declared.get(name) or next((d for s, d in declared.items() if s.startswith(name + ".")), None)
    first = min((order.index(s) for s in declared if s in order), default=len(order))
    coarsest = max(declared.values(), key=_UNIT_ORDER.index)
    return (coarsest if order.index(name) >= first else None), own


def _compare(ctx: _Context, name: str, order: list[str]) -> StageResult:
    """Propagated and isolated errors of one stage or sub-op."""
    mt, rt, cap = ctx.model_t.get(name), ctx.ref_t.get(name), ctx.cap
    assert cap is not None
    if mt is None:
        return StageResult(name, captured=False, note=cap.missing_reason(name))
    if rt is None:
        return StageResult(name, note="the spec did not produce this stage")
    source = "the value model(x) returned" if name == OUTPUT else cap.sources.get(name, "")
    prec_prop, prec_iso = _precision_of(ctx, name, order)
    if tuple(mt.shape) != tuple(rt.shape):
        note = f"shape {tuple(mt.shape)} != spec {tuple(rt.shape)}"
        return StageResult(name, math.inf, math.inf, None, False, True, None, list(mt.shape), note, source=source)
    e = errors(mt, rt)
    ref = ctx.declared if prec_prop else ctx.native
    lt = ref.stages.get(name) if ref is not None else None
    lowp = errors(lt, rt).rel if lt is not None and lt.shape == rt.shape else None
    ok, tol = (ref.pol if ref is not None else ctx.pol).judge(e.rel, lowp)
    note = ""
    if not _finite(mt):
        note = "model produced non-finite values"
    elif not _finite(rt):
        ok, note = False, "spec reference is non-finite"
    r = StageResult(name, e.max_abs, e.rel, tol, ok, True, lowp, list(mt.shape), note, source=source)
    r.precision = prec_iso or prec_prop or ""
    _isolate(ctx, r, mt, prec_iso)
    return r


def _isolate(ctx: _Context, r: StageResult, mt: Tensor, precision: str | None) -> None:
    """The spec's stage on the model's own input of that stage (read off its neighbours' outputs)."""
    name = r.name
    ref = ctx.declared if precision else ctx.native
    inputs = ctx.model_t64
    if name == OUTPUT:  # the value returned must be what the last stage produced
        prev = _top_stages(ctx)[-2]
        x, spec_out, lp_out = inputs.get(prev), inputs.get(prev), None
    else:
        x = ctx.spec64.stage_input(name, inputs, ctx.io.x_ref)
        if x is None:
            r.note = r.note or "isolated error not computed: the stage's input was not captured"
            return
        try:
            with torch.no_grad():
                spec_out = ctx.spec64.run_stage(name, x)
                lp_out = ref.spec.run_stage(name, x.to(ref.dtype)) if ref is not None and ref.stages else None
        except ShapeError as e:  # the model's neighbour has the wrong shape: that stage already fails
            r.note = r.note or f"isolated error not computed: the captured input does not fit the spec ({e})"
            return
    if x is None or spec_out is None or tuple(spec_out.shape) != tuple(mt.shape):
        return
    iso = errors(mt, spec_out)
    lowp = errors(lp_out, spec_out).rel if lp_out is not None else None
    r.isolated_ok, r.isolated_tol = (ref.pol if ref is not None else ctx.pol).judge(iso.rel, lowp)
    r.isolated_err = iso.rel


def _first_failure(results: list[StageResult]) -> StageResult | None:
    """The first result that fails in isolation (or, where isolation was not possible, propagated)."""
    for s in results:
        if s.isolated_ok is False or (s.isolated_ok is None and s.ok is False):
            return s
    return None


def _compare_forward(ctx: _Context) -> None:
    report = ctx.report
    top = _top_stages(ctx)
    if not ctx.desc.has_head:
        report.notes.append("the model has no classification head: compared through the pooled vector")
    order = _top_stages(ctx, sub_ops=True)
    for name in top:
        report.stages.append(_compare(ctx, name, order))
        ctx.step(f"stage {name}")
    report.forward_ok = not any(s.failed for s in report.stages)
    first = _first_failure(report.stages)
    if first is None and not report.forward_ok:
        first = next(s for s in report.stages if s.failed)
        report.notes.append(
            f"no stage diverges in isolation, but the propagated error exceeds the tolerance from {first.name} on: "
            "each stage is right on its own inputs and the error builds up through their composition"
        )
    if first is not None:
        report.first_divergence = first.name
        if _BLOCK_RE.match(first.name):
            _drill_down(ctx, first.name, order)
    if report.not_captured:
        report.notes.append("not captured (not compared, not passed): " + ", ".join(report.not_captured))


def _drill_down(ctx: _Context, block: str, order: list[str]) -> None:
    """Every sub-op of a divergent block, propagated and isolated; the first failing one is named."""
    report = ctx.report
    subs = sub_op_order(ctx.desc.profile.norm_placement, ctx.desc.profile.layer_scale)
    report.subops = [_compare(ctx, f"{block}.{s}", order) for s in subs]
    bad = _first_failure(report.subops)
    if bad is not None:
        report.first_divergence_subop = bad.name
    elif all(s.isolated_ok for s in report.subops):
        report.notes.append(
            f"{block}: every sub-op agrees with the spec on its own inputs but the block output does not: "
            "the divergence is in how the block composes them (residual connections)"
        )
    else:
        report.notes.append(f"{block}: no compared sub-op diverges; sub-ops not compared may hide the cause")


# -- step 4b: compare the gradients ----------------------------------------------------------
def _compare_gradients(ctx: _Context) -> None:
    """Model autograd (from the value the model returned) vs the spec's explicit backward."""
    report, ad = ctx.report, ctx.adapter
    assert ctx.out is not None
    try:
        ctx.out.backward(ctx.io.cot_m)
    except Exception as e:
        report.status, report.backward_ok = Status.CRASH, False
        report.reason = str(_ModelCrashError("the model's backward raised", e))
        raise _Done from None
    ctx.step("model backward")
    named = dict(ctx.model.named_parameters())
    # A parameter autograd never reached (e.g. an unused pooler) has gradient zero.
    model_g = ad.to_spec({n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in named.items()})
    model_g["grad_x"] = ctx.io.x_in.grad if ctx.io.x_in.grad is not None else torch.zeros_like(ctx.io.x_in)
    ref_g = _spec_gradients(ctx, ctx.spec64, ctx.io.x_ref, ctx.io.cot_ref)
    # Every gradient flows through a declared op (the backward runs through the whole network).
    ref = ctx.declared if ctx.precision else ctx.native
    lp_g: dict[str, Tensor] = {}
    if ref is not None:
        try:
            lp_g = _spec_gradients(ctx, ref.spec, ctx.io.x_ref.to(ref.dtype), ctx.io.cot_ref.to(ref.dtype))
        except Exception as e:
            report.notes.append(f"spec backward failed in {ref.dtype} ({_exc_text(e)}); tolerance = floor only")
    ctx.step("spec backward")
    pol = ref.pol if ref is not None else ctx.pol
    synthetic = set(ctx.desc.synthetic)
    scale = group_scales({k: v for k, v in ref_g.items() if k not in synthetic}, grad_group)
    rows = [
        _grad_row(lib, keys, model_g, ref_g, lp_g, scale, pol)
        for lib, keys in _grad_links(ad, ref_g, model_g, synthetic)
    ]
    layers = ctx.desc.cfg.num_layers
    rows.sort(key=lambda r: group_rank(r.group, layers))  # stable: keeps link order within a group
    report.grads = rows
    for group in dict.fromkeys(r.group for r in rows):
        ctx.step(f"gradients {group}")
    report.backward_ok = all(r.ok is not False for r in rows)
    failed = [r.group for r in rows if r.ok is False]
    report.first_grad_divergence = failed[0] if failed else None


def _spec_gradients(ctx: _Context, spec: Any, x: Tensor, cot: Tensor) -> dict[str, Tensor]:
    if ctx.desc.has_head:
        g, gx = spec.backward(x, cot, mode="cache")
    else:
        g, gx = spec.backward(x, grad_pooled=cot, mode="cache")
    d = dict(g.to_dict())
    d["grad_x"] = gx
    return d


def _grad_links(
    ad: Any, ref_g: Mapping[str, Tensor], model_g: Mapping[str, Tensor], synthetic: set[str]
) -> list[tuple[str, tuple[str, ...]]]:
    """``(library parameter, spec keys)`` to compare: every linked parameter, spec keys with no library
    parameter, and the input."""
    links = [(lib, tuple(k for k in keys if k not in synthetic)) for lib, keys in ad.links()]
    links = [(lib, keys) for lib, keys in links if keys]
    linked = {k for _, keys in links for k in keys}
    for k in ref_g:
        if k not in linked and k not in synthetic and k != "grad_x" and k in model_g:
            links.append((f"(no library parameter) {k}", (k,)))
    return [*links, ("input", ("grad_x",))]


def _grad_row(
    lib: str,
    keys: tuple[str, ...],
    model_g: Mapping[str, Tensor],
    ref_g: Mapping[str, Tensor],
    lp_g: Mapping[str, Tensor],
    scale: Mapping[str, float],
    pol: Policy,
) -> GradResult:
    group = grad_group(keys[0])
    missing = [k for k in keys if k not in ref_g or k not in model_g]
    if missing:
        return GradResult(lib, list(keys), group, note="no gradient for " + ", ".join(missing))
    shape_bad = [k for k in keys if tuple(model_g[k].shape) != tuple(ref_g[k].shape)]
    if shape_bad:
        note = "shape mismatch: " + ", ".join(shape_bad)
        return GradResult(lib, list(keys), group, math.inf, math.inf, None, False, note=note)
    s = scale.get(group, 0.0)
    e = grad_errors([model_g[k] for k in keys], [ref_g[k] for k in keys], s)
    lowp = None
    if lp_g and all(k in lp_g for k in keys):
        lowp = grad_errors([lp_g[k] for k in keys], [ref_g[k] for k in keys], s).rel
    ok, tol = pol.judge(e.rel, lowp, grad=True)
    note = "" if all(_finite(model_g[k]) for k in keys) else "model gradient is non-finite"
    return GradResult(lib, list(keys), group, e.max_abs, e.rel, tol, ok, lowp, note)


# -- step 5: verdict --------------------------------------------------------------------------
def _verdict(ctx: _Context) -> None:
    """PASS only if every stage (the returned output included) and every gradient passed; the reason
    of any other status names where and by how much."""
    r = ctx.report
    bad_stage = [s for s in r.stages if "non-finite" in s.note]
    bad_grad = [g for g in r.grads if "non-finite" in g.note]
    if bad_stage or bad_grad:
        r.status = Status.NONFINITE
        r.first_divergence = r.first_divergence or (bad_stage[0].name if bad_stage else None)
        where = bad_stage[0].name if bad_stage else f"the gradient of {bad_grad[0].library_name}"
        r.reason = f"non-finite values at {where}"
    elif r.forward_ok is False:
        r.status = Status.MISMATCH
        r.reason = _stage_reason(r)
    elif r.backward_ok is False:
        r.status = Status.MISMATCH
        g = next(g for g in r.grads if g.ok is False)
        r.reason = (
            f"forward conforms; the gradient of {g.library_name} ({g.group}) is off by {g.rel_err:.1e} "
            f"(normwise over the group; tol {g.tol:.1e})"
        )
    else:
        r.status = Status.PASS


def _stage_reason(r: Report) -> str:
    s = r.stage(r.first_divergence_subop or r.first_divergence or "")
    if s.isolated_ok is False:
        return f"{s.name} diverges on its own inputs: isolated error {s.isolated_err:.1e} > tol {s.isolated_tol:.1e}"
    if s.ok is False and s.rel_err is not None and s.tol is not None:
        return f"{s.name}: propagated error {s.rel_err:.1e} > tol {s.tol:.1e}"
    return f"{s.name}: {s.note or 'not conformant'}"
