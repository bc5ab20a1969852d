"""``check()``: compare a third-party ViT with the executable spec, stage by stage and gradient by gradient.

The recipe (docs/architecture.md; tolerance numbers in docs/tolerance.md):

1. Resolve an adapter (given, or :func:`conformance.adapters.detect`) on a deep copy of
   the model in eval mode, moved to the requested device and dtype (attention as
   shipped: timm's ``fused_attn`` is left alone).
2. ``describe()`` the model; map its parameters onto the spec bundle with ``to_spec``;
   build the spec model (:class:`~vitspec.models.ViTSpec` / ``ViTClsSpec``) from them in
   **float64** (always the reference) and, in native low-precision mode, also in the
   model's dtype. Anything the spec cannot express is reported as UNSUPPORTED.
3. Seeded input ``x ~ N(0, 1)`` and cotangent; run the model once with capture hooks at
   the stage boundaries (and autograd on), run the spec with ``capture={}``.
4. Compare per stage in the spec's order; inside the first divergent block, compare
   the sub-ops (``norm1 / attn / norm2 / mlp``) to say which one diverges first.
5. Backpropagate the cotangent through the model; map its gradients with the same
   ``to_spec``; compare with the spec's explicit ``backward`` per parameter (grouped by
   stage) and for the input.

Exceptions raised by the model's own forward/backward become a CRASH report, non-finite
model values NONFINITE; errors of the harness itself propagate.
"""

from __future__ import annotations

import math
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vitspec.errors import ConfigError, MappingError, VitSpecError
from vitspec.profiles import deviations as profile_deviations

from .capture import capture
from .report import GradResult, Report, StageResult, Status
from .tolerance import Policy, errors, parse_dtype, policy

__all__ = ["ProgressFn", "check", "environment", "grad_group", "sub_op_order"]

_SUBOP_RE = re.compile(r"^blocks\.(\d+)\.(\w+)$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)$")
_ENCODER_KEY_RE = re.compile(r"^encoder\.(\d+)\.")

#: Third-party libraries whose versions go into the report's environment.
_LIBRARIES = ("timm", "torchvision", "transformers", "vit-pytorch", "numpy")


class ProgressFn(Protocol):
    """Progress callback: ``step`` just finished, ``done`` of ``total`` steps."""

    def __call__(self, step: str, done: int, total: int) -> None: ...


# -- small pure helpers ----------------------------------------------------------------
def sub_op_order(norm_placement: str) -> tuple[str, ...]:
    """Forward order of a block's sub-ops: pre-norm ``norm1 attn norm2 mlp``, post-norm ``attn norm1 mlp norm2``."""
    return ("norm1", "attn", "norm2", "mlp") if norm_placement == "pre" else ("attn", "norm1", "mlp", "norm2")


def grad_group(spec_key: str) -> str:
    """The stage a spec parameter belongs to: ``encoder.3.mha.Wq`` -> ``blocks.3``, ``pos`` -> ``pos_embed``."""
    m = _ENCODER_KEY_RE.match(spec_key)
    if m:
        return f"blocks.{m.group(1)}"
    if spec_key.startswith("patch_"):
        return "patch_embed"
    if spec_key in ("pos", "cls_token"):
        return "pos_embed"
    if spec_key.startswith("final_norm"):
        return "final_norm"
    if spec_key.startswith("head"):
        return "head"
    if spec_key == "grad_x":
        return "input"
    return "other"


def _group_rank(group: str, layers: int) -> int:
    """Backward order: head, final_norm, blocks.L-1 .. blocks.0, pos_embed, patch_embed, input."""
    m = _BLOCK_RE.match(group)
    if m:
        return 10 + (layers - 1 - int(m.group(1)))
    fixed = {"head": 0, "final_norm": 1, "pos_embed": 10 + layers, "patch_embed": 11 + layers, "input": 12 + layers}
    return fixed.get(group, 13 + layers)


def _versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment(device: torch.device | str, dtype: str) -> dict[str, Any]:
    """Python/torch/library versions, device name (GPU name on CUDA), dtype and UTC date."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(dev),
        "device_name": name,
        "dtype": dtype,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if dev.type == "cuda":
        env["cuda"] = torch.version.cuda
    env.update({f"{k}_version": v for k, v in _versions().items()})
    return env


def _exc_text(e: BaseException) -> str:
    """``Type: message`` plus where in the model it was raised (last frame), no full traceback."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


