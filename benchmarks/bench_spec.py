"""Issue 4 benchmarks: the executable spec against autograd and against timm.

ViT-S/16 (384/1536/6 heads/12 layers), 224×224, batch 8, float32, one device, side by side
(``--model vit_b16 --batch 64 --dtype bfloat16`` for the CUDA figures):

1. explicit backward (which includes its own forward) / autograd forward+backward   target ≤ 1.05
2. recompute-mode peak memory / cache-mode peak memory                              target ≤ 0.5
   recompute-mode time / cache-mode time                                            target ≤ 1.4
3. forward with shape checks on / off                                              target ≤ 1.03
4. spec forward under the timm profile / timm's own forward, same config and weights target ≤ 1.0

    python benchmarks/bench_spec.py [--device cpu|cuda] [--model vit_s16|vit_b16] [--batch N]
                                    [--dtype float32|bfloat16|float16] [--reps 7] [--quick] [--out DIR]

Writes DIR/spec_<device>[_<dtype>][_quick].json (DIR defaults to benchmarks/results; the dtype
suffix is left out for float32); benchmarks/summarize.py renders them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, interleaved, peak_kb, reset_peak, run_subprocess, write_result

from vitspec import ViTClsSpec, ViTConfig, shape_checks
from vitspec.argtypes import positive_int

VIT_S16 = ViTConfig(16, 16, 16, 0, 384, 1536, 6, 12, 1000)
VIT_B16 = ViTConfig(16, 16, 16, 0, 768, 3072, 12, 12, 1000)
#: --model choices: (spec config, the timm model of the same architecture, label)
MODELS = {
    "vit_s16": (VIT_S16, "vit_small_patch16_224", "ViT-S/16"),
    "vit_b16": (VIT_B16, "vit_base_patch16_224", "ViT-B/16"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUICK_LAYERS, QUICK_BATCH = 4, 2


def _setup(cfg: ViTConfig, batch: int, dtype: torch.dtype, device: str, profile: str = "torchlean"):
    m = ViTClsSpec.init(cfg, 3, 224, 224, seed=0, dtype=dtype, device=device, profile=profile)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 224, 224, generator=g).to(device=device, dtype=dtype)
    gy = torch.randn(batch, cfg.num_classes, generator=g).to(device=device, dtype=dtype)
    return m, x, gy


def explicit_vs_autograd(cfg: ViTConfig, batch: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    m, x, gy = _setup(cfg, batch, dtype, device)
    params = list(m.state_dict().values())

    def explicit() -> None:
        with torch.no_grad():
            m.backward(x, gy, mode="cache")

    def autograd() -> None:
        for p in params:
            p.requires_grad_(True)
        y = m.forward(x)
        torch.autograd.grad(y, params, gy)
        for p in params:
            p.requires_grad_(False)

    t = interleaved({"explicit": explicit, "autograd": autograd}, reps=reps, device=device)
    return {
        "times": t,
        "ratio": t["explicit"]["median_s"] / t["autograd"]["median_s"],
        "ratio_min": t["explicit"]["min_s"] / t["autograd"]["min_s"],
        "target": 1.05,
    }


def recompute_vs_cache_time(cfg: ViTConfig, batch: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    m, x, gy = _setup(cfg, batch, dtype, device)
    t = interleaved(
        {
            "cache": lambda: m.backward(x, gy, mode="cache"),
            "recompute": lambda: m.backward(x, gy, mode="recompute"),
        },
        reps=reps,
        device=device,
    )
    return {
        "times": t,
        "ratio": t["recompute"]["median_s"] / t["cache"]["median_s"],
        "ratio_min": t["recompute"]["min_s"] / t["cache"]["min_s"],
        "target": 1.4,
    }


def _peak_child(mode: str, args: argparse.Namespace) -> None:
    """Runs in a subprocess: peak memory of one backward above the resident set before it."""
    cfg, batch, dtype = _workload(args)
    device = args.device
    m, x, gy = _setup(cfg, batch, dtype, device)
    with torch.no_grad():
        m.backward(x, gy, mode=mode)  # warm-up: lazy initialisation is not part of the peak
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m.backward(x, gy, mode=mode)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = reset_peak()
        m.backward(x, gy, mode=mode)
        peak = (peak_kb() - base) * 1024
    print(json.dumps({"mode": mode, "peak_bytes": peak}))


def recompute_vs_cache_memory(args: argparse.Namespace) -> dict:
    here = str(Path(__file__).resolve())
    same = ["--device", args.device, "--model", args.model, "--dtype", args.dtype]
    same += [*(["--batch", str(args.batch)] if args.batch else []), *(["--quick"] if args.quick else [])]
    res = {mode: run_subprocess([here, "--peak-child", mode, *same]) for mode in ("cache", "recompute")}
    ratio = res["recompute"]["peak_bytes"] / res["cache"]["peak_bytes"]
    return {"peak_bytes": {k: v["peak_bytes"] for k, v in res.items()}, "ratio": ratio, "target": 0.5}


def checks_on_off(cfg: ViTConfig, batch: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    m, x, _ = _setup(cfg, batch, dtype, device)

    def on() -> None:
        with shape_checks(True), torch.no_grad():
            m.forward(x)

    def off() -> None:
        with shape_checks(False), torch.no_grad():
            m.forward(x)

    t = interleaved({"on": on, "off": off}, reps=reps, device=device)
    return {
        "times": t,
        "ratio": t["on"]["median_s"] / t["off"]["median_s"],
        "ratio_min": t["on"]["min_s"] / t["off"]["min_s"],
        "target": 1.03,
    }


def spec_vs_timm(timm_name: str, cfg: ViTConfig, batch: int, dtype: torch.dtype, device: str, reps: int) -> dict:
    import timm

    from conformance.adapters import detect

    torch.manual_seed(0)
    tm = timm.create_model(timm_name, pretrained=False, depth=cfg.num_layers)
    tm = tm.eval().to(device=device, dtype=dtype)
    adapter = detect(tm)
    d = adapter.describe()
    sd = adapter.to_spec({k: v.detach() for k, v in tm.named_parameters()})
    spec = ViTClsSpec.from_state_dict(d.cfg, d.in_c, d.in_h, d.in_w, sd, profile=d.profile)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    with torch.no_grad():
        err = float((spec.forward(x) - tm(x)).abs().max())

    def spec_fwd() -> None:
        with torch.no_grad():
            spec.forward(x)

    def timm_fwd() -> None:
        with torch.no_grad():
            tm(x)

    t = interleaved({"spec_timm_profile": spec_fwd, "timm": timm_fwd}, reps=reps, device=device)
    return {
        "times": t,
        "ratio": t["spec_timm_profile"]["median_s"] / t["timm"]["median_s"],
        "ratio_min": t["spec_timm_profile"]["min_s"] / t["timm"]["min_s"],
        "target": 1.0,
        "max_abs_logit_diff": err,
        "timm_fused_attn": bool(getattr(tm.blocks[0].attn, "fused_attn", False)),
    }


def _workload(args: argparse.Namespace) -> tuple[ViTConfig, int, torch.dtype]:
    """(config, batch, dtype) the flags ask for; ``--quick`` keeps 4 layers and, unless --batch says, batch 2."""
    cfg = MODELS[args.model][0]
    if args.quick:
        return cfg.replace(num_layers=QUICK_LAYERS), args.batch or QUICK_BATCH, DTYPES[args.dtype]
    return cfg, args.batch or 8, DTYPES[args.dtype]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=tuple(MODELS), default="vit_s16", help="architecture (default vit_s16)")
    ap.add_argument("--batch", type=positive_int, default=None, help="batch size (default 8; 2 with --quick)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype of every contender (float32)")
    ap.add_argument("--reps", type=positive_int, default=15, help="interleaved repetitions per contender (default 15)")
    ap.add_argument("--quick", action="store_true", help="4 layers, batch 2: a smoke run, not the recorded figures")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default benchmarks/results)")
    ap.add_argument("--peak-child", choices=("cache", "recompute"), help=argparse.SUPPRESS)
    ap.add_argument("--only", default="", help="comma list of: explicit,recompute,memory,checks,timm")
    return ap


def main() -> None:
    args = _parser().parse_args()
    if args.peak_child:
        _peak_child(args.peak_child, args)
        return
    cfg, batch, dt = _workload(args)
    _, timm_name, label = MODELS[args.model]
    only = set(filter(None, args.only.split(","))) or {"explicit", "recompute", "memory", "checks", "timm"}
    out: dict = {
        "config": f"{label} 224x224" if not args.quick else f"{label} ({QUICK_LAYERS} layers) quick",
        "batch": batch,
        "dtype": args.dtype,
        "device": args.device,
        "reps": args.reps,
    }
    dev, reps = args.device, args.reps
    steps = {
        "explicit": ("explicit_backward_vs_autograd", lambda: explicit_vs_autograd(cfg, batch, dt, dev, reps)),
        "recompute": ("recompute_vs_cache_time", lambda: recompute_vs_cache_time(cfg, batch, dt, dev, reps)),
        "memory": ("recompute_vs_cache_peak_memory", lambda: recompute_vs_cache_memory(args)),
        "checks": ("forward_checks_on_vs_off", lambda: checks_on_off(cfg, batch, dt, dev, reps)),
        "timm": ("spec_timm_profile_vs_timm_forward", lambda: spec_vs_timm(timm_name, cfg, batch, dt, dev, reps)),
    }
    for key, (name, fn) in steps.items():
        if key in only:
            r = fn()
            out[name] = r
            extra = f", min-ratio {r['ratio_min']:.3f}" if "ratio_min" in r else ""
            print(f"{name:40s} ratio {r['ratio']:.3f} (target {r['target']}){extra}", flush=True)
    name = f"spec_{args.device}" + ("" if args.dtype == "float32" else f"_{args.dtype}") + ("_quick" * args.quick)
    if args.only:
        # A partial rerun updates its rows and keeps the others' recorded figures.
        previous = args.out / f"{name}.json"
        if previous.exists():
            old = json.loads(previous.read_text())
            old.pop("machine", None)
            out = {**old, **out}
    print("wrote", write_result(name, out, directory=args.out))


if __name__ == "__main__":
    main()
