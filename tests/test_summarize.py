"""benchmarks/summarize.py: result files -> the generated blocks of docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"
_spec = importlib.util.spec_from_file_location("bench_summarize", _PATH)
assert _spec is not None and _spec.loader is not None
summarize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summarize)

MACHINE = {"date": "2026-01-02T03:04:05+00:00", "python": "3.11.7", "torch": "2.14.1", "cpu_count": 2}


def _times(median: float) -> dict[str, float]:
    return {"median_s": median, "min_s": median * 0.9}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    r = tmp_path / "results"
    r.mkdir()
    spec = {
        "machine": {**MACHINE, "torch_threads": 2, "loadavg_1m": 1.5},
        "config": "ViT-S/16 224x224",
        "batch": 8,
        "dtype": "float32",
        "device": "cpu",
        "reps": 5,
        "explicit_backward_vs_autograd": {
            "times": {"explicit": _times(1.0), "autograd": _times(1.0)},
            "ratio": 1.0,
            "target": 1.05,
        },
        "recompute_vs_cache_peak_memory": {
            "peak_bytes": {"cache": 2**30, "recompute": 2**29},
            "ratio": 0.5,
            "target": 0.5,
        },
        "spec_timm_profile_vs_timm_forward": {
            "times": {"spec_timm_profile": _times(3.0), "timm": _times(2.0)},
            "ratio": 1.5,
            "target": 1.05,
            "max_abs_logit_diff": 1.5e-6,
            "timm_fused_attn": True,
        },
    }
    (r / "spec_cpu.json").write_text(json.dumps(spec))
    (r / "spec_cpu_quick.json").write_text(json.dumps({**spec, "config": "QUICK"}))
    train = {
        "test_accuracy": 0.931,
        "train_accuracy": 1.0,
        "final_loss": 0.0082,
        "epochs": 40,
        "seconds": 100.0,
        "config": {"epochs": 40, "patch": 2, "embed_dim": 48, "threads": 2},
        "machine": MACHINE,
    }
    (r / "train_digits.json").write_text(json.dumps(train))
    return r


def test_spec_block_has_machine_targets_and_verdicts(results: Path) -> None:
    text = summarize.render_spec(results)
    assert "QUICK" not in text, "--quick runs are not the recorded figures"
    assert "2 CPUs" in text and "1-minute load average 1.5" in text and "2026-01-02T03:04:05+00:00" in text
    assert "| 1.000 | 1.000 | ≤ 1.05 | PASS |" in text
    assert "| 512.0 MiB | 1024.0 MiB | 0.500 | – | ≤ 0.5 | PASS |" in text  # the target is inclusive
    assert "| 1.500 | 1.500 | ≤ 1.05 | MISS |" in text
    assert "| forward, shape checks on / off | – | – | – | – | – | not run |" in text
    assert "max |logit difference| 1.5e-06" in text


def test_missing_results_name_the_command(results: Path) -> None:
    text = summarize.render_conformance(results)
    assert "No results yet" in text and "benchmarks/bench_conformance.py" in text


def test_train_block(results: Path) -> None:
    text = summarize.render_train(results)
    assert "| test accuracy | 93.1% | ≥ 90% | PASS |" in text
    assert "| wall time, 40 epochs | 100.0 s | ≤ 120 s | PASS |" in text
    assert "load average not recorded" in text


def test_update_rewrites_only_between_markers_and_is_idempotent(results: Path, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# B\n\nprose stays\n\n<!-- BEGIN GENERATED: train -->\nstale\n<!-- END GENERATED: train -->\n\ntail stays\n"
    )
    assert summarize.main(["--doc", str(doc), "--results", str(results), "--check"]) == 1
    assert summarize.main(["--doc", str(doc), "--results", str(results)]) == 0
    text = doc.read_text()
    assert "stale" not in text and "prose stays" in text and "tail stays" in text and "93.1%" in text
    assert summarize.main(["--doc", str(doc), "--results", str(results), "--check"]) == 0


def test_unknown_block_is_refused(tmp_path: Path, results: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->\n")
    with pytest.raises(SystemExit, match="unknown generated block 'nope'"):
        summarize.main(["--doc", str(doc), "--results", str(results)])


def test_the_real_page_has_every_block() -> None:
    _, found = summarize.update(summarize.DOC.read_text(encoding="utf-8"))
    assert sorted(found) == sorted(summarize.RENDERERS)