# -- adapter resolution ----------------------------------------------------------------
def _resolve_adapter(model: nn.Module, adapter: Any) -> Any:
    """An adapter instance owning its own copy of the model (the caller's model is never touched)."""
    import copy

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


def _describe(adapter: Any) -> Any:
    # RuleAdapter caches the description (describe() may be costly); others just describe().
    fn = getattr(adapter, "description", None)
    return fn() if callable(fn) else adapter.describe()


# -- comparison of one tensor pair -------------------------------------------------------
def _compare_stage(
    name: str,
    model_t: Tensor | None,
    ref_t: Tensor | None,
    lowp_t: Tensor | None,
    pol: Policy,
    *,
    not_captured_note: str = "not captured",
) -> StageResult:
    if model_t is None or ref_t is None:
        note = not_captured_note if model_t is None else "spec did not produce this stage"
        return StageResult(name, captured=model_t is not None, note=note)
    shape = list(model_t.shape)
    if tuple(model_t.shape) != tuple(ref_t.shape):
        return StageResult(
            name,
            max_abs_err=math.inf,
            rel_err=math.inf,
            ok=False,
            shape=shape,
            note=f"shape {tuple(model_t.shape)} != spec {tuple(ref_t.shape)}",
        )
    e = errors(model_t, ref_t)
    lowp = None
    if lowp_t is not None and tuple(lowp_t.shape) == tuple(ref_t.shape):
        lowp = errors(lowp_t, ref_t).rel
    ok, tol = pol.judge(e.rel, lowp)
    note = ""
    if not _finite(model_t):
        note = "model produced non-finite values"
    elif not _finite(ref_t):
        ok, note = False, "spec reference is non-finite"
    return StageResult(name, e.max_abs, e.rel, tol, ok, True, lowp, shape, note)


class _ModelCrashError(Exception):
    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(f"{where}: {_exc_text(exc)}")
        self.where = where


