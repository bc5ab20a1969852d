"""The conformance suite, runnable against any target: ``pytest --vit-target timm:vit_tiny_patch16_224``.

One :func:`conformance.check` run per session (cached on the pytest config, shared by the
collection-time parametrization and the ``conformance_report`` fixture); then one test per
forward stage and one per gradient group, each failing with the Lean definition it violates::

    Lean ViTSpec.forward encoder layer (pre-norm profile) — blocks.3 rel err 2.1e-03 > tol 3.0e-12 (first failing ...)

Without a target every test skips with the reason, so the project's own ``pytest`` run
(which may collect this file) stays green. Options: see :mod:`vitspec.pytest_plugin`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from vitspec.pytest_plugin import get_options

_NO_TARGET = "no conformance target: pass --vit-target TARGET or set VITSPEC_TARGET (e.g. timm:vit_tiny_patch16_224)"


@dataclass
class _Outcome:
    report: Any = None  # conformance.Report
    skip: str = ""  # why the suite cannot run (no target)
    error: str = ""  # why the target could not be checked at all (unknown target, bad options)


_KEY = pytest.StashKey[_Outcome]()


def _outcome(config: pytest.Config) -> _Outcome:
    """Run ``check()`` once per session (at first use) and cache the result on the config."""
    cached = config.stash.get(_KEY, None)
    if cached is not None:
        return cached
    opts = get_options(config)
    if not opts.target:
        out = _Outcome(skip=_NO_TARGET)
    else:
        try:
            out = _Outcome(report=_run(opts))
        except _TargetProblemError as e:
            out = _Outcome(error=str(e))
        if out.report is not None and opts.json:
            out.report.write_json(opts.json)
    config.stash[_KEY] = out
    return out


class _TargetProblemError(Exception):
    """The target cannot be built or checked (reported by ``test_checkable``; the rest skips)."""


def _run(opts: Any) -> Any:
    try:
        from conformance.conversion import build_operand
    except ImportError as e:
        raise _TargetProblemError(f"cannot load conformance.conversion: {e}") from None
    from conformance.compare import check
    from conformance.inputs import weights_and_inputs
    from vitspec.errors import VitSpecError

    try:  # a target string, or a file vitspec convert -o wrote
        model = build_operand(opts.target, seed=opts.seed)
    except VitSpecError as e:  # an unknown or unbuildable target, an unreadable converted file
        raise _TargetProblemError(f"--vit-target {opts.target}: {e}") from None
    except ImportError as e:
        raise _TargetProblemError(f"--vit-target {opts.target}: an optional library is missing: {e}") from None
    try:
        inputs, how = weights_and_inputs(model, opts.weights, opts.input)
        report = check(model, device=opts.device, dtype=opts.dtype, batch=opts.batch, seed=opts.seed, inputs=inputs)
    except VitSpecError as e:  # bad options (--vit-device cuda without CUDA, a weights file that does not fit, ...)
        raise _TargetProblemError(f"--vit-* options: {e}") from None
    except SystemExit as e:  # the model's forward or a hook called sys.exit(): a failure, not a silent exit
        raise _TargetProblemError(f"--vit-target {opts.target}: the model called sys.exit({e.code!r})") from None
    except Exception as e:  # what check() could not turn into a status (e.g. a model that cannot be copied)
        raise _TargetProblemError(f"--vit-target {opts.target}: {type(e).__name__}: {e}") from None
    report.description.setdefault("target", opts.target)
    if opts.weights:
        report.description["weights"] = str(opts.weights)
    if how:
        report.description["input"] = how
    return report


# -- Lean definitions each stage / gradient group checks -------------------------------------
def spec_clause(stage: str, report: Any, *, grad: bool = False) -> str:
    """The Lean definition behind a stage or, with ``grad``, behind its gradient group (for failure messages)."""
    prof = report.description.get("profile", "torchlean")
    how = f" ({prof} profile)" if prof != "torchlean" else ""
    placement = "pre-norm" if _pre_norm(report) else "post-norm"
    block = re.fullmatch(r"blocks\.\d+", stage) is not None
    if grad:
        what = {
            "head": "head linear backward (d_head_W, d_head_b)",
            "final_norm": "final norm backward" + how,
            "pos_embed": "pos backward (d_pos = d_tokens; ViTClsSpec: d_clsToken)",
            "patch_embed": "conv2d backward (d_patch_kernel, d_patch_bias)",
            "input": "conv2d backward to the input (grad_x)",
        }.get(stage, f"encoder layer backward ({placement}){how}" if block else stage)
        return f"Lean ViTSpec.backward {what}"
    if stage == "patch_embed":
        return "Lean ViTSpec.forward patch embedding (conv2d, then row-major (T, E) tokens)"
    if stage == "pos_embed":
        return "Lean ViTSpec.forward tokens += pos (ViTClsSpec: clsToken prepended as token 0)" + how
    if block:
        return f"Lean ViTSpec.forward encoder layer ({placement})" + how
    if stage == "final_norm":
        return "profile final norm (a variation point, docs/profiles.md)" + how
    if stage == "pool":
        return "Lean ViTSpec.forward pooling (mean over tokens; ViTClsSpec: token 0)" + how
    if stage == "head":
        return "Lean ViTSpec.forward head (logits = W_head @ pooled + b_head)"
    return f"Lean ViTSpec.forward {stage}"


def _pre_norm(report: Any) -> bool:
    return any(d.startswith("norm placement: pre") for d in report.deviations)


# -- parametrization -----------------------------------------------------------------------
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stage" not in metafunc.fixturenames and "grad_group" not in metafunc.fixturenames:
        return
    out = _outcome(metafunc.config)
    report = out.report
    if "stage" in metafunc.fixturenames:
        names = [s.name for s in report.stages] if report is not None and report.stages else ["-"]
        metafunc.parametrize("stage", names)
    if "grad_group" in metafunc.fixturenames:
        groups = list(report.grad_groups()) if report is not None and report.grads else ["-"]
        metafunc.parametrize("grad_group", groups)


@pytest.fixture(scope="session")
def conformance_report(request: pytest.FixtureRequest) -> Any:
    """The session's :class:`conformance.Report` (skips the test when there is no target)."""
    out = _outcome(request.config)
    if out.report is None:
        pytest.skip(out.skip or f"target not checked: {out.error}")
    return out.report


