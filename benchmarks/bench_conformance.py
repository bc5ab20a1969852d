"""Issue 5 benchmark: the cost of a full conformance check relative to the model's own training step.

timm ``vit_base_patch16_224`` (random init), batch 2, float64, CPU, side by side in one run:

    full ``conformance.check`` (all stages + all gradients)  /  one float64 autograd forward+backward
    target ≤ 4

    python benchmarks/bench_conformance.py [--model vit_base_patch16_224] [--reps 3]

Writes benchmarks/results/conformance_<device>.json; docs/benchmarks.md summarises it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, write_result


def main() -> None:
    import timm

    from conformance import check

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    ref = model.to(device=args.device, dtype=torch.float64)
    x = torch.randn(args.batch, 3, 224, 224, dtype=torch.float64, device=args.device)
    params = [p for p in ref.parameters()]
    gy = torch.randn(args.batch, ref.num_classes, dtype=torch.float64, device=args.device)
    reports = []

    def full_check() -> None:
        reports.append(check(model, device=args.device, dtype=torch.float64, batch=args.batch, seed=0, grads=True))

    def autograd_step() -> None:
        y = ref(x)
        torch.autograd.grad(y, params, gy)

    t = interleaved({"check": full_check, "autograd_fwd_bwd": autograd_step}, reps=args.reps, device=args.device)
    ratio = t["check"]["median_s"] / t["autograd_fwd_bwd"]["median_s"]
    status = reports[-1].status if reports else None
    print(f"check / autograd fwd+bwd = {ratio:.2f} (target 4); check status {status}")
    path = write_result(
        f"conformance_{args.device}",
        {
            "model": args.model,
            "batch": args.batch,
            "dtype": "float64",
            "device": args.device,
            "times": t,
            "ratio": ratio,
            "target": 4.0,
            "check_status": str(status),
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