# -- the check -------------------------------------------------------------------------
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
) -> Report:
    """Check ``model`` against the executable spec; return a :class:`~conformance.report.Report`.

    ``adapter``: ``None`` (auto-detect), an ``Adapter`` subclass, or an instance (deep-copied).
    ``dtype``: ``float64`` compares against the float64 bound; a lower precision runs the model
    in that dtype and judges it against the spec run in the same dtype (docs/tolerance.md).
    Never raises for a model problem: UNSUPPORTED / CRASH / NONFINITE / MISMATCH are statuses.
    Raises :class:`~vitspec.errors.ConfigError` for bad arguments (batch, dtype, device).
    """
    t0 = time.perf_counter()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"batch must be a positive int, got {batch!r}")
    try:
        dtype_name, tdtype = parse_dtype(dtype)
        dev = torch.device(device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False")
    env = environment(dev, dtype_name)

    def finish(report: Report) -> Report:
        report.environment = env
        report.elapsed_s = time.perf_counter() - t0
        return report

    # 1. adapter + description ---------------------------------------------------------
    try:
        ad = _resolve_adapter(model, adapter)
        desc = _describe(ad)
    except VitSpecError as e:  # Unsupported, or detect() finding no adapter
        reason = getattr(e, "reason", None) or str(e)
        return finish(Report(Status.UNSUPPORTED, reason=reason, notes=[f"{type(e).__name__}: {e}"]))
    m: nn.Module = ad.model
    m.eval()
    m.to(device=dev, dtype=tdtype)

    cfg = desc.cfg
    native = dtype_name != "float64"
    tokens = cfg.tokens(desc.in_h, desc.in_w) + (1 if desc.variant == "cls" else 0)
    pol = policy(
        dtype=dtype_name,
        embed_dim=cfg.embed_dim,
        hidden_dim=cfg.hidden_dim,
        patch_dim=desc.in_c * cfg.patch_h * cfg.patch_w,
        tokens=tokens,
        layers=cfg.num_layers,
        batch=batch,
    )
    synthetic = set(getattr(desc, "synthetic", ()) or ())
    report = Report(
        Status.PASS,
        description={
            "library": desc.library,
            "model_name": desc.model_name,
            "cfg": asdict(cfg),
            "input_size": [desc.in_c, desc.in_h, desc.in_w],
            "variant": desc.variant,
            "profile": desc.profile.name,
            "has_head": desc.has_head,
            "batch": batch,
            "seed": seed,
        },
        deviations=profile_deviations(desc.profile, variant=desc.variant),
        tolerance=pol.to_dict(),
        notes=list(desc.notes),
    )
    ignored = getattr(ad, "ignored", None)
    if callable(ignored):
        report.notes += [f"not compared: {name} ({why})" if why else f"not compared: {name}" for name, why in ignored()]

    # 2. weights -> spec ---------------------------------------------------------------
    from vitspec.models import ViTClsSpec, ViTSpec

    spec_cls = ViTClsSpec if desc.variant == "cls" else ViTSpec
    params = dict(m.named_parameters())
    try:
        sd_low = ad.to_spec(params)
        sd64 = {k: v.detach().to(device=dev, dtype=torch.float64) for k, v in sd_low.items()}
        spec64 = spec_cls.from_state_dict(cfg, desc.in_c, desc.in_h, desc.in_w, sd64, profile=desc.profile)
    except MappingError as e:
        names = [*e.missing, *e.unexpected, *e.mismatched]
        reason = f"the model's parameters do not map onto the spec bundle: {e}"
        report.status, report.reason = Status.UNSUPPORTED, reason
        report.notes.append("unmapped: " + ", ".join(names) if names else str(e))
        return finish(report)
    except VitSpecError as e:
        report.status, report.reason = Status.UNSUPPORTED, f"the spec cannot express this model: {e}"
        return finish(report)
    spec_lp = None
    if native:
        try:
            sd_lp = {k: v.detach().to(device=dev, dtype=tdtype) for k, v in sd_low.items()}
            spec_lp = spec_cls.from_state_dict(cfg, desc.in_c, desc.in_h, desc.in_w, sd_lp, profile=desc.profile)
        except Exception as e:  # the floor still applies; say so
            report.notes.append(f"spec could not be built in {dtype_name} ({_exc_text(e)}); tolerance = floor only")

    stage_names = list(spec64.stage_names())
    top = [n for n in stage_names if not _SUBOP_RE.match(n)]
    if not desc.has_head and "head" in top:
        top.remove("head")
        report.notes.append("the model has no classification head: compared through the pooled vector")
    groups_total = cfg.num_layers + 5 if grads else 0
    total = 3 + len(top) + (2 + groups_total if grads else 0)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(what, min(done, total), total)

    step("mapped weights onto the spec")

    # 3. inputs ------------------------------------------------------------------------
    gen = torch.Generator().manual_seed(seed)
    x64 = torch.randn((batch, desc.in_c, desc.in_h, desc.in_w), generator=gen, dtype=torch.float64)
    out_dim = cfg.num_classes if desc.has_head else cfg.embed_dim
    cot64 = torch.randn((batch, out_dim), generator=gen, dtype=torch.float64)
    # The reference sees exactly the (rounded) values the model sees.
    x_m = x64.to(device=dev, dtype=tdtype)
    cot_m = cot64.to(device=dev, dtype=tdtype)
    x_ref = x_m.to(torch.float64)
    cot_ref = cot_m.to(torch.float64)

    # 4. model forward (+ autograd), with capture hooks --------------------------------
    points = ad.capture_points()
    m.zero_grad(set_to_none=True)
    for p in params.values():
        p.requires_grad_(grads)
    x_in = x_m.clone().requires_grad_(grads)
    out: Tensor | None = None
    try:
        with capture(points) as cap, torch.set_grad_enabled(grads):
            try:
                out = ad.run(x_in)
            except Exception as e:
                raise _ModelCrashError("the model's forward raised", e) from e
    except _ModelCrashError as c:
        report.status, report.reason = Status.CRASH, str(c)
        report.forward_ok = False
        return finish(report)
    step("model forward")
    for name, err in cap.errors.items():
        report.notes.append(f"capture transform for {name} failed: {err}")
    for name in cap.repeated:
        report.notes.append(f"{name}: module ran {cap.calls[name]} times; the first call was compared")

    # 5. spec forward(s) ---------------------------------------------------------------
    ref_cap: dict[str, Tensor] = {}
    with torch.no_grad():
        ref_out = spec64.forward(x_ref, capture=ref_cap)
    lp_cap: dict[str, Tensor] = {}
    if spec_lp is not None:
        try:
            with torch.no_grad():
                spec_lp.forward(x_m.detach(), capture=lp_cap)
        except Exception as e:
            lp_cap = {}
            report.notes.append(f"spec forward failed in {dtype_name} ({_exc_text(e)}); tolerance = floor only")
    step("spec forward")

    # 6. stages ------------------------------------------------------------------------
    # The model's output is the last stage: logits, or without a head the pooled vector
    # (after an after-pool norm when there is one). It needs no hook.
    if desc.has_head:
        out_stage = "head"
        ref_cap.setdefault("head", ref_out)
    else:
        out_stage = "final_norm" if desc.profile.final_norm == "after_pool" else "pool"
    model_tensors: dict[str, Tensor] = dict(cap.tensors)
    if out_stage not in model_tensors and isinstance(out, Tensor):
        model_tensors[out_stage] = out.detach()
    for name in top:
        why = cap.errors.get(name, "not captured (the adapter has no hook for this stage)")
        report.stages.append(
            _compare_stage(
                name, model_tensors.get(name), ref_cap.get(name), lp_cap.get(name), pol, not_captured_note=why
            )
        )
        step(f"stage {name}")
    nonfinite = any("non-finite" in s.note for s in report.stages)
    failed = [s for s in report.stages if s.ok is False]
    report.forward_ok = not failed
    if failed:
        report.first_divergence = failed[0].name
        _drill_down(report, failed[0].name, desc.profile.norm_placement, model_tensors, ref_cap, lp_cap, pol)
    not_captured = report.not_captured
    if not_captured:
        report.notes.append("not captured (not compared, not passed): " + ", ".join(not_captured))

    # 7. backward ----------------------------------------------------------------------
    if grads and isinstance(out, Tensor):
        try:
            io = _Inputs(x_in=x_in, x_ref=x_ref, x_m=x_m, cot_m=cot_m, cot_ref=cot_ref)
            _backward(report, ad, m, desc, (spec64, spec_lp), io, out, pol, synthetic, step)
        except _ModelCrashError as c:
            report.status, report.reason = Status.CRASH, str(c)
            report.backward_ok = False
            return finish(report)
        nonfinite = nonfinite or any("non-finite" in g.note for g in report.grads)

    # 8. verdict -----------------------------------------------------------------------
    if nonfinite:
        report.status = Status.NONFINITE
        bad = [s.name for s in report.stages if "non-finite" in s.note]
        report.first_divergence = report.first_divergence or (bad[0] if bad else None)
    elif report.forward_ok is False or report.backward_ok is False:
        report.status = Status.MISMATCH
    else:
        report.status = Status.PASS
    return finish(report)


def _drill_down(
    report: Report,
    stage: str,
    norm_placement: str,
    model_t: Mapping[str, Tensor],
    ref_t: Mapping[str, Tensor],
    lp_t: Mapping[str, Tensor],
    pol: Policy,
) -> None:
    """Compare the sub-ops of the first divergent block; record the first that fails."""
    mb = _BLOCK_RE.match(stage)
    if not mb:
        return
    for sub in sub_op_order(norm_placement):
        name = f"{stage}.{sub}"
        report.subops.append(
            _compare_stage(
                name,
                model_t.get(name),
                ref_t.get(name),
                lp_t.get(name),
                pol,
                not_captured_note="not captured (the adapter has no hook for this sub-op)",
            )
        )
    bad = [s.name for s in report.subops if s.ok is False]
    if bad:
        report.first_divergence_subop = bad[0]
    elif all(s.ok for s in report.subops):
        report.notes.append(
            f"{stage}: every sub-op agrees with the spec but the block output does not: "
            "the divergence is in how the block composes them (residual connections)"
        )
    else:
        report.notes.append(f"{stage}: no captured sub-op diverges; uncaptured sub-ops may hide the cause")


def _max_abs(a: Tensor, b: Tensor) -> float:
    d = (a.detach().to(torch.float64) - b.detach().to(device=a.device, dtype=torch.float64)).abs()
    if d.numel() == 0:
        return 0.0
    if not _finite(d):
        return math.nan if bool(torch.isnan(d).any()) else math.inf
    return float(d.max())


@dataclass(frozen=True)
class _Inputs:
    """The seeded input and cotangent: as the model sees them (``_m``; ``x_in`` tracks grad) and in float64."""

    x_in: Tensor
    x_ref: Tensor
    x_m: Tensor
    cot_m: Tensor
    cot_ref: Tensor


def _backward(
    report: Report,
    ad: Any,
    m: nn.Module,
    desc: Any,
    specs: tuple[Any, Any],
    io: _Inputs,
    out: Tensor,
    pol: Policy,
    synthetic: set[str],
    step: Callable[[str], None],
) -> None:
    """Model autograd vs the spec's explicit backward, per library parameter and for the input."""
    spec64, spec_lp = specs
    x_in = io.x_in
    try:
        out.backward(io.cot_m)
    except Exception as e:
        raise _ModelCrashError("the model's backward raised", e) from e
    step("model backward")

    named = dict(m.named_parameters())
    # A parameter autograd never reached (e.g. an unused pooler) has gradient zero.
    lib_grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in named.items()}
    model_g = ad.to_spec(lib_grads)
    model_g["grad_x"] = x_in.grad if x_in.grad is not None else torch.zeros_like(x_in)

    def spec_backward(spec: Any, x: Tensor, cot: Tensor) -> dict[str, Tensor]:
        if desc.has_head:
            g, gx = spec.backward(x, cot, mode="cache")
        else:
            g, gx = spec.backward(x, grad_pooled=cot, mode="cache")
        d = dict(g.to_dict())
        d["grad_x"] = gx
        return d

    ref_g = spec_backward(spec64, io.x_ref, io.cot_ref)
    lp_g: dict[str, Tensor] = {}
    if spec_lp is not None:
        try:
            lp_g = spec_backward(spec_lp, io.x_m.detach(), io.cot_m)
        except Exception as e:
            report.notes.append(f"spec backward failed in {pol.dtype} ({_exc_text(e)}); tolerance = floor only")
    step("spec backward")

    links: list[tuple[str, tuple[str, ...]]] = [
        (lib, tuple(k for k in keys if k not in synthetic)) for lib, keys in ad.links()
    ]
    links = [(lib, keys) for lib, keys in links if keys]
    linked = {k for _, keys in links for k in keys}
    for k in ref_g:
        if k not in linked and k not in synthetic and k != "grad_x" and k in model_g:
            links.append((f"(no library parameter) {k}", (k,)))
    links.append(("input", ("grad_x",)))

    # Group scale: the largest reference gradient entry of the group (normwise per group).
    scale: dict[str, float] = {}
    for _lib, keys in links:
        g = grad_group(keys[0])
        for k in keys:
            if k in ref_g:
                scale[g] = max(scale.get(g, 0.0), float(ref_g[k].detach().abs().max()) if ref_g[k].numel() else 0.0)

    rows: list[GradResult] = []
    for lib, keys in links:
        group = grad_group(keys[0])
        missing = [k for k in keys if k not in ref_g or k not in model_g]
        if missing:
            rows.append(GradResult(lib, list(keys), group, note="no gradient for " + ", ".join(missing)))
            continue
        shape_bad = [k for k in keys if tuple(model_g[k].shape) != tuple(ref_g[k].shape)]
        if shape_bad:
            rows.append(
                GradResult(
                    lib,
                    list(keys),
                    group,
                    math.inf,
                    math.inf,
                    None,
                    False,
                    note="shape mismatch: " + ", ".join(shape_bad),
                )
            )
            continue
        max_abs = max(_max_abs(model_g[k], ref_g[k]) for k in keys)
        s = max(scale.get(group, 0.0), torch.finfo(torch.float64).tiny)
        rel = max_abs / s if math.isfinite(max_abs) else max_abs
        lowp = None
        if lp_g and all(k in lp_g for k in keys):
            lowp = max(_max_abs(lp_g[k], ref_g[k]) for k in keys) / s
        ok, tol = pol.judge(rel, lowp, grad=True)
        note = ""
        if not all(_finite(model_g[k]) for k in keys):
            note = "model gradient is non-finite"
        rows.append(GradResult(lib, list(keys), group, max_abs, rel, tol, ok, lowp, note))

    layers = desc.cfg.num_layers
    rows.sort(key=lambda r: _group_rank(r.group, layers))  # stable: keeps link order within a group
    report.grads = rows
    for group in dict.fromkeys(r.group for r in rows):
        step(f"gradients {group}")
    report.backward_ok = all(r.ok is not False for r in rows)
    failed = [r.group for r in rows if r.ok is False]
    report.first_grad_divergence = failed[0] if failed else None
