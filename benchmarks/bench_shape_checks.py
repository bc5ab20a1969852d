"""Per-call cost of the named-dimension shape checks (:mod:`vitspec.dims`).

For a few checked primitives on small tensors (where fixed per-call costs dominate,
i.e. the worst case for the checks), times three ways of calling the same op:

- ``raw``: the undecorated function (``fn.__wrapped__``), the floor;
- ``off``: the checked function with ``shape_checks(False)``: one flag test + the call;
- ``on``: the checked function with checks on (``pos_add`` additionally runs under
  ``bind_dims``, so its tokens/embed_dim are held to the config's formulas).

Repetitions are interleaved (every rep times every (op, mode) pair in a shuffled
order) so drift on a shared machine hits all modes alike; each figure is the median
over repetitions of the mean per-call time in one timed loop.

Usage::

    .venv/bin/python benchmarks/bench_shape_checks.py            # writes benchmarks/results/shape_checks.json
    .venv/bin/python benchmarks/bench_shape_checks.py --quick    # a smoke run (fewer, shorter reps)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

import vitspec
from vitspec import Dims, ViTConfig, bind_dims, shape_checks
from vitspec import primitives as P
from vitspec._env import machine_info
from vitspec._fs import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "shape_checks.json"
MODES = ("raw", "off", "on")


def _cases() -> dict[str, tuple[Callable[..., Any], tuple[Any, ...], Dims | None, str]]:
    """op name -> (checked function, arguments, dims to bind or None, description)."""
    g = torch.Generator().manual_seed(0)
    t, e = 16, 32
    x = torch.randn(t, e, generator=g)
    cfg = ViTConfig(patch_h=4, patch_w=4, stride=4, padding=0, embed_dim=e, hidden_dim=64, head_count=4, num_layers=1)
    dims = Dims.from_config(cfg, 3, 16, 16)  # 4*4 = 16 tokens
    return {
        "linear": (
            P.linear,
            (x, torch.randn(e, e, generator=g), torch.randn(e, generator=g)),
            None,
            f"x ({t}, {e}) @ W ({e}, {e}) + b",
        ),
        "layer_norm": (
            P.layer_norm,
            (x, torch.ones(e), torch.zeros(e), 1e-6),
            None,
            f"x ({t}, {e}), gamma/beta ({e},)",
        ),
        "pos_add": (
            P.pos_add,
            (x, torch.randn(t, e, generator=g)),
            dims,
            f"tokens ({t}, {e}) + pos ({t}, {e}) under bind_dims",
        ),
    }


def _time_loop(fn: Callable[..., Any], args: tuple[Any, ...], n: int) -> float:
    """Mean seconds per call over ``n`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter() - start) / n


@contextmanager
def _mode(mode: str, dims: Dims | None) -> Iterator[None]:
    """The switch state for ``mode``, with ``dims`` bound as a model would bind them (not for raw)."""
    with ExitStack() as stack:
        if mode != "raw":
            stack.enter_context(shape_checks(mode == "on"))
            if dims is not None:
                stack.enter_context(bind_dims(dims))
        yield


def run(reps: int, target_s: float, seed: int = 0) -> dict[str, Any]:
    cases = _cases()
    # (op, mode) -> (callable, args, dims, calls per timed loop)
    plan: dict[tuple[str, str], tuple[Callable[..., Any], tuple[Any, ...], Dims | None, int]] = {}
    for name, (fn, args, dims, _) in cases.items():
        for mode in MODES:
            call = fn.__wrapped__ if mode == "raw" else fn  # type: ignore[attr-defined]
            with _mode(mode, dims):
                for _ in range(3):  # warm up (jaxtyping/beartype caches, allocator)
                    _time_loop(call, args, 50)
                per_call = _time_loop(call, args, 200)
            plan[(name, mode)] = (call, args, dims, max(20, int(target_s / max(per_call, 1e-9))))

    samples: dict[tuple[str, str], list[float]] = {k: [] for k in plan}
    rng = random.Random(seed)
    order = list(plan)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one loop would charge one mode for everyone's garbage
    try:
        for _ in range(reps):
            rng.shuffle(order)
            for key in order:
                call, args, dims, n = plan[key]
                with _mode(key[1], dims):
                    samples[key].append(_time_loop(call, args, n))
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()

    results: dict[str, Any] = {}
    for name, (_, _, dims, desc) in cases.items():
        med = {m: statistics.median(samples[(name, m)]) * 1e6 for m in MODES}
        # The fastest rep is the least disturbed by other jobs on a shared machine.
        low = {m: min(samples[(name, m)]) * 1e6 for m in MODES}
        results[name] = {
            "description": desc,
            "dims_bound": dims is not None,
            "calls_per_rep": {m: plan[(name, m)][3] for m in MODES},
            "median_us": {m: round(med[m], 3) for m in MODES},
            "min_us": {m: round(low[m], 3) for m in MODES},
            "ratio_on_over_raw": round(med["on"] / med["raw"], 2),
            "ratio_off_over_raw": round(med["off"] / med["raw"], 3),
            "off_overhead_us": round(med["off"] - med["raw"], 3),
            "on_overhead_us": round(med["on"] - med["raw"], 3),
            "min_ratio_on_over_raw": round(low["on"] / low["raw"], 2),
            "min_ratio_off_over_raw": round(low["off"] / low["raw"], 3),
            "min_off_overhead_us": round(low["off"] - low["raw"], 3),
        }
    return results


def table(results: dict[str, Any]) -> str:
    cols = f"{'raw µs':>9} {'off µs':>9} {'on µs':>9} {'off/raw':>8} {'on/raw':>7} {'off-raw µs':>11}"
    head = f"{'op':<11} {'stat':<6} {cols}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        for stat, key, prefix in (("median", "median_us", ""), ("min", "min_us", "min_")):
            m = r[key]
            lines.append(
                f"{name:<11} {stat:<6} {m['raw']:>9.2f} {m['off']:>9.2f} {m['on']:>9.2f} "
                f"{r[prefix + 'ratio_off_over_raw']:>8.3f} {r[prefix + 'ratio_on_over_raw']:>7.1f} "
                f"{r[prefix + 'off_overhead_us']:>11.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=31, help="interleaved repetitions (median over them)")
    ap.add_argument("--target-ms", type=float, default=20.0, help="length of one timed loop")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 reps of 5 ms, results not written")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: tiny ops, less noise)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    reps, target = (5, 0.005) if a.quick else (a.reps, a.target_ms / 1e3)
    if not vitspec.shape_checks_enabled():
        raise SystemExit("VITSPEC_SHAPE_CHECKS turned checks off at import; unset it to benchmark")
    results = run(reps, target)
    print(table(results))
    if a.quick:
        return
    doc = {
        "benchmark": "shape_checks",
        "machine": machine_info(),
        "settings": {
            "reps": reps,
            "target_loop_ms": target * 1e3,
            "modes": list(MODES),
            "statistics": ["median", "min"],
        },
        "results": results,
    }
    atomic_write_text(a.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