# -- the tests -----------------------------------------------------------------------------
def test_checkable(request: pytest.FixtureRequest) -> None:
    """The target builds, can be expressed in the spec, and its forward/backward run (not UNSUPPORTED / CRASH)."""
    out = _outcome(request.config)
    if out.error:
        pytest.fail(out.error, pytrace=False)
    r = request.getfixturevalue("conformance_report")
    assert r.status.value not in ("UNSUPPORTED", "CRASH"), f"{r.status.value}: {r.reason}"


def test_stage(conformance_report: Any, stage: str) -> None:
    """One forward stage, in spec order, against the float64 spec."""
    r = conformance_report
    if stage == "-":
        pytest.skip(f"{r.status.value}: no stage was compared ({r.reason or 'see test_checkable'})")
    s = r.stage(stage)
    if not s.captured or s.ok is None:
        pytest.skip(f"{stage}: {s.note or 'not captured'} — not compared (never counted as passed)")
    if not s.failed:  # neither propagated nor isolated (on the model's own inputs of the stage) fails
        return
    cmp = ">" if s.ok is False else "<="
    detail = f"{stage} rel err {s.rel_err:.1e} {cmp} tol {s.tol:.1e}" if s.rel_err is not None else stage
    if s.isolated_ok is False:
        detail += f" (isolated err {s.isolated_err:.1e} > tol {s.isolated_tol:.1e})"
    if s.spec_lowp_err is not None:
        detail += f" (spec in {r.environment.get('dtype')}: {s.spec_lowp_err:.1e})"
    if s.note:
        detail += f"; {s.note}"
    if r.first_divergence == stage:
        detail += " [first divergence"
        detail += f"; first failing sub-op: {r.first_divergence_subop}]" if r.first_divergence_subop else "]"
    pytest.fail(f"{spec_clause(stage, r)} — {detail}", pytrace=False)


def test_grads(conformance_report: Any, grad_group: str) -> None:
    """The gradients of one group (a block, patch/pos, final norm, head, or the input)."""
    r = conformance_report
    if grad_group == "-":
        pytest.skip(f"{r.status.value}: no gradient was compared ({r.reason or 'gradients not run'})")
    rows = r.grad_groups()[grad_group]
    bad = [g for g in rows if g.ok is False]
    if not bad:
        if all(g.ok is None for g in rows):
            pytest.skip(f"{grad_group}: not compared")
        return
    parts = [
        f"{g.library_name} -> {', '.join(g.spec_names)} rel err {g.rel_err:.1e} > tol {g.tol:.1e}"
        if g.rel_err is not None and g.tol is not None
        else f"{g.library_name}: {g.note}"
        for g in bad
    ]
    clause = spec_clause(grad_group, r, grad=True)
    pytest.fail(f"{clause} — gradients of {grad_group}: " + "; ".join(parts), pytrace=False)
