"""``check()``: compare a third-party ViT with the executable spec, stage by stage and gradient by gradient.

The recipe (docs/conformance.md; tolerance numbers in docs/tolerance.md), one named step each:

1. **prepare**: resolve an adapter (given, or :func:`conformance.adapters.detect`) on a deep
   copy of the model in eval mode, moved to the requested device and dtype; ``describe()``
   it (UNSUPPORTED lists every feature the spec cannot express); map its parameters onto
   the spec bundle; build the spec model in **float64** (and, in native low-precision mode,
   also in the model's dtype); draw the seeded input and cotangent.
2. **run the model**: ``adapter.run(x)`` (the model object itself: every hook, instance
   attribute and wrapper), with capture hooks at the stage boundaries and autograd on; then its
   backward from the seeded cotangent, and the model copy's parameters are released (what is
   compared from here on is the captured stages and the gradients mapped to spec keys).
3. **run the spec** on the same input, once: the forward captures every stage and keeps the
   cache its explicit backward consumes.
4. **compare**: every stage, and the value the model *returned* (stage ``output``), two
   ways: *propagated* (model stage vs the spec run end to end) and *isolated* (model stage
   vs the spec's stage applied to the model's own input of that stage). The first stage
   whose isolated error fails is the first divergence; inside a divergent block the same is
   done per sub-op. Then gradients: the cotangent is backpropagated from the returned value
   and every parameter's gradient is compared with the spec's explicit backward. A head whose
   weight is exactly zero (a freshly built torchvision ViT) would make every gradient upstream
   of it exactly zero on both sides; the trunk is then also seeded with a cotangent at the head
   input, so its gradients are compared non-vacuously. A gradient group that is still exactly
   zero on both sides is *not compared* (``ok=None``, with a note), never passed. A trunk-only check
   (``scope="trunk"``) ends at the head's input: the spec head is the identity, the model's ``output``
   is its captured head input (graph kept) and both backwards start there; the head is not checked.
5. **verdict**.

The spec revision checked against (``spec_revision``, default the model's own revision for a
spec profile, else :data:`vitspec.revisions.DEFAULT_REVISION`) is named in the report; the
deviation list is relative to it. It changes the reference numerics only for a model whose
profile is a spec revision's (docs/conformance.md, "Spec revision").

Exceptions raised by the model's own forward/backward become a CRASH report, non-finite
model values NONFINITE; errors of the harness itself propagate.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import inspect
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
from vitspec.revisions import DEFAULT_REVISION, SpecRevision, get_revision
from vitspec.schema import STAGES, dim_sizes, grad_group, group_rank, stage_names, sub_op_order

from .adapters.base import identity_head
from .capture import Captured, capture, first_input
from .report import SCOPES, GradResult, Report, StageResult, Status
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


def _resolve_adapter(
    model: nn.Module, adapter: Any, consume: bool, dev: torch.device, tdtype: torch.dtype
) -> tuple[Any, nn.Module]:
    """An adapter instance owning its own copy of the model (the caller's model is never touched), or,
    with ``consume``, the model (and adapter instance) itself; and the model its copy was made from.
    The own copy is made straight in the check's device and dtype
    (:func:`~conformance.adapters.copy_model`): one copy of the weights."""
    from .adapters import Adapter, copy_model, find_adapter

    if adapter is None or (isinstance(adapter, type) and issubclass(adapter, Adapter)):
        cls = find_adapter(model) if adapter is None else adapter
        return cls(model if consume else copy_model(model, cls.name, device=dev, dtype=tdtype), copy=False), model
    if isinstance(adapter, Adapter) and consume:
        return adapter, adapter.model
    if isinstance(adapter, Adapter):
        # Deep-copy the instance (with the model it holds): hooks and dtype changes must not
        # leak into the caller's adapter or model.
        return copy.deepcopy(adapter), adapter.model
    raise TypeError(f"adapter must be None, an Adapter subclass or an Adapter instance, got {type(adapter).__name__}")


def _as_given(source: nn.Module, own: nn.Module) -> Mapping[str, Tensor]:
    """The parameters of ``own`` (the model the check runs), read off ``source`` (the model it was copied
    from) where that has the same ones: the copy is already cast to the check's dtype, ``source``'s are as
    given (in float32 half the bytes to copy). An adapter that runs another module than it was given
    (one that unwraps a wrapper) gets its own."""
    mine = dict(own.named_parameters())
    if own is not source:
        given = dict(source.named_parameters())
        if given.keys() == mine.keys() and all(given[k].shape == v.shape for k, v in mine.items()):
            return given
    return mine


def _to_spec(ad: Any, tensors: dict[str, Tensor], *, copy: bool) -> dict[str, Tensor]:
    """``ad.to_spec(tensors, copy=copy)``; an adapter written before ``copy`` existed (a user's
    ``to_spec(self, tensors)`` override) is called without it, and copies as it always did."""
    if "copy" in inspect.signature(ad.to_spec).parameters:
        return dict(ad.to_spec(tensors, copy=copy))
    return dict(ad.to_spec(tensors))


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
    seed: int = 0


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
    tape: Any = None  # its forward cache, kept when it is the gradients' yardstick


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
    out: Tensor | None = None  # what the model returned (released after its backward)
    cap: Captured | None = None
    revision: SpecRevision | None = None  # the spec revision checked against
    seed_pooled: Tensor | None = None  # float64 cotangent at the head input (a zero head weight), else None
    model_g: dict[str, Tensor] = field(default_factory=dict)  # model gradients under spec keys (+ grad_x)
    backward_crash: str = ""  # why the model's backward raised (reported after the forward comparison)
    tape: Any = None  # spec64's forward cache for its explicit backward
    own_copy: bool = True  # the adapter's model is the check's own copy (it may be released)
    spec_cache: bool = True  # the spec's backward reads its forward's activations (else it recomputes them)
    zero_head: bool = False  # the classifier weight is exactly zero (the trunk gets its own cotangent)
    trunk: bool = False  # scope "trunk": the model's output is its head's input, and the head is left out
    sd_src: dict[str, Tensor] = field(default_factory=dict)  # the weights as given, in the spec's layout
    map_error: VitSpecError | None = None  # why they do not map (reported once the report is described)
    declared_pol: Policy | None = None  # the policy of a declared lower precision
    model_t: dict[str, Tensor] = field(default_factory=dict)  # model stage tensors (incl. output)
    model_t64: dict[str, Tensor] = field(default_factory=dict)  # the same in float64: isolation inputs
    ref_t: dict[str, Tensor] = field(default_factory=dict)  # spec64 stage tensors
    precision: dict[str, str] = field(default_factory=dict)  # stage -> declared coarser dtype
    isolate: bool = False  # isolate every block (else where it can matter: _blocks_need_isolation)

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
    spec_revision: str | None = None,
    consume: bool = False,
    spec_cache: bool = True,
    scope: str = "full",
    isolate: bool = False,
) -> Report:
    """Check ``model`` against the executable spec; return a :class:`~conformance.report.Report`.

    ``adapter``: ``None`` (auto-detect), an ``Adapter`` subclass, or an instance (deep-copied).
    ``dtype``: ``float64`` compares against the float64 bound; a lower precision runs the model
    in that dtype and judges it against the spec run in the same dtype (docs/tolerance.md).
    ``inputs``: the model input ``(B, C, H, W)`` (e.g. real images, see :mod:`conformance.inputs`)
    instead of the seeded ``N(0, 1)`` one; ``batch`` is then ``B``.
    ``spec_revision``: the TorchLean revision checked against (``b2a2184``, ``torchlean@411682f``;
    default: the model's own for a spec profile, else :data:`~vitspec.revisions.DEFAULT_REVISION`).
    ``consume=True``: check ``model`` (or the given adapter instance) itself instead of a deep copy;
    it is cast and moved in place and its parameters are **released** afterwards (unusable). For a
    model built only to be checked (the CLI does this): it saves a copy of the weights.
    ``spec_cache=False``: the spec keeps only each layer's input for its backward and recomputes the
    layer there (about one more spec forward of time, the activations' memory saved; the CLI does this).
    ``scope="trunk"``: check everything up to the pooled features (the head's input) and leave the head
    out, for a model whose only inexpressible part is its head (a pre-logits layer, a custom classifier);
    the report says the head was not checked (docs/conformance.md, "Trunk-only checks").
    ``isolate=True``: compute every stage's isolated error (the spec's stage on the model's own input of
    it). By default the encoder blocks' are computed only where they can matter: a float64 check with no
    declared lower precision whose propagated errors all sit below 1/:data:`ISOLATION_MARGIN` of the
    tolerance skips them, with a note (:func:`_blocks_need_isolation`; docs/conformance.md, "When the
    isolated errors are computed"), which saves about one spec forward.
    Never raises for a model problem: UNSUPPORTED / CRASH / NONFINITE / MISMATCH are statuses.
    Raises :class:`~vitspec.errors.ConfigError` for bad arguments (batch, dtype, device, inputs, revision).
    The check is run with autograd on even inside ``torch.inference_mode()`` / ``torch.no_grad()``.
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
    if spec_revision is not None:
        get_revision(spec_revision)  # an unknown revision is a bad argument (ConfigError), before any work
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    report = Report(Status.PASS, environment=environment(dev, dtype_name), scope=scope)
    # A caller inside torch.inference_mode() still gets gradients checked: autograd is the check's own.
    with torch.inference_mode(False), torch.enable_grad():
        try:
            ctx = _prepare(
                model,
                adapter,
                report,
                dev,
                dtype_name,
                tdtype,
                batch,
                seed,
                grads,
                progress,
                inputs,
                spec_revision,
                consume,
                scope == "trunk",
            )
            ctx.spec_cache, ctx.isolate = spec_cache, isolate
            _run_model(ctx)
            _run_spec(ctx)
            _compare_forward(ctx)
            _drop_stages(ctx)
            if ctx.backward_crash:
                report.status, report.backward_ok, report.reason = Status.CRASH, False, ctx.backward_crash
                raise _Done
            if ctx.model_g:
                _compare_gradients(ctx)
            _verdict(ctx)
        except _Done:
            pass
        finally:
            # The model copy, the spec and its cache are freed by reference counting; a cycle the check made
            # (an exception's frames) is young. A full collection would walk every object of the process
            # (0.2 s with timm and transformers imported).
            gc.collect(1)
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
    spec_revision: str | None = None,
    consume: bool = False,
    trunk: bool = False,
) -> _Context:
    try:
        ad, source = _resolve_adapter(model, adapter, consume, dev, tdtype)
        desc = (ad.for_trunk() if trunk else ad).description()
    except VitSpecError as e:  # Unsupported (every reason at once), or detect() finding no adapter
        report.status, report.reason = Status.UNSUPPORTED, getattr(e, "reason", None) or str(e)
        report.notes.append(f"{type(e).__name__}: {e}")
        if getattr(e, "head_only", False):
            report.reason += _HEAD_ONLY
        raise _Done from None
    rev, desc = _against(desc, spec_revision, report)
    head_params = _trunk_head_params(ad) if trunk and desc.has_head else []
    if trunk:
        desc = _trunk_description(desc, report)
    report.spec_revision = f"torchlean@{rev.name}"
    expected = (desc.in_c, desc.in_h, desc.in_w)
    if inputs is not None and tuple(inputs.shape[1:]) != expected:
        raise ConfigError(
            f"inputs have shape {tuple(inputs.shape)}, but the model takes (B, {', '.join(map(str, expected))})"
        )
    ad.model.eval()
    if any(t.is_meta for t in (*ad.model.parameters(), *ad.model.buffers())):
        report.status, report.forward_ok = Status.UNSUPPORTED, False
        report.reason = (
            "the model's parameters are on the meta device (shapes without values), so there is nothing to run: "
            "materialize them first (module.to_empty(device=...) and an init, or load weights)"
        )
        raise _Done
    # The weights in the spec's layout, as given (a copy: the model's forward may rewrite its own, and a
    # copy of a model may share modules with it): the spec is built from them twice, now (a model the
    # spec cannot express is UNSUPPORTED before it runs) and after the model's run.
    try:
        sd_src: dict[str, Tensor] = ad.to_spec(_as_given(source, ad.model))
        map_error: VitSpecError | None = None
    except VitSpecError as e:
        sd_src, map_error = {}, e
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
    report.deviations = profile_deviations(desc.profile, variant=desc.variant, against=rev)
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
    ctx = _Context(report, ad, desc, pol, dev, tdtype, grads, step, io, batch=batch, revision=rev)
    ctx.own_copy = consume or ad.model is not model
    ctx.trunk = trunk
    if trunk and "head_W" in sd_src:  # the model's own head left out: the spec's logits are the pooled vector
        ident = identity_head(cfg.num_classes, sd_src["head_W"])
        sd_src.update({k: v for k, v in ident.items() if k in sd_src})  # a head without a bias stays without
    if head_params:
        report.notes.append("not compared (the scope excludes the head): " + ", ".join(head_params))
    ctx.sd_src, ctx.map_error = sd_src, map_error
    _build_specs(ctx, validate=True)
    ctx.zero_head = _zero_head(ctx)
    # Built for real after the model's run (_run_model): the spec and the model, with its autograd graph
    # and its gradients, are not held at once (peak memory).
    ctx.spec64 = None
    step("mapped weights onto the spec")
    return ctx


#: Appended to the reason of a model refused only for its head: the trunk can still be checked.
_HEAD_ONLY = (
    " (only the head is inexpressible: --trunk-only, or check(..., scope='trunk'), checks everything up to the "
    "pooled features and leaves the head out)"
)


def _trunk_description(desc: Any, report: Report) -> Any:
    """The description a trunk-only check compares: no head (the spec head is the identity, its logits
    the pooled vector), so the check ends at the head's input. A model whose logits are not one head on
    a pooled vector (DeiT-distilled: two heads on two tokens) has no such point: UNSUPPORTED."""
    if desc.profile.head == "distilled":
        report.status = Status.UNSUPPORTED
        report.reason = "a trunk-only check needs one pooled vector before the head; a distilled model has two heads"
        raise _Done
    report.notes.append(
        "scope trunk: everything up to the pooled features (the head's input) is compared; the head was not "
        "checked, and the value model(x) returned was not compared"
    )
    if not desc.has_head:
        return desc
    pooled = dim_sizes(desc.cfg, desc.in_c, desc.in_h, desc.in_w, variant=desc.variant, profile=desc.profile)["pooled"]
    cfg = dataclasses.replace(desc.cfg, num_classes=pooled)  # the identity head: pooled -> pooled
    return dataclasses.replace(desc, cfg=cfg, has_head=False, synthetic=(*desc.synthetic, "head_W", "head_b"))


def _trunk_head_params(ad: Any) -> list[str]:
    """The library parameters that feed only the spec head (left out of a trunk-only check)."""
    return [lib for lib, keys in ad.links() if keys and set(keys) <= {"head_W", "head_b"}]


def _against(desc: Any, spec_revision: str | None, report: Report) -> tuple[SpecRevision, Any]:
    """The revision checked against, and the description whose profile is the reference.

    A library profile (timm, torchvision, ...) keeps its own numerics: the revision only sets what
    the deviation list is relative to. A spec profile (one revision's numerics, e.g. a custom model
    declaring ``torchlean@411682f``) is checked *as* the chosen revision: its head split, LayerNorm
    eps and explicit backward become that revision's.
    """
    own = desc.profile.revision
    rev = get_revision(spec_revision if spec_revision is not None else (own or DEFAULT_REVISION))
    if own is None or own == rev.name:
        return rev, desc
    prof = desc.profile.replace(
        name=f"torchlean@{rev.name}",
        ln_eps=rev.ln_eps,
        head_split=rev.head_split,
        lean_backward=rev.lean_backward,
        revision=rev.name,
    )
    report.notes.append(
        f"the model's profile {desc.profile.name} implements revision {own}; it is checked against "
        f"torchlean@{rev.name} (head split, LayerNorm eps and explicit backward of that revision)"
    )
    return rev, dataclasses.replace(desc, profile=prof)


def _build_specs(ctx: _Context, *, validate: bool = False) -> None:
    """The spec model from the mapped weights in float64, in native mode also in the model's dtype, and in
    the coarsest dtype the model declares for an op (:func:`_declare_precision`).

    The weights are ``ctx.sd_src`` rounded to the check's dtype, exactly what the model's copy holds
    (the adapter's maps are transposes, splits and permutes, which commute with rounding), consumed one
    by one (peak memory). ``validate``: only whether the spec can be built (UNSUPPORTED if not), over
    stride-0 zeros of the right shapes, which cost no memory; ``ctx.sd_src`` is kept."""
    from vitspec.models import ViTClsSpec, ViTSpec

    desc, report = ctx.desc, ctx.report
    spec_cls = ViTClsSpec if desc.variant == "cls" else ViTSpec
    src = ctx.sd_src
    try:
        if ctx.map_error is not None:
            raise ctx.map_error
        if validate:
            zero = torch.zeros((), device=ctx.dev, dtype=torch.float64)
            sd64 = {k: zero.expand(v.shape) for k, v in src.items()}
        else:
            sd64 = {
                k: src.pop(k)
                .to(device=ctx.dev, dtype=ctx.tdtype)
                .to(torch.float64, memory_format=torch.contiguous_format)
                for k in list(src)
            }
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
    if validate:
        return
    if ctx.pol.dtype != "float64":
        ctx.native = _low_ref(ctx, ctx.pol.dtype, ctx.pol)
    if ctx.declared_pol is not None:
        ctx.declared = _low_ref(ctx, ctx.declared_pol.dtype, ctx.declared_pol)


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
        ctx.declared_pol = pol  # the spec in that dtype is built with the others (_build_specs)
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
    out_dim = desc.cfg.num_classes  # without a head (or in a trunk-only check) the identity head's: pooled width
    cot64 = torch.randn((batch, out_dim), generator=gen, dtype=torch.float64)
    x_m = x64.to(device=dev, dtype=tdtype)
    cot_m = cot64.to(device=dev, dtype=tdtype)
    return _Inputs(x_m.clone().requires_grad_(grads), x_m.to(torch.float64), cot_m, cot_m.to(torch.float64), seed)


# -- step 2: run the model ---------------------------------------------------------------
def _run_model(ctx: _Context) -> None:
    """``adapter.run(x)`` once, with the capture hooks on and autograd on (when gradients are
    checked); then the model's backward (:func:`_model_backward`)."""
    m, report = ctx.model, ctx.report
    m.zero_grad(set_to_none=True)
    for p in m.parameters():
        p.requires_grad_(ctx.grads)
    inside: list[str] = []  # submodules of the copy that ran: none means the forward escaped the copy
    seed_point = _seed_points(ctx)
    live: list[Tensor] = []  # the head input as the model computed it (graph attached), for seeding
    watchers = [
        sub.register_forward_pre_hook(lambda *_a, _n=name: inside.append(_n) if not inside else None)
        for name, sub in m.named_modules()
        if name
    ]
    watchers += [_keep_live(pt, live) for pt in seed_point]
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
        report.status, report.forward_ok = Status.CRASH, False
        report.reason = f"{c}{_ESCAPED if not inside and any(True for _ in m.children()) else ''}"
        raise _Done from None
    finally:
        for h in watchers:
            h.remove()
    ctx.cap = cap
    ctx.step("model forward")
    if not inside and any(True for _ in m.children()):
        report.status, report.forward_ok = Status.UNSUPPORTED, False
        report.reason = _ESCAPED.removeprefix("; ")
        raise _Done
    report.notes += cap.notes
    report.notes += [f"{n}: module ran {cap.calls[n]} times; the first call was compared" for n in cap.repeated]
    if ctx.trunk and (out := _trunk_output(ctx, live, cap)) is None:
        report.status, report.forward_ok = Status.UNSUPPORTED, False
        report.reason = f"trunk only: the head's input ({_head_input_stage(ctx)}) was not captured, nothing to compare"
        raise _Done
    if not isinstance(out, Tensor):
        report.status, report.forward_ok = Status.CRASH, False
        report.reason = f"the model returned {type(out).__name__}, not a tensor of logits (after the adapter's run)"
        raise _Done
    ctx.out = out
    ctx.model_t = dict(cap.tensors)
    ctx.model_t[OUTPUT] = out.detach()
    ctx.model_t64 = {k: v.to(torch.float64) for k, v in ctx.model_t.items()}
    _declare_precision(ctx)
    grads = _model_backward(ctx, live[0] if live else None) if ctx.grads else None
    del live
    if ctx.own_copy:
        _release(m)
    if grads is not None:
        named, grad_x = grads
        ctx.model_g = _to_spec(ctx.adapter, named, copy=False)  # autograd is done writing them
        del named, grads
        ctx.model_g["grad_x"] = grad_x
    _build_specs(ctx)  # the weights the model ran with


#: Appended to the reason when none of the model copy's submodules ran during its forward.
_ESCAPED = (
    "; the model's forward escapes the model copy the check runs: none of the copy's modules ran (its forward "
    "is a closure over another object, e.g. the original model's bound forward, so the original modules ran "
    "instead); --dtype equal to the model's dtype avoids a dtype clash, but the check still cannot see inside: "
    "bind the wrapper to the model (types.MethodType) so that a copy calls its own modules"
)


def _zero_head(ctx: _Context) -> bool:
    """Whether the trunk needs its own cotangent: a classifier whose weight is exactly zero makes every
    gradient upstream of the head exactly zero on both sides, a comparison that proves nothing."""
    p = ctx.desc.profile
    head_w = ctx.sd_src.get("head_W")
    return bool(ctx.grads and ctx.desc.has_head and p.head != "distilled" and head_w is not None and not head_w.any())


def _head_input_stage(ctx: _Context) -> str:
    """The stage whose tensor the head consumes: the pooled vector, or its norm when that comes after pooling."""
    return "final_norm" if ctx.desc.profile.final_norm == "after_pool" else "pool"


def _seed_points(ctx: _Context) -> tuple[Any, ...]:
    """The capture points of the head input when the trunk needs its own cotangent or is the output
    (a trunk-only check), else none."""
    if not (ctx.zero_head or ctx.trunk):
        return ()
    return tuple(ctx.adapter.capture_points().get(_head_input_stage(ctx), ()))


def _trunk_output(ctx: _Context, live: list[Tensor], cap: Captured) -> Tensor | None:
    """What a trunk-only check compares as the model's output: the head's input as the model computed it
    (with its autograd graph when gradients are checked, so the backward starts there)."""
    if live:
        return live.pop(0)
    return cap.tensors.get(_head_input_stage(ctx))


def _keep_live(point: Any, live: list[Tensor]) -> torch.utils.hooks.RemovableHandle:
    """A hook keeping the first value a capture point sees, transformed but *not* detached."""

    def keep(value: Any) -> None:
        if live:
            return
        try:
            t = point.transform(value)
        except Exception:  # the capture hook on the same point reports a failing transform
            return
        if isinstance(t, Tensor) and t.requires_grad:
            live.append(t)

    if point.kind == "output":
        return point.module.register_forward_hook(lambda _m, _a, out: keep(out))
    return point.module.register_forward_pre_hook(lambda _m, a, kw: keep(first_input(a, kw)), with_kwargs=True)


def _model_backward(ctx: _Context, head_in: Tensor | None) -> tuple[dict[str, Tensor], Tensor] | None:
    """Backpropagate the cotangent from the returned value (and, for a zero head weight, a second one
    from the head input): ``(gradient per library parameter, gradient of the input)``.

    A backward that raises is remembered (``ctx.backward_crash``; ``None`` is returned) and reported
    after the forward comparison."""
    report, m = ctx.report, ctx.model
    assert ctx.out is not None
    outs, cots = [ctx.out], [ctx.io.cot_m]
    if head_in is not None:
        gen = torch.Generator().manual_seed(ctx.io.seed + 1)
        pooled64 = torch.randn(tuple(head_in.shape), generator=gen, dtype=torch.float64)
        ctx.seed_pooled = pooled64.to(ctx.dev)
        outs.append(head_in)
        cots.append(pooled64.to(device=ctx.dev, dtype=head_in.dtype))
        report.notes.append(
            "the head weight is exactly zero, so every gradient upstream of the head would be exactly zero on both "
            "sides: the trunk is also seeded with a cotangent at the head input (the spec's grad_pooled)"
        )
    elif ctx.zero_head:
        report.notes.append(
            "the head weight is exactly zero and the model's head input could not be seeded: the gradients upstream "
            "of the head are exactly zero on both sides and are not compared"
        )
    try:
        torch.autograd.backward(outs, cots)
    except Exception as e:
        ctx.backward_crash = str(_ModelCrashError("the model's backward raised", e))
        return None
    finally:
        ctx.out = None  # the graph is spent (or broken): drop it
        del outs, head_in
    ctx.step("model backward")
    # A parameter autograd never reached (e.g. an unused pooler) has gradient zero.
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in m.named_parameters()}
    x_in = ctx.io.x_in
    return grads, (x_in.grad if x_in.grad is not None else torch.zeros_like(x_in))


def _release(m: nn.Module) -> None:
    """Free the model copy's parameters and gradients: the copy is the check's own and does not run
    again, and releasing it keeps the model, its gradients, the spec and the spec's forward cache from
    being alive at once (peak memory, docs/benchmarks.md). Each parameter keeps its shape and dtype,
    as a one-element stride-0 view, for the adapter's rules."""
    with torch.no_grad():
        for p in m.parameters():
            p.grad = None
            p.data = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)


# -- step 3: run the spec ----------------------------------------------------------------
def _run_spec(ctx: _Context) -> None:
    """The spec forward in float64 (the reference) and in each lower-precision reference, capturing
    every stage, once: when gradients are compared it keeps the cache the explicit backward consumes.
    A reference sees the model's input rounded to its dtype."""
    keep = bool(ctx.model_g)
    with torch.no_grad():
        if keep:
            mode = "cache" if ctx.spec_cache else "recompute"
            ctx.ref_t[OUTPUT], ctx.tape = ctx.spec64.forward_with_cache(ctx.io.x_ref, mode, capture=ctx.ref_t)
        else:
            ctx.ref_t[OUTPUT] = ctx.spec64.forward(ctx.io.x_ref, capture=ctx.ref_t)
        for ref in (ctx.native, ctx.declared):
            if ref is None:
                continue
            x = ctx.io.x_ref.to(ref.dtype)
            try:
                if keep and ref is _grad_ref(ctx):
                    ref.stages[OUTPUT], ref.tape = ref.spec.forward_with_cache(x, capture=ref.stages)
                else:
                    ref.stages[OUTPUT] = ref.spec.forward(x, capture=ref.stages)
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


#: The source of the ``output`` stage in a trunk-only check.
_TRUNK_OUTPUT = "the head's input (pooled features); model(x) not compared: the scope excludes the head"


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


def _compare(ctx: _Context, name: str, order: list[str]) -> tuple[StageResult, Tensor | None]:
    """The propagated error of one stage or sub-op, and the model's tensor when it can be isolated
    (:func:`_isolate`), else ``None``."""
    mt, rt, cap = ctx.model_t.get(name), ctx.ref_t.get(name), ctx.cap
    assert cap is not None
    if mt is None:
        return StageResult(name, captured=False, note=cap.missing_reason(name)), None
    if rt is None:
        return StageResult(name, note="the spec did not produce this stage"), None
    source = cap.sources.get(name, "")
    if name == OUTPUT:
        source = _TRUNK_OUTPUT if ctx.trunk else "the value model(x) returned"
    prec_prop, prec_iso = _precision_of(ctx, name, order)
    if tuple(mt.shape) != tuple(rt.shape):
        note = f"shape {tuple(mt.shape)} != spec {tuple(rt.shape)}"
        return StageResult(name, math.inf, math.inf, None, False, True, None, list(mt.shape), note, source=source), None
    e = errors(mt, rt)
    ref = ctx.declared if prec_prop else ctx.native
    lt = ref.stages.get(name) if ref is not None else None
    lowp = errors(lt, rt).rel if lt is not None and lt.shape == rt.shape else None
    ok, tol = (ref.pol if ref is not None else ctx.pol).judge(e.rel, lowp)
    note = ""
    if math.isfinite(e.max_abs):  # a finite difference everywhere: both sides are finite
        pass
    elif not _finite(mt):
        note = "model produced non-finite values"
    elif not _finite(rt):
        ok, note = False, "spec reference is non-finite"
    r = StageResult(name, e.max_abs, e.rel, tol, ok, True, lowp, list(mt.shape), note, source=source)
    r.precision = prec_iso or prec_prop or ""
    return r, mt


def _compare_all(ctx: _Context, names: list[str], order: list[str], *, top: bool = False) -> list[StageResult]:
    """:func:`_compare` each of ``names``, then :func:`_isolate` them. Of the top-level stages (``top``:
    a progress step each), the encoder blocks, each about a block's forward to isolate, only where
    :func:`_blocks_need_isolation` finds that their isolated errors can matter."""
    compared = []
    for name in names:
        compared.append(_compare(ctx, name, order))
        if top:
            ctx.step(f"stage {name}")
    results = [r for r, _ in compared]
    blocks = not top or _blocks_need_isolation(ctx, results)
    for r, mt in compared:
        if mt is not None and (blocks or not _BLOCK_RE.match(r.name)):
            _isolate(ctx, r, mt, _precision_of(ctx, r.name, order)[1])
    if not blocks:
        ctx.report.notes.append(_ISOLATION_SKIPPED)
    return results


#: A float64 check skips the blocks' isolated errors when every propagated error is below tol / this.
ISOLATION_MARGIN = 64

#: The note of a check whose blocks were not isolated (:func:`_blocks_need_isolation`).
_ISOLATION_SKIPPED = (
    f"isolated errors of the encoder blocks not computed: in this float64 check every stage's propagated "
    f"error is below 1/{ISOLATION_MARGIN} of the tolerance both comparisons share, so a block could fail in "
    f"isolation only by amplifying the difference in its input {ISOLATION_MARGIN - 1}-fold; "
    "check(..., isolate=True) / --isolate computes them"
)


def _blocks_need_isolation(ctx: _Context, results: list[StageResult]) -> bool:
    """Whether to isolate the encoder blocks (the other stages always are: it costs next to nothing).

    Yes when asked (``isolate=True``), when a stage does not pass propagated (to locate it), in a lower
    precision (native or declared: the isolated tolerance, one stage's own rounding, is tighter than the
    propagated one), and when any propagated error comes within 1/:data:`ISOLATION_MARGIN` of its
    tolerance. Otherwise a block's isolated error, at most its propagated error plus the spec block's
    change between the model's input and the spec's, ``A · err(input)`` for an amplification ``A``,
    exceeds the tolerance only if ``A > ISOLATION_MARGIN - 1``: a conformant float64 model's errors sit
    three to four orders of magnitude below the tolerance (docs/tolerance.md)."""
    if ctx.isolate or ctx.pol.dtype != "float64" or ctx.precision:
        return True
    return any(
        r.ok is not True or r.rel_err is None or r.tol is None or r.rel_err * ISOLATION_MARGIN > r.tol for r in results
    )


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
    if not ctx.desc.has_head and not ctx.trunk:
        report.notes.append("the model has no classification head: compared through the pooled vector")
    order = _top_stages(ctx, sub_ops=True)
    report.stages = _compare_all(ctx, top, order, top=True)
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


def _drop_stages(ctx: _Context) -> None:
    """Free the stage tensors once every stage is compared: the spec's backward comes next (peak memory)."""
    assert ctx.cap is not None
    for d in (ctx.model_t, ctx.model_t64, ctx.ref_t, ctx.cap.tensors):
        d.clear()
    for ref in (ctx.native, ctx.declared):
        if ref is not None:
            ref.stages.clear()


def _drill_down(ctx: _Context, block: str, order: list[str]) -> None:
    """Every sub-op of a divergent block, propagated and isolated; the first failing one is named."""
    report = ctx.report
    subs = sub_op_order(ctx.desc.profile.norm_placement, ctx.desc.profile.layer_scale)
    report.subops = _compare_all(ctx, [f"{block}.{s}" for s in subs], order)
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
    """Model autograd (from the value the model returned) vs the spec's explicit backward.

    Each encoder layer's gradients are compared as soon as the spec's backward computed them, and
    both sides are freed then (peak memory); the other groups after the backward."""
    report, ad = ctx.report, ctx.adapter
    model_g = ctx.model_g
    # Every gradient flows through a declared op (the backward runs through the whole network).
    ref = _grad_ref(ctx)
    lp_g: dict[str, Tensor] = {}
    if ref is not None and ref.tape is not None:
        try:
            pooled = ctx.seed_pooled.to(ref.dtype) if ctx.seed_pooled is not None else None
            lp_g = _spec_gradients(ctx, ref.spec, ref.tape, ctx.io.cot_ref.to(ref.dtype), pooled)
        except Exception as e:
            report.notes.append(f"spec backward failed in {ref.dtype} ({_exc_text(e)}); tolerance = floor only")
        ref.tape = None
    pol = ref.pol if ref is not None else ctx.pol
    synthetic = set(ctx.desc.synthetic)
    links = _grad_links(ad, ctx.spec64.state_dict(), model_g, synthetic)
    rows: dict[int, GradResult] = {}
    compared: set[str] = set()

    def on_layer(i: int, layer: Any) -> None:
        ref_layer = dict(layer.items(f"encoder.{i}."))
        scale = group_scales({k: v for k, v in ref_layer.items() if k not in synthetic}, grad_group)
        for j, (lib, keys) in enumerate(links):
            if j not in rows and all(k in ref_layer for k in keys):
                rows[j] = _grad_row(lib, keys, model_g, ref_layer, lp_g, scale, pol)
                compared.update(keys)
        for k in compared.intersection(ref_layer):
            model_g.pop(k, None)
            _free(ref_layer[k])

    ref_g = _spec_gradients(ctx, ctx.spec64, ctx.tape, ctx.io.cot_ref, ctx.seed_pooled, on_layer)
    ctx.tape = None  # the backward consumed it
    ctx.step("spec backward")
    rest = {k: v for k, v in ref_g.items() if k not in compared}
    scale = group_scales({k: v for k, v in rest.items() if k not in synthetic}, grad_group)
    for j, (lib, keys) in enumerate(links):
        if j not in rows:
            rows[j] = _grad_row(lib, keys, model_g, rest, lp_g, scale, pol)
    ctx.model_g = {}
    layers = ctx.desc.cfg.num_layers
    ordered = [rows[j] for j in range(len(links))]
    ordered.sort(key=lambda r: group_rank(r.group, layers))  # stable: keeps link order within a group
    report.grads = ordered
    for group in dict.fromkeys(r.group for r in ordered):
        ctx.step(f"gradients {group}")
    vacuous = [g for g in dict.fromkeys(r.group for r in ordered if r.note.startswith(_VACUOUS))]
    if vacuous:
        report.notes.append(
            "not compared (vacuous): the gradients of " + ", ".join(vacuous) + " are exactly zero in the spec and "
            "in the model, so their comparison proves nothing; they are not counted as passed"
        )
    report.backward_ok = all(r.ok is not False for r in ordered)
    failed = [r.group for r in ordered if r.ok is False]
    report.first_grad_divergence = failed[0] if failed else None


def _free(t: Tensor) -> None:
    """Drop a compared gradient's storage now (the tensor object stays, with no elements)."""
    with contextlib.suppress(RuntimeError):  # a tensor torch will not re-point is freed with the rest, later
        t.set_(t.new_empty(0).untyped_storage())


def _grad_ref(ctx: _Context) -> _LowRef | None:
    """The lower-precision reference the gradients are judged against (a declared op's, else native)."""
    return ctx.declared if ctx.precision else ctx.native


def _spec_gradients(
    ctx: _Context,
    spec: Any,
    tape: Any,
    cot: Tensor,
    pooled: Tensor | None,
    on_layer: Callable[[int, Any], None] | None = None,
) -> dict[str, Tensor]:
    """The spec's explicit backward over the cache of its one forward."""
    with torch.no_grad():
        if ctx.desc.has_head:
            g, gx = spec.backward_from_cache(tape, cot, grad_pooled=pooled, on_layer=on_layer)
        else:
            g, gx = spec.backward_from_cache(tape, grad_pooled=cot, on_layer=on_layer)
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


#: The note of a gradient row whose group is exactly zero in the spec and in the model.
_VACUOUS = "not compared: vacuous"


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
    if s == 0.0 and e.max_abs == 0.0:  # both sides exactly zero: nothing was tested
        return GradResult(
            lib, list(keys), group, 0.0, None, None, None, note=_VACUOUS + " (exactly zero on both sides)"
        )
    lowp = None
    if lp_g and all(k in lp_g for k in keys):
        lowp = grad_errors([lp_g[k] for k in keys], [ref_g[k] for k in keys], s).rel
    ok, tol = pol.judge(e.rel, lowp, grad=True)
    finite = math.isfinite(e.max_abs) or all(_finite(model_g[k]) for k in keys)  # a finite error: both finite
    note = "" if finite else "model gradient is non-finite"
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
