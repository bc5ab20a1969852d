"""The conformance Report on synthetic data: JSON round trip, Markdown, plot, atomic writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conformance.report import (
    SCHEMA_VERSION,
    GradResult,
    Report,
    StageResult,
    Status,
    atomic_write_text,
    format_err,
)


def _report(status: Status = Status.MISMATCH) -> Report:
    stages = [
        StageResult("patch_embed", 0.0, 0.0, 1e-12, True, shape=[2, 16, 32]),
        StageResult("pos_embed", None, None, None, None, captured=False, note="not captured"),
        StageResult("blocks.0", 1e-16, 2e-16, 1e-12, True, isolated_err=1e-16, isolated_tol=1e-12, isolated_ok=True),
        StageResult(
            "blocks.1",
            3e-3,
            2.1e-3,
            1e-12,
            False,
            isolated_err=2e-3,
            isolated_tol=1e-12,
            isolated_ok=False,
            source="blocks.2 (input)",
        ),
        StageResult("head", math.inf, math.inf, 1e-12, False, note="model produced non-finite values"),
        StageResult(
            "output",
            1e-9,
            1e-9,
            5e-4,
            False,
            isolated_err=0.0,
            isolated_tol=5e-4,
            isolated_ok=True,
            precision="float32",
        ),
    ]
    subops = [
        StageResult("blocks.1.norm1", 0.0, 0.0, 1e-12, True),
        StageResult("blocks.1.attn", 1e-3, 1e-3, 1e-12, False),
    ]
    grads = [
        GradResult("head.weight", ["head_W"], "head", 1e-17, 1e-16, 4e-12, True),
        GradResult(
            "blocks.1.attn.qkv.weight", ["encoder.1.mha.Wq", "encoder.1.mha.Wk"], "blocks.1", 1.0, 0.5, 4e-12, False
        ),
        GradResult("input", ["grad_x"], "input", math.nan, math.nan, 4e-12, False, note="model gradient is non-finite"),
    ]
    return Report(
        status,
        forward_ok=False,
        backward_ok=False,
        first_divergence="blocks.1",
        first_divergence_subop="blocks.1.attn",
        first_grad_divergence="blocks.1",
        stages=stages,
        subops=subops,
        grads=grads,
        deviations=["norm placement: pre (spec: post)", "LayerNorm eps: 1e-05 (spec: 1e-06)"],
        description={"library": "timm", "model_name": "tiny", "cfg": {"embed_dim": 32}, "input_size": [3, 32, 32]},
        tolerance={"dtype": "float64", "fwd_tol64": 1e-12},
        notes=["not captured (not compared, not passed): pos_embed"],
        environment={"python": "3.11", "torch": "2.x"},
        elapsed_s=1.25,
    )


def test_json_round_trip_is_exact_and_stable() -> None:
    r = _report()
    text = r.to_json()
    back = Report.from_json(text)
    # nan != nan, so compare the serialized forms (which encode nan/inf as strings) ...
    assert back.to_json() == text
    # ... and the fields that carry no nan directly.
    assert back.stages[:4] == r.stages[:4] and back.stages[5] == r.stages[5] and back.subops == r.subops
    assert back.status is Status.MISMATCH and back.first_divergence_subop == "blocks.1.attn"
    assert math.isinf(back.stages[4].rel_err) and math.isnan(back.grads[2].rel_err)
    assert back.stages[3].isolated_ok is False and back.stages[3].source == "blocks.2 (input)"
    assert back.stages[5].precision == "float32" and back.stages[5].isolated_err == 0.0
    # Valid strict JSON (no NaN/Infinity literals), stable across calls.
    data = json.loads(text)
    assert data["schema"] == SCHEMA_VERSION and data["ok"] is False and data["status"] == "MISMATCH"
    assert r.to_json() == text


def test_from_json_refuses_other_schema() -> None:
    d = _report().to_dict()
    d["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema"):
        Report.from_dict(d)


@pytest.mark.parametrize(
    ("status", "code"),
    [(Status.PASS, 0), (Status.MISMATCH, 1), (Status.NONFINITE, 1), (Status.CRASH, 1), (Status.UNSUPPORTED, 3)],
)
def test_ok_and_exit_code(status: Status, code: int) -> None:
    r = Report(status)
    assert r.ok is (status is Status.PASS)
    assert r.exit_code == code
    assert Report.from_json(r.to_json()).status is status


def test_lookup_helpers() -> None:
    r = _report()
    assert r.stage("blocks.1.attn").ok is False
    assert r.not_captured == ["pos_embed"]
    assert list(r.grad_groups()) == ["head", "blocks.1", "input"]
    with pytest.raises(KeyError):
        r.stage("nope")


def test_markdown_has_headline_deviations_tables_and_notes() -> None:
    md = _report().to_markdown()
    assert md.startswith("# Conformance report: MISMATCH")
    assert "first divergence at blocks.1 (sub-op blocks.1.attn)" in md
    assert "- norm placement: pre (spec: post)" in md
    assert "| stage | max abs err | propagated err | tol | isolated err | isolated tol | result |" in md
    assert "| blocks.1 | 3.0e-03 | 2.1e-03 | 1.0e-12 | 2.0e-03 | 1.0e-12 | **FAIL** (from blocks.2 (input)) |" in md
    assert "| pos_embed | - | - | - | - | - | not captured |" in md
    # Right on its own input, wrong downstream of a divergence: the propagated error alone fails.
    assert "| output | 1.0e-09 | 1.0e-09 | 5.0e-04 | 0.0e+00 | 5.0e-04 | **FAIL** (propagated only) (float32" in md
    assert "### Drill-down of blocks.1" in md
    assert "| blocks.1 | blocks.1.attn.qkv.weight | encoder.1.mha.Wq, encoder.1.mha.Wk |" in md
    assert "## Notes" in md and "## Environment" in md


def test_markdown_native_column_and_pass_headline() -> None:
    r = Report(Status.PASS, stages=[StageResult("head", 1e-4, 1e-4, 4e-4, True, spec_lowp_err=1e-4)])
    md = r.to_markdown()
    assert "spec low-prec err" in md and "PASS" in md
    assert "- none: the model follows the spec's own numerics" in md


def test_headline_for_backward_only_and_unsupported() -> None:
    r = Report(Status.MISMATCH, forward_ok=True, first_grad_divergence="blocks.0")
    assert "gradients diverge first at blocks.0" in r.headline()
    u = Report(Status.UNSUPPORTED, reason="register tokens\nmore")
    assert u.headline().endswith("register tokens")


def test_format_err() -> None:
    assert format_err(None) == "-"
    assert format_err(2.1e-3) == "2.1e-03"
    assert format_err(math.inf) == "inf"


def test_writes_are_atomic_and_complete(tmp_path: Path) -> None:
    r = _report()
    p = r.write_json(tmp_path / "sub" / "r.json")
    assert Report.from_json(p.read_text()).to_json() == r.to_json()
    md = r.write_markdown(tmp_path / "r.md")
    assert md.read_text() == r.to_markdown()
    assert oct(os.stat(p).st_mode & 0o777) == oct(0o644)
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == ["r.json", "r.md"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "r.json"
    dest.write_text("old")

    class BoomError(RuntimeError):
        pass

    from conformance import report as rep

    def bad_write(_f: object) -> None:
        raise BoomError

    with pytest.raises(BoomError):
        rep._atomic_write(dest, bad_write)
    assert dest.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]
    atomic_write_text(dest, "new")
    assert dest.read_text() == "new"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = _report().plot(tmp_path / "plot.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # Also for a report without gradients or errors at all.
    Report(Status.UNSUPPORTED).plot(tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["empty.png", "plot.png"]
