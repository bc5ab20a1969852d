"""scripts/device_check.sh: fails fast without CUDA; its --smoke run exercises the whole pipeline on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"
#: What the device tool brings back from $OUT: at most 8 files, named in letters, digits, '.', '_', '-'.
MAX_FILES, NAME = 8, re.compile(r"^[A-Za-z0-9._-]+$")


def _run(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != "DEVICE_CHECK_ALLOW_CPU"}
    full = {**inherited, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA path cannot be taken")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path: Path) -> None:
    proc = _run(tmp_path=tmp_path)
    assert proc.returncode == 3
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("device_check: no CUDA device (torch.cuda.is_available() is False)")
    assert "--smoke" in lines[0] and "docs/devices.md" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was started


def test_unknown_argument_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proc = _run("--fast", tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "device_check: unknown argument --fast (use --smoke or --help)"


def test_help_describes_the_outputs(tmp_path: Path) -> None:
    proc = _run("--help", tmp_path=tmp_path)
    assert proc.returncode == 0
    for name in ("devices_section.md", "tests.xml", "matrix.json", "spec_cuda.json", "spec_cuda_bfloat16.json"):
        assert name in proc.stdout


@pytest.mark.slow
def test_smoke_run_produces_every_result_file(tmp_path: Path) -> None:
    # Two device tests instead of the suite; the matrix and both benchmarks as the GPU run has them.
    proc = _run(tmp_path=tmp_path, DEVICE_CHECK_ALLOW_CPU="1")
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert proc.returncode in (0, 1), proc.stderr
    assert len(files) <= MAX_FILES and all(NAME.match(f) for f in files) and all((out / f).is_file() for f in files)
    expected = {"device_check.log", "devices_section.md", "tests.xml", "matrix.json", "matrix.md"}
    assert expected | {"spec_cpu_quick.json", "spec_cpu_bfloat16_quick.json", "device_check.tar.gz"} == set(files)

    section = (out / "devices_section.md").read_text()
    for step in ("tests", "matrix", "bench_float32", "bench_bfloat16"):
        assert re.search(rf"^\| {step} \| \d+", section, re.M), step
    counts = re.search(r"^(\d+) tests: (\d+) passed, 0 failed, 0 errors", section, re.M)
    assert counts and int(counts.group(2)) >= 1
    assert "| vit_pytorch | ViT pool=cls | cpu | bfloat16 |" in section

    rows = json.loads((out / "matrix.json").read_text())["rows"]
    assert {(r["device"], r["dtype"]) for r in rows} == {("cpu", "float32"), ("cpu", "bfloat16")}
    spec = json.loads((out / "spec_cpu_bfloat16_quick.json").read_text())
    assert spec["dtype"] == "bfloat16" and spec["device"] == "cpu" and "machine" in spec
    with tarfile.open(out / "device_check.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.startswith("./matrix/reports/") and n.endswith(".json") for n in names)


def _device_section() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_section", ROOT / "scripts" / "device_section.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_section_says_what_ran_failed_or_is_missing(tmp_path: Path) -> None:
    (tmp_path / "steps.tsv").write_text("tests\t124\t200\nmatrix\t0\t61\n")
    (tmp_path / "environment.txt").write_text("mode: cuda\ngpu NVIDIA H200\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="12.5">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    bench = tmp_path / "bench"
    bench.mkdir()
    result = {"config": "ViT-B/16 224x224", "batch": 64, "dtype": "bfloat16", "device": "cuda"}
    result["forward_checks_on_vs_off"] = {"ratio": 1.0123, "target": 1.03}
    (bench / "spec_cuda_bfloat16.json").write_text(json.dumps(result))

    text = _device_section().section(tmp_path, smoke=False)
    lines = text.splitlines()
    assert lines[0].endswith("— NVIDIA H200")
    assert "| tests | 124 (time limit) | 200 |" in lines and "| matrix | 0 | 61 |" in lines
    assert "3 tests: 1 passed, 1 failed, 0 errors, 1 skipped, in 12 s." in lines
    assert "- failed: `tests.test_a::test_bad`" in lines
    assert "No matrix: see device_check.log." in lines  # nothing was written: said, not skipped
    row = "| spec_cuda_bfloat16.json | ViT-B/16 224x224 | 64 | bfloat16 | forward_checks_on_vs_off | 1.012 | ≤ 1.03 |"
    assert row in lines
    assert "Smoke run" not in text


def test_section_without_junit_says_the_step_did_not_finish(tmp_path: Path) -> None:
    (tmp_path / "steps.tsv").write_text("tests\t137\t215\n")
    (tmp_path / "environment.txt").write_text("mode: smoke\n")
    text = _device_section().section(tmp_path, smoke=True)
    assert "No JUnit report (FileNotFoundError): the step did not finish" in text
    assert "No bench_spec.py results" in text and "Smoke run of scripts/device_check.sh" in text
