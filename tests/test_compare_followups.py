"""Follow-ups of the ``check()`` rework: grad modes, meta models, the spec revision, vacuous gradient
checks, a forward that escapes the model copy, one spec forward per check.

Tiny models keep each check well under a second.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from conformance import check
from conformance.report import Report, Status
from vitspec.errors import ConfigError
from vitspec.models.vit import ViTBase
from vitspec.revisions import DEFAULT_REVISION

pytestmark = pytest.mark.thirdparty
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def tiny(**kw: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)
    return VisionTransformer(**{**args, **kw})


def tiny_tv() -> nn.Module:
    """A freshly built torchvision ViT: its classifier weight is exactly zero."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
    assert not m.heads.head.weight.any()
    return m


# -- grad modes and the meta device -----------------------------------------------------------
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_check_under_inference_mode_or_no_grad_passes_with_gradients(mode: Any) -> None:
    with mode():
        r = check(tiny())
    assert r.status is Status.PASS, r.reason
    assert r.backward_ok is True and r.grads and all(g.ok for g in r.grads)


def test_meta_device_model_is_unsupported_with_one_line() -> None:
    with torch.device("meta"):
        m = tiny(depth=1)
    r = check(m)
    assert r.status is Status.UNSUPPORTED and r.exit_code == 3
    assert "meta device" in r.reason and "\n" not in r.reason


# -- the spec revision ------------------------------------------------------------------------
def test_report_names_the_default_revision_in_json_and_markdown() -> None:
    r = check(tiny(), grads=False)
    assert r.spec_revision == f"torchlean@{DEFAULT_REVISION}"
    assert Report.from_json(r.to_json()).spec_revision == r.spec_revision
    assert f"revision `torchlean@{DEFAULT_REVISION}`" in r.to_markdown()


def test_deviations_are_relative_to_the_chosen_revision() -> None:
    latest = check(tiny(), grads=False)
    old = check(tiny(), grads=False, spec_revision="411682f")
    assert old.spec_revision == "torchlean@411682f"
    # timm splits heads by reshape-then-swap, like b2a2184 but unlike 411682f's direct reshape
    assert not any(d.startswith("head split") for d in latest.deviations)
    assert "head split: reshape_swap (spec: direct_reshape)" in old.deviations
    # a library profile keeps its own numerics: the same verdict and errors against either revision
    assert old.status is latest.status is Status.PASS
    assert [s.rel_err for s in old.stages] == [s.rel_err for s in latest.stages]


def test_unknown_revision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown spec revision"):
        check(tiny(), spec_revision="nosuch")


# -- vacuous gradient checks ------------------------------------------------------------------
def test_zero_head_seeds_the_trunk_so_its_gradients_are_compared() -> None:
    r = check(tiny_tv())
    assert r.status is Status.PASS, r.reason
    assert any("head weight is exactly zero" in n for n in r.notes)
    trunk = [g for g in r.grads if g.group.startswith("blocks.") or g.group in ("patch_embed", "input")]
    assert trunk and all(g.ok is True and g.max_abs_err is not None for g in trunk)
    assert not any("vacuous" in g.note for g in r.grads)


def test_a_trunk_gradient_bug_behind_a_zero_head_is_found() -> None:
    m = tiny_tv()
    # The block's gradient reaching the patch embedding is 1 % off; behind a zero head every gradient
    # upstream of the head would be zero on both sides and the bug invisible.
    m.encoder.layers[0].register_full_backward_hook(lambda _m, gi, _go: tuple(g * 1.01 for g in gi))
    r = check(m)
    assert r.status is Status.MISMATCH and r.forward_ok is True and r.backward_ok is False
    assert r.first_grad_divergence in ("pos_embed", "patch_embed", "input")


def test_an_unseedable_zero_head_marks_the_trunk_not_compared_never_passed() -> None:
    from conformance.adapters.torchvision import TorchvisionAdapter

    class NoPool(TorchvisionAdapter):  # no capture point for the head input: the trunk cannot be seeded
        def stage_paths(self) -> Any:
            return {k: v for k, v in super().stage_paths().items() if k != "pool"}

    r = check(tiny_tv(), adapter=NoPool)
    vacuous = [g for g in r.grads if g.ok is None and "vacuous" in g.note]
    assert vacuous and all(g.group != "head" for g in vacuous)
    assert any("could not be seeded" in n for n in r.notes)
    assert any(n.startswith("not compared (vacuous)") for n in r.notes)
    assert not any(g.ok is True for g in vacuous)


