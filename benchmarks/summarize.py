"""Render every benchmark result file into docs/benchmarks.md, so the page shows the measured numbers.

Each section of docs/benchmarks.md that shows numbers has a generated block::

    <!-- BEGIN GENERATED: spec -->
    ... replaced by this script ...
    <!-- END GENERATED: spec -->

and this script rewrites the text between the markers from ``benchmarks/results/*.json``:

==================  ========================================  =====================================
block               result files                              written by
==================  ========================================  =====================================
``shape_checks``    ``shape_checks.json``                     ``benchmarks/bench_shape_checks.py``
``spec``            ``spec_<device>.json`` (not ``*_quick``)  ``benchmarks/bench_spec.py``
``conformance``     ``conformance_<device>.json``             ``benchmarks/bench_conformance.py``
``train``           ``train_digits.json``                     ``vitspec train --json ...``
==================  ========================================  =====================================

A block whose files do not exist says so and names the command that produces them. Every
table carries the run's date and machine, and each targeted ratio its target and PASS/MISS.

    .venv/bin/python benchmarks/summarize.py            # rewrite docs/benchmarks.md
    .venv/bin/python benchmarks/summarize.py --check    # exit 1 if the page is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

_BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<end><!-- END GENERATED: (?P=name) -->)",
    re.S,
)


# -- formatting -----------------------------------------------------------------------------------
def _sig(v: float, digits: int = 3) -> str:
    """``digits`` significant figures, trailing zeros kept (``2.10``, ``94.1``)."""
    s = f"{v:#.{digits}g}"
    return s[:-1] if s.endswith(".") else s


def _seconds(v: float) -> str:
    return f"{_sig(v)} s" if v >= 0.1 else f"{_sig(v * 1e3)} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _verdict(ratio: float, target: float, *, at_most: bool = True) -> str:
    ok = ratio <= target if at_most else ratio >= target
    return "PASS" if ok else "MISS"


def _machine(m: dict[str, Any]) -> str:
    """One sentence: CPUs, processor, GPU, Python, torch, threads, load, date."""
    parts = [f"{m.get('cpu_count', '?')} CPUs ({m.get('processor') or 'unknown processor'})"]
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    parts.append(f"Python {m.get('python', '?')}")
    parts.append(f"torch {m.get('torch', '?')}")
    if "torch_threads" in m:
        parts.append(f"{m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}")
    if m.get("loadavg_1m") is not None:
        parts.append(f"1-minute load average {m['loadavg_1m']}")
    else:
        parts.append("load average not recorded")
    date = str(m.get("date", "date not recorded"))
    return f"**Machine.** {', '.join(parts)}; run on {date}."


def _missing(files: str, command: str) -> str:
    return f"_No results yet: `benchmarks/results/{files}` does not exist. Produce it with `{command}`._\n"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return f"benchmarks/results/{path.name}"


# -- blocks ---------------------------------------------------------------------------------------
def render_shape_checks(results: Path = RESULTS) -> str:
    path = results / "shape_checks.json"
    if not path.exists():
        return _missing("shape_checks.json", ".venv/bin/python benchmarks/bench_shape_checks.py")
    d = _load(path)
    s = d.get("settings", {})
    lines = [
        f"From `{_rel(path)}`. " + _machine(d["machine"]),
        "",
        f"Settings: {s.get('reps', '?')} interleaved repetitions of a ~{s.get('target_loop_ms', '?'):g} ms loop "
        "per (op, mode); figures are medians over the repetitions of the mean per-call time.",
        "",
        "| op | `raw` µs | `off` µs | `on` µs | `off`/`raw` | `on`/`raw` | `off` − `raw` µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in d["results"].items():
        m = r["median_us"]
        desc = r.get("description", "")
        label = f"`{name}` {desc}".strip()
        if r.get("dims_bound") and "bind_dims" not in desc:
            label += " under `bind_dims`"
        lines.append(
            f"| {label} | {_sig(m['raw'])} | {_sig(m['off'])} | {_sig(m['on'])} | "
            f"{r['ratio_off_over_raw']:.2f} | {_sig(r['ratio_on_over_raw'])} | {r['off_overhead_us']:.2f} |"
        )
    res = d["results"].values()
    off_min = [r["min_off_overhead_us"] for r in res if "min_off_overhead_us" in r]
    on_min = [r["min_ratio_on_over_raw"] for r in res if "min_ratio_on_over_raw" in r]
    if off_min and on_min:
        lines += [
            "",
            "The fastest repetition of each pair, the one least disturbed by other jobs: "
            f"`off` − `raw` is {min(off_min):.2f} to {max(off_min):.2f} µs, "
            f"and `on`/`raw` is {_sig(min(on_min))} to {_sig(max(on_min))}.",
        ]
    return "\n".join(lines) + "\n"


#: bench_spec.py result keys: (label, contender A, contender B, kind)
_SPEC_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("explicit_backward_vs_autograd", "explicit backward (with its forward) / autograd forward+backward",
     "explicit", "autograd", "time"),
    ("recompute_vs_cache_time", "backward time, `mode=\"recompute\"` / `mode=\"cache\"`", "recompute", "cache", "time"),
    ("recompute_vs_cache_peak_memory", "backward peak memory, `recompute` / `cache`", "recompute", "cache", "memory"),
    ("forward_checks_on_vs_off", "forward, shape checks on / off", "on", "off", "time"),
    ("spec_timm_profile_vs_timm_forward", "spec forward under the timm profile / timm's own forward",
     "spec_timm_profile", "timm", "time"),
)  # fmt: skip


def _spec_table(d: dict[str, Any]) -> list[str]:
    lines = [
        "| comparison | A | B | A/B (medians) | A/B (fastest runs) | target | result |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, label, a, b, kind in _SPEC_ROWS:
        r = d.get(key)
        if r is None:
            lines.append(f"| {label} | – | – | – | – | – | not run |")
            continue
        target = r["target"]
        if kind == "memory":
            pa, pb = r["peak_bytes"][a], r["peak_bytes"][b]
            va, vb, fastest = _mib(pa), _mib(pb), "–"
        else:
            ta, tb = r["times"][a], r["times"][b]
            va, vb = _seconds(ta["median_s"]), _seconds(tb["median_s"])
            fastest = f"{ta['min_s'] / tb['min_s']:.3f}"
        lines.append(
            f"| {label} | {va} | {vb} | {r['ratio']:.3f} | {fastest} | ≤ {target:g} | {_verdict(r['ratio'], target)} |"
        )
    return lines


def render_spec(results: Path = RESULTS) -> str:
    files = sorted(p for p in results.glob("spec_*.json") if not p.stem.endswith("_quick"))
    if not files:
        return _missing("spec_<device>.json", ".venv/bin/python benchmarks/bench_spec.py --device cpu")
    out: list[str] = []
    for path in files:
        d = _load(path)
        device = d.get("device", path.stem.removeprefix("spec_"))
        out += [
            f"### {device}: {d.get('config', '?')}, batch {d.get('batch', '?')}, {d.get('dtype', '?')}",
            "",
            f"From `{_rel(path)}`. " + _machine(d["machine"]),
            f"Each time is the median of {d.get('reps', '?')} interleaved repetitions (A B, B A, A B, …); "
            "the verdict compares the ratio of medians with the target.",
            "",
            *_spec_table(d),
        ]
        timm = d.get("spec_timm_profile_vs_timm_forward")
        if timm and "max_abs_logit_diff" in timm:
            fused = "fused `F.scaled_dot_product_attention`" if timm.get("timm_fused_attn") else "unfused attention"
            out += [
                "",
                f"Spec vs timm, same weights and input: max |logit difference| {timm['max_abs_logit_diff']:.1e} "
                f"({d.get('dtype', '?')}); timm ran with {fused}.",
            ]
        out.append("")
    return "\n".join(out)


def render_conformance(results: Path = RESULTS) -> str:
    files = sorted(results.glob("conformance_*.json"))
    if not files:
        return _missing("conformance_<device>.json", ".venv/bin/python benchmarks/bench_conformance.py")
    if any("cold" in _load(p) for p in files):
        return _render_conformance_cold(files)
    out = [
        "| device | model | batch | dtype | `check()` | autograd fwd+bwd | ratio (medians) | target | result "
        "| check status |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    machines = []
    for path in files:
        d = _load(path)
        t = d["times"]
        out.append(
            f"| {d.get('device', '?')} | `{d.get('model', '?')}` | {d.get('batch', '?')} | {d.get('dtype', '?')} | "
            f"{_seconds(t['check']['median_s'])} | {_seconds(t['autograd_fwd_bwd']['median_s'])} | "
            f"{d['ratio']:.2f} | ≤ {d['target']:g} | {_verdict(d['ratio'], d['target'])} | "
            f"{d.get('check_status', '?')} |"
        )
        machines.append(f"`{_rel(path)}`: " + _machine(d["machine"]).removeprefix("**Machine.** "))
    out += ["", "**Machines.** " + " ".join(machines), ""]
    return "\n".join(out)


def _median_min(t: dict) -> str:
    return f"{_seconds(t['median_s'])} ({_seconds(t['min_s'])})"


def _render_conformance_cold(files: list[Path]) -> str:
    """Cold (first call in a fresh process) beside warm; the verdict is on the cold ratio of medians."""
    out = [
        "| device | model | batch | dtype | cold `check()` | cold autograd fwd+bwd | cold ratio (medians; mins) "
        "| warm `check()` | warm autograd fwd+bwd | warm ratio | target (cold) | result | check status |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    machines = []
    for path in files:
        d = _load(path)
        c, w = d["cold"], d["times"]
        out.append(
            f"| {d.get('device', '?')} | `{d.get('model', '?')}` | {d.get('batch', '?')} | {d.get('dtype', '?')} | "
            f"{_median_min(c['check'])} | {_median_min(c['autograd_fwd_bwd'])} | "
            f"{d['ratio_cold']:.2f}; {d['ratio_cold_min']:.2f} | "
            f"{_median_min(w['check'])} | {_median_min(w['autograd_fwd_bwd'])} | {d['ratio']:.2f} | "
            f"≤ {d['target']:g} | {_verdict(d['ratio_cold'], d['target'])} | {d.get('check_status', '?')} |"
        )
        machines.append(f"`{_rel(path)}`: " + _machine(d["machine"]).removeprefix("**Machine.** "))
    reps = ", ".join(f"{d.get('cold_reps', '?')} cold / {d.get('reps', '?')} warm" for d in map(_load, files))
    isolate = [
        f"{d.get('device', '?')}: warm `check(isolate=True)` {_median_min(d['times']['check_isolate'])}, "
        f"ratio {d['ratio_isolate']:.2f}"
        for d in map(_load, files)
        if "ratio_isolate" in d
    ]
    out += [
        "",
        f"Times are median (min) over the repetitions ({reps}); cold runs alternate fresh processes (check, "
        "autograd, autograd, check, ...), warm runs alternate in one process after a warm-up round."
        + (
            " Beside them, the check with every isolated error computed (a float64 check far inside its tolerance "
            "skips the blocks'): " + "; ".join(isolate) + "."
            if isolate
            else ""
        ),
        "",
        "**Machines.** " + " ".join(machines),
        "",
    ]
    return "\n".join(out)


#: The digits demo's claims (vitspec.train.TrainConfig docstring, tests/test_train.py).
TRAIN_ACCURACY_TARGET = 0.90
TRAIN_SECONDS_TARGET = 120.0


def render_train(results: Path = RESULTS) -> str:
    path = results / "train_digits.json"
    if not path.exists():
        return _missing("train_digits.json", f".venv/bin/vitspec train --quiet --json {_rel(path)}")
    d = _load(path)
    c = d.get("config", {})
    acc, secs = d["test_accuracy"], d["seconds"]
    lines = [
        f"From `{_rel(path)}`. " + _machine(d.get("machine", {})),
        "",
        "| measure | value | target | result |",
        "|---|---:|---:|---|",
        f"| test accuracy | {acc:.1%} | ≥ {TRAIN_ACCURACY_TARGET:.0%} | "
        f"{_verdict(acc, TRAIN_ACCURACY_TARGET, at_most=False)} |",
        f"| wall time, {d['epochs']} epochs | {secs:.1f} s | ≤ {TRAIN_SECONDS_TARGET:g} s | "
        f"{_verdict(secs, TRAIN_SECONDS_TARGET)} |",
        f"| train accuracy | {d['train_accuracy']:.1%} | – | – |",
        f"| final loss (last epoch's mean) | {d['final_loss']:.4f} | – | – |",
    ]
    if c:
        lines += [
            "",
            f"Model: `ViTClsSpec`, patch {c.get('patch')}, embed {c.get('embed_dim')}, hidden {c.get('hidden_dim')}, "
            f"{c.get('heads')} heads, {c.get('layers')} layers, profile `{c.get('profile')}`. Training: AdamW "
            f"(lr {c.get('lr')}, weight decay {c.get('weight_decay')}, one-cycle schedule), "
            f"batch {c.get('batch_size')}, seed {c.get('seed')}, "
            f"{c.get('test_fraction', 0):.0%} of the 1,797 images held out, {c.get('threads')} torch threads.",
        ]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Path], str]] = {
    "shape_checks": render_shape_checks,
    "spec": render_spec,
    "conformance": render_conformance,
    "train": render_train,
}


def update(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every known generated block re-rendered; also the names of the blocks found."""
    found: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"{DOC}: unknown generated block {name!r} (known: {', '.join(RENDERERS)})")
        found.append(name)
        body = RENDERERS[name](results).rstrip("\n") + "\n"
        return f"{m.group('begin')}{body}{m.group('end')}"

    return _BLOCK.sub(sub, text), found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check: exit 1 if docs/benchmarks.md is out of date")
    ap.add_argument("--doc", type=Path, default=DOC, help="the page to update (default docs/benchmarks.md)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results folder")
    a = ap.parse_args(argv)
    old = a.doc.read_text(encoding="utf-8")
    new, found = update(old, a.results)
    missing = sorted(set(RENDERERS) - set(found))
    if missing:
        print(f"warning: {a.doc} has no generated block for: {', '.join(missing)}", file=sys.stderr)
    if a.check:
        if new != old:
            print(f"{a.doc} is out of date: run benchmarks/summarize.py", file=sys.stderr)
            return 1
        print(f"{a.doc} is up to date ({', '.join(found)})")
        return 0
    if new != old:
        a.doc.write_text(new, encoding="utf-8")
        print(f"updated {a.doc} ({', '.join(found)})")
    else:
        print(f"{a.doc} already up to date ({', '.join(found)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
