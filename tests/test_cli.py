"""The command lines (``python -m conformance``, ``vitspec conform``, ``python -m conformance.matrix``)
and the pytest suite (``pytest --vit-target``), end to end on tiny targets."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from conformance import cli
from conformance.report import Report
from vitspec import cli as vcli

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.thirdparty
pytest.importorskip("timm")

TINY = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2&embed_dim=32&num_heads=4&mlp_ratio=2&num_classes=5"

FACTORIES = """
import torch
from timm.models.vision_transformer import VisionTransformer

def _tiny():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)

def eps_mutant():
    m = _tiny()
    m.blocks[0].norm2.eps = 1e-5   # the profile (read from block 0 norm1) says 1e-6
    return m

def crashing():
    m = _tiny()
    def boom(*_):
        raise RuntimeError("boom")
    m.blocks[1].register_forward_hook(boom)
    return m
"""


@pytest.fixture
def factories(tmp_path: Path) -> Path:
    p = tmp_path / "vit_factories.py"
    p.write_text(FACTORIES)
    return p


def _run(capsys: pytest.CaptureFixture[str], argv: list[str], *, vitspec: bool = False) -> tuple[int, str, str]:
    code = vcli.main(["conform", *argv]) if vitspec else cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- python -m conformance --------------------------------------------------------------------
def test_pass_writes_every_report_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    j, md, png = tmp_path / "r.json", tmp_path / "out" / "r.md", tmp_path / "r.png"
    code, out, err = _run(capsys, [TINY, "--json", str(j), "--markdown", str(md), "--plot", str(png)])
    assert code == 0, out + err
    assert out.startswith("PASS: timm:") and "blocks.1" in out and "grad input" in out
    r = Report.from_json(j.read_text())
    assert r.ok and r.description["target"] == TINY
    assert md.read_text().startswith("# Conformance report: PASS")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_mismatch_exits_1_with_first_divergence(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, _ = _run(capsys, [f"{factories}:eps_mutant", "--no-grads"])
    assert code == 1
    assert "MISMATCH" in out and "first divergence at blocks.0 (sub-op blocks.0.norm2)" in out
    assert "FAIL" in out and "patch_embed" in out  # the table


def test_crash_exits_1(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, out, _ = _run(capsys, [f"{factories}:crashing", "--quiet"])
    assert code == 1 and out.startswith("CRASH") and "RuntimeError: boom" in out


def test_quiet_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, [TINY, "--quiet", "--no-grads", "--dtype", "float32", "--batch", "1"])
    assert code == 0 and out.count("\n") == 1 and out.startswith("PASS") and err == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["timm:no_such_vit"], "unknown timm model"),
        (["no-colon-target"], "unknown target"),
        ([TINY, "--batch", "0"], "must be > 0"),
        ([TINY, "--batch", "x"], "positive integer"),
        ([TINY, "--seed", "-1"], "must be between 0 and 2**63 - 1"),
        ([TINY, "--dtype", "int8"], "invalid choice"),
        ([TINY, "--device", "tpu"], "invalid choice"),
        ([TINY, "--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = _run(capsys, argv)
    assert code == 2
    assert needle in err and "Traceback" not in err + out


def test_unsupported_exits_3_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # global_pool='' (the head sees every token) has no spec pooling (register tokens are a variation point now)
    target = f"{TINY.split('?')[0]}?img_size=32&patch_size=8&depth=1&embed_dim=32&num_heads=4&global_pool=''"
    code, out, err = _run(capsys, [target])
    assert code == 3, err
    assert err.startswith("UNSUPPORTED:") and "global_pool=''" in err and err.count("\n") == 1 and out == ""


def test_plot_to_a_directory_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, [TINY, "--plot", str(tmp_path)])
    assert code == 2 and "is a directory" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_missing_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, [TINY, "--device", "cuda"])
    assert code == 2 and "no CUDA device" in err


def test_default_target_is_the_registry_default() -> None:
    from conformance.targets import DEFAULT_TARGET

    assert cli._default_target() == DEFAULT_TARGET
    assert cli.build_parser().parse_args([]).target is None  # resolved at run time


def test_module_entry_point_runs() -> None:
    # `python -m conformance` (the __main__ module) in a fresh interpreter; a cheap usage error.
    p = subprocess.run(
        [sys.executable, "-m", "conformance", "--batch", "0"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2 and "--batch" in p.stderr and "Traceback" not in p.stderr


# -- vitspec conform == python -m conformance ----------------------------------------------------
@pytest.mark.parametrize("argv", [["--quiet", "--no-grads"], ["--no-grads", "--batch", "1", "--seed", "2"]])
def test_vitspec_conform_is_identical(capsys: pytest.CaptureFixture[str], factories: Path, argv: list[str]) -> None:
    target = f"{factories}:eps_mutant"
    a = _run(capsys, [target, *argv])
    b = _run(capsys, [target, *argv], vitspec=True)
    assert a == b and a[0] == 1


def test_vitspec_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert vcli.main([]) == 2
    assert "conform" in capsys.readouterr().err
    assert vcli.main(["--help"]) == 0
    assert "check a third-party ViT" in capsys.readouterr().out
    assert vcli.main(["conform", "--help"]) == 0
    assert "--no-grads" in capsys.readouterr().out
    assert vcli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert vcli.main(["conform", "timm:nope"]) == 2


def test_vitspec_registry_is_extensible(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    mod = types.ModuleType("vitspec_test_hello")
    mod.add_arguments = lambda p: p.add_argument("--name", default="world")  # type: ignore[attr-defined]
    mod.run = lambda args: print(f"hello {args.name}") or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vitspec_test_hello", mod)
    monkeypatch.setattr(vcli, "COMMANDS", dict(vcli.COMMANDS))
    vcli.register("hello", "say hello", "vitspec_test_hello")
    assert vcli.main(["hello", "--name", "vit"]) == 7
    assert capsys.readouterr().out == "hello vit\n"
    # Only the chosen command's module is imported: a broken one does not break the others.
    vcli.register("broken", "missing module", "vitspec_no_such_module_xyz")
    assert vcli.main(["hello"]) == 7
    assert vcli.main(["broken"]) == 2
    assert "cannot load command 'broken'" in capsys.readouterr().err


# -- python -m conformance.matrix ------------------------------------------------------------------
def test_matrix_runs_and_merges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import matrix

    assert (
        matrix.main(
            ["--library", "vit_pytorch", "--only", "mean", "--dtypes", "float64", "--no-grads", "--out", str(tmp_path)]
        )
        == 0
    )
    assert (
        matrix.main(
            [
                "--library",
                "vit_pytorch",
                "--only",
                "mean",
                "--dtypes",
                "float64,float32",
                "--out",
                str(tmp_path),
                "--batch",
                "1",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "matrix.json").read_text())
    rows = [(r["target"], r["device"], r["dtype"], r["status"]) for r in data["rows"]]
    assert rows == [("vit_pytorch:mean", "cpu", "float64", "PASS"), ("vit_pytorch:mean", "cpu", "float32", "PASS")]
    assert data["rows"][0]["max_grad_err"] is not None  # replaced by the second (with-gradients) run
    md = (tmp_path / "matrix.md").read_text()
    assert "| vit_pytorch | ViT pool=mean | cpu | float32 | PASS |" in md
    assert len(list((tmp_path / "reports").glob("*.json"))) == 2
    assert matrix.main(["--library", "vit_pytorch", "--only", "nothing-matches", "--out", str(tmp_path)]) == 2
    assert matrix.main(["--dtypes", "float8", "--out", str(tmp_path)]) == 2
    capsys.readouterr()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_matrix_skips_cuda_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import matrix

    assert matrix.main(["--device", "cuda", "--out", str(tmp_path / "m")]) == 0
    assert "cuda skipped" in capsys.readouterr().err and not (tmp_path / "m").exists()


# -- the pytest suite ------------------------------------------------------------------------------
SUITE = str(Path(__file__).resolve().parents[1] / "conformance" / "suite")


def test_suite_skips_without_target(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITSPEC_TARGET", raising=False)
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", "-rs")
    res.assert_outcomes(skipped=3)
    res.stdout.fnmatch_lines(["*no conformance target: pass --vit-target*"])


def test_suite_passes_for_a_conformant_target(pytester: pytest.Pytester, tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", f"--vit-target={TINY}", f"--vit-json={out}")
    # test_checkable + one test per stage + one per gradient group (7 of them), all passed
    report = Report.from_json(out.read_text())
    res.assert_outcomes(passed=1 + len(report.stages) + 7)
    assert report.ok


def test_suite_fails_with_spec_clauses_and_honours_xfails(
    pytester: pytest.Pytester, factories: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITSPEC_TARGET", f"{factories}:eps_mutant")  # the env var names the target too
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider")
    outcomes = res.parseoutcomes()
    assert outcomes["failed"] >= 4 and outcomes["passed"] >= 3
    text = res.stdout.str()
    assert (
        "Lean ViTSpec.forward encoder layer (pre-norm) (timm profile) — blocks.0 rel err 9.9e-05 > tol 1.2e-12 " in text
    )
    assert "[first divergence; first failing sub-op: blocks.0.norm2]" in text
    assert "Lean ViTSpec.backward encoder layer backward (pre-norm) (timm profile) — gradients of blocks.1: " in text
    assert (
        "Lean ViTSpec.backward conv2d backward to the input (grad_x) — gradients of input: input -> grad_x rel err"
        in text
    )
    reports = res.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    failed = [r.nodeid.split("::", 1)[1] for r in reports if r.failed]
    xf = tmp_path / "xfails.txt"
    xf.write_text("# known deviations of this mutant\n" + "\n".join(failed) + "\n")
    res2 = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", f"--vit-xfails={xf}")
    res2.assert_outcomes(passed=outcomes["passed"], xfailed=outcomes["failed"])


def test_suite_unknown_target_fails_one_test_with_the_reason(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", "--vit-target=timm:no_such_vit")
    res.assert_outcomes(failed=1, skipped=2)
    assert "--vit-target timm:no_such_vit: unknown timm model 'no_such_vit'" in res.stdout.str()
    assert "Traceback" not in res.stdout.str()


def test_plugin_options_do_not_disturb_a_normal_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert pytester.runpytest_inprocess("--vit-xfails=/no/such/file").ret == pytest.ExitCode.USAGE_ERROR