# -- a forward that escapes the model copy ----------------------------------------------------
def _closure_model() -> nn.Module:
    m = tiny()
    orig = m.forward
    m.forward = lambda x: orig(x) + 1  # type: ignore[method-assign]
    return m


def test_closure_forward_in_float64_is_a_crash_saying_it_escapes_the_copy() -> None:
    r = check(_closure_model())
    assert r.status is Status.CRASH
    assert "escapes the model copy" in r.reason and "--dtype" in r.reason and "\n" not in r.reason


def test_closure_forward_in_the_models_dtype_is_never_a_pass() -> None:
    r = check(_closure_model(), dtype="float32")
    assert r.status is Status.UNSUPPORTED and "escapes the model copy" in r.reason


# -- cost: one spec forward, the caller's model untouched ---------------------------------------
def test_the_spec_forward_runs_once_per_check(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("forward", "forward_with_cache", "backward"):
        orig = getattr(ViTBase, name)

        def spy(self: Any, *a: Any, _orig: Any = orig, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(ViTBase, name, spy)
    r = check(tiny())
    assert r.status is Status.PASS, r.reason
    assert calls == ["forward_with_cache"]


def test_released_model_copy_leaves_the_callers_model_intact() -> None:
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    y = m(x)
    assert check(m).status is Status.PASS
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(m(x), y)


# -- the CLI ----------------------------------------------------------------------------------
TINY = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2&embed_dim=32&num_heads=4&mlp_ratio=2&num_classes=5"


def test_cli_spec_revision_is_in_the_reports(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import cli

    js, md = tmp_path / "r.json", tmp_path / "r.md"
    code = cli.main([TINY, "--spec-revision", "torchlean@411682f", "--json", str(js), "--markdown", str(md), "-q"])
    assert code == 0, capsys.readouterr()
    r = Report.from_json(js.read_text())
    assert r.spec_revision == "torchlean@411682f" and "head split: reshape_swap (spec: direct_reshape)" in r.deviations
    assert "revision `torchlean@411682f`" in md.read_text()


def test_cli_unknown_spec_revision_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import cli

    assert cli.main([TINY, "--spec-revision", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown spec revision" in err and "Traceback" not in err


def test_consume_checks_the_model_itself_and_releases_it() -> None:
    m = tiny()
    r = check(m, consume=True, spec_cache=False)
    assert r.status is Status.PASS, r.reason
    # the model was checked in place (float64) and its weights released: it is not to be used again
    w = m.patch_embed.proj.weight
    assert w.dtype == torch.float64 and w.untyped_storage().nbytes() <= 8


# -- the benchmark summary: cold beside warm --------------------------------------------------
def test_conformance_summary_judges_the_cold_ratio(tmp_path: Any) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"
    spec = importlib.util.spec_from_file_location("bench_summarize_followups", path)
    assert spec is not None and spec.loader is not None
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)

    def t(median: float, low: float) -> dict[str, float]:
        return {"median_s": median, "min_s": low}

    result = {
        "machine": {"date": "2026-01-02T03:04:05+00:00", "python": "3.11.7", "torch": "2.14.1", "cpu_count": 2},
        "model": "vit_base_patch16_224", "batch": 2, "dtype": "float64", "device": "cpu", "reps": 3, "cold_reps": 3,
        "cold": {"check": t(30.0, 25.0), "autograd_fwd_bwd": t(10.0, 9.0)},
        "times": {"check": t(20.0, 19.0), "autograd_fwd_bwd": t(10.0, 9.5)},
        "ratio_cold": 3.0, "ratio_cold_min": 25.0 / 9.0, "ratio": 2.0, "target": 2.5, "check_status": "PASS",
    }  # fmt: skip
    (tmp_path / "conformance_cpu.json").write_text(json.dumps(result))
    text = summarize.render_conformance(tmp_path)
    # the warm ratio (2.0) would pass; the verdict is on the cold one (3.0)
    assert "| 30.0 s (25.0 s) | 10.0 s (9.00 s) | 3.00; 2.78 |" in text and "| ≤ 2.5 | MISS |" in text
    assert "3 cold / 3 warm" in text
