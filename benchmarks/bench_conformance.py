"""Issue 13 benchmark: the cost of a full conformance check relative to the model's own training step.

timm ``vit_base_patch16_224`` (random init), batch 2, float64, CPU:

    full ``conformance.check`` (all stages + all gradients)  /  one float64 autograd forward+backward
    target ≤ 2.5, cold

Both ratios come from one run, each measured side by side:

- **cold**: the first call in a fresh process, as a user runs it (``python -c "check(model)"``):
  ``--cold-reps`` rounds of two fresh subprocesses, one timing the check and one timing the
  autograd step, alternating (A B, B A, A B ...) so machine noise and order hit both alike. The model is built
  (and, for the autograd step, cast to float64) before the clock starts; imports are not timed.
- **warm**: both contenders alternating in this process after a warm-up round
  (:func:`_common.interleaved`), with a third beside them: the check with every isolated error
  computed (``check(..., isolate=True)``, ``ratio_isolate``), which a passing float64 check skips.

Times are reported as median and min; the verdict uses the ratio of the cold medians.

    python benchmarks/bench_conformance.py [--model vit_base_patch16_224] [--reps 3] [--cold-reps 3]

Writes benchmarks/results/conformance_<device>.json; docs/benchmarks.md summarises it
(benchmarks/summarize.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, write_result

#: The cold ratio a full check must stay under (issue 13, item 5).
TARGET = 2.5
CONTENDERS = ("check", "autograd_fwd_bwd")
#: Timed warm only, beside the two: the check with every isolated error computed (``isolate=True``).
ISOLATE = "check_isolate"


def _contender(name: str, args: argparse.Namespace, reports: list[Any]) -> Callable[[], None]:
    """One contender, built (model, input, cotangent) but not yet run."""
    import timm

    from conformance import check

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    if name in ("check", ISOLATE):  # the user's model as built (float32); check() copies and casts it
        isolate = name == ISOLATE

        def full_check() -> None:
            r = check(model, device=args.device, dtype=torch.float64, batch=args.batch, seed=0, isolate=isolate)
            reports.append(r)

        return full_check
    ref = model.to(device=args.device, dtype=torch.float64)
    x = torch.randn(args.batch, 3, 224, 224, dtype=torch.float64, device=args.device)
    classes: int = getattr(model, "num_classes")  # noqa: B009 -- typed as a Module attribute otherwise
    gy = torch.randn(args.batch, classes, dtype=torch.float64, device=args.device)
    params = list(ref.parameters())

    def autograd_step() -> None:
        torch.autograd.grad(ref(x), params, gy)

    return autograd_step


def _cold_child(args: argparse.Namespace) -> None:
    """Fresh process: time the first call of one contender; print one JSON line."""
    reports: list[Any] = []
    fn = _contender(args.cold, args, reports)
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "status": str(reports[-1].status) if reports else None}))


def _stats(runs: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs": runs}


def _cold(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    base = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--device", args.device]
    for rep in range(args.cold_reps):
        for name in CONTENDERS if rep % 2 == 0 else CONTENDERS[::-1]:
            cmd = [*base, "--batch", str(args.batch), "--cold", name]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
            print(f"cold {name}: {runs[name][-1]:.1f} s", flush=True)
    return {k: _stats(v) for k, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="warm repetitions of each contender")
    ap.add_argument("--cold-reps", type=int, default=3, help="fresh-process repetitions of each contender")
    ap.add_argument("--cold", choices=CONTENDERS, help=argparse.SUPPRESS)  # internal: one cold child run
    args = ap.parse_args()
    if args.cold:
        _cold_child(args)
        return

    cold = _cold(args)
    reports: list[Any] = []
    fns: dict[str, Callable[[], object]] = {name: _contender(name, args, reports) for name in (*CONTENDERS, ISOLATE)}
    warm = interleaved(fns, reps=args.reps, device=args.device)
    ratio_cold = cold["check"]["median_s"] / cold["autograd_fwd_bwd"]["median_s"]
    ratio_warm = warm["check"]["median_s"] / warm["autograd_fwd_bwd"]["median_s"]
    status = reports[-1].status if reports else None
    ratio_isolate = warm[ISOLATE]["median_s"] / warm["autograd_fwd_bwd"]["median_s"]
    print(f"check / autograd fwd+bwd: cold {ratio_cold:.2f} (target {TARGET}), warm {ratio_warm:.2f}; status {status}")
    print(f"check(isolate=True) / autograd fwd+bwd, warm: {ratio_isolate:.2f}")
    path = write_result(
        f"conformance_{args.device}",
        {
            "model": args.model,
            "batch": args.batch,
            "dtype": "float64",
            "device": args.device,
            "reps": args.reps,
            "cold_reps": args.cold_reps,
            "cold": cold,
            "ratio_cold": ratio_cold,
            "ratio_cold_min": cold["check"]["min_s"] / cold["autograd_fwd_bwd"]["min_s"],
            "times": warm,
            "ratio": ratio_warm,
            "ratio_isolate": ratio_isolate,
            "target": TARGET,
            "target_on": "cold",
            "check_status": str(status),
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
