"""``assert_conforms``: silent on a conformant model; on a mutant, an AssertionError that says where and why.

Also the notebook forms of ``Report`` (short repr, Markdown, HTML).
"""

from __future__ import annotations

import re

import pytest
import torch

from conformance import ConformanceError, Report, Status, assert_conforms, build_target

pytestmark = pytest.mark.thirdparty

TINY_TIMM = "timm:vit_tiny_patch16_224?img_size=32&depth=2"


def _model() -> torch.nn.Module:
    model, _ = build_target(TINY_TIMM, seed=0)
    return model


def _failure(model: torch.nn.Module, **kwargs: object) -> ConformanceError:
    with pytest.raises(AssertionError) as info:
        assert_conforms(model, **kwargs)
    assert isinstance(info.value, ConformanceError)
    return info.value


def test_conformant_model_passes_and_returns_the_report() -> None:
    report = assert_conforms(_model(), dtype="float32", grads=False)
    assert isinstance(report, Report) and report.ok


def test_shifted_block_output_fails_naming_the_block() -> None:
    model = _model()
    model.blocks[0].register_forward_hook(lambda _m, _i, out: out + 1.0)
    err = _failure(model)
    lines = str(err).splitlines()
    assert lines[0] == "MISMATCH: timm:vit_tiny_patch16_224 — first divergence at blocks.0"
    start = lines.index("failing stages (forward order):")
    failing = [ln for ln in lines[start + 1 :] if re.match(r"^  \S+: rel err ", ln)]
    assert failing[0].startswith("  blocks.0: rel err ")
    assert "patch_embed" not in " ".join(failing) and "pos_embed" not in " ".join(failing)
    rel, tol = (float(v) for v in re.findall(r"rel err (\S+) > tol (\S+)", failing[0])[0])
    assert rel > tol
    # Every sub-op of blocks.0 is intact: the drill-down blames how the block composes them.
    assert any(ln.startswith("  note: blocks.0: every sub-op agrees") for ln in lines)
    # timm's known variation points from the torchlean spec, on the last line.
    assert lines[-1].startswith("deviations from the spec: ") and "norm placement: pre (spec: post)" in lines[-1]
    assert err.report.status is Status.MISMATCH and err.report.first_divergence == "blocks.0"


def test_doubled_gradient_fails_in_the_backward_with_forward_intact() -> None:
    model = _model()
    # Same value forward, twice the gradient backward through blocks.0's output.
    model.blocks[0].register_forward_hook(lambda _m, _i, out: out + (out - out.detach()))
    err = _failure(model)
    lines = str(err).splitlines()
    assert lines[0] == ("MISMATCH: timm:vit_tiny_patch16_224 — forward conforms; gradients diverge first at blocks.0")
    assert "failing stages (forward order):" not in lines
    start = lines.index("failing gradients (backward order):")
    assert lines[start + 1].startswith("  blocks.0 blocks.0.")
    groups = {ln.split()[0] for ln in lines[start + 1 :] if ln.startswith("  ") and "rel err" in ln}
    assert not groups & {"head", "final_norm", "blocks.1"}
    assert len(lines[start + 1 :]) <= 10 + 2  # shortened: at most 10 rows, "… and N more", deviations


def test_crash_message_carries_the_reason_and_msg_comes_first() -> None:
    model = _model()

    def boom(_m: object, _i: object, _o: object) -> None:
        raise RuntimeError("kaboom in block 1")

    model.blocks[1].register_forward_hook(boom)
    err = _failure(model, msg="my ViT must follow the spec")
    lines = str(err).splitlines()
    assert lines[0] == "my ViT must follow the spec"
    assert lines[1].startswith("CRASH: timm:vit_tiny_patch16_224")
    assert any(ln.startswith("reason: ") and "kaboom in block 1" in ln for ln in lines)


def test_check_arguments_are_passed_through() -> None:
    report = assert_conforms(_model(), batch=3, seed=7, grads=False)
    assert report.description["batch"] == 3 and report.description["seed"] == 7 and not report.grads


def test_report_repr_is_one_short_line() -> None:
    report = Report(
        Status.MISMATCH,
        first_divergence="blocks.3",
        description={"library": "timm", "model_name": "m"},
        elapsed_s=1.25,
    )
    assert repr(report) == "<Report MISMATCH: timm:m — first divergence at blocks.3; 0 stages, 0 gradients, 1.2 s>"
    long = Report(Status.CRASH, reason="x" * 500, description={"library": "timm", "model_name": "m"})
    assert "\n" not in repr(long) and len(repr(long)) < 230


def test_report_notebook_forms() -> None:
    model = _model()
    model.blocks[0].register_forward_hook(lambda _m, _i, out: out + 1.0)
    report = _failure(model).report
    report.notes.append("a <tag> & more")
    assert report._repr_markdown_() == report.to_markdown()
    html = report._repr_html_()
    assert "MISMATCH: timm:vit_tiny_patch16_224 — first divergence at blocks.0" in html
    assert re.search(r"<tr><td>blocks\.0</td><td>[^<]+</td><td>[^<]+</td><td>FAIL</td></tr>", html)
    assert re.search(r"<tr><td>patch_embed</td><td>[^<]+</td><td>[^<]+</td><td>ok</td></tr>", html)
    assert "a &lt;tag&gt; &amp; more" in html and "<tag>" not in html
