"""Shared benchmark plumbing: interleaved timing, peak-RSS measurement, result files.

Timings are taken side by side in one process, alternating the contenders
(A B, B A, A B ...) so machine noise and order hit both alike, and reported as medians and as
the ratio of medians. Peak memory on the CPU is the process's peak resident set
(VmHWM) above the resident set just before the measured call, each contender in
a fresh subprocess with a fixed mmap threshold so freed tensors go back to the OS
(otherwise glibc keeps them and later peaks hide inside old pages).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vitspec._env import machine_info
from vitspec._fs import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], *, reps: int, warmup: int = 1, device: str = "cpu") -> dict:
    """Median seconds per contender, measured alternately ``reps`` times after ``warmup`` rounds.

    The order reverses every round (A B, B A, A B, ...): whatever running first or second does to a
    contender (caches warmed or evicted by the other, the allocator's state) falls on each alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
            _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for rep in range(reps):
        for k, f in order if rep % 2 == 0 else order[::-1]:
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "runs": v} for k, v in times.items()}


def _status_kb(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else -1


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0); returns the current RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def peak_kb() -> int:
    return _status_kb("VmHWM")


def run_subprocess(args: list[str]) -> dict:
    """Run ``python <args>`` with a fixed mmap threshold; the child prints one JSON line last."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_result(name: str, payload: dict, *, directory: Path = RESULTS) -> Path:
    path = directory / f"{name}.json"
    return atomic_write_text(path, json.dumps({"machine": machine_info(), **payload}, indent=2, default=str))
