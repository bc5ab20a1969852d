"""Conformance matrix: ``check()`` over real configurations of every supported library.

    python -m conformance.matrix --library all --device cpu --dtypes float64,float32 --out build/matrix

Runs each (model, dtype) on one device and merges the results into ``OUT/matrix.json`` and
``OUT/matrix.md`` (library × model × device × dtype → status, first divergence, largest
errors), keyed by (target, device, dtype): running the CPU and the CUDA halves separately
(e.g. from two nox sessions) fills one table. Every report is also kept as
``OUT/reports/<library>-<model>-<device>-<dtype>.json``. ``--device cuda`` without a CUDA
device prints why and exits 0 without touching ``OUT`` (the CPU half stays valid).

Exit status: 0 when every run passed (or the device was skipped), 1 when any did not,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitspec.argtypes import OneLineParser, positive_int, seed_int

__all__ = ["CONFIGS", "MatrixRow", "load_rows", "main", "merge_rows", "render_markdown", "run_matrix"]

MATRIX_SCHEMA = 1
_DTYPES = ("float64", "float32", "bfloat16", "float16")

#: library -> [(model label, target string for conformance.targets.build_target)]
CONFIGS: dict[str, list[tuple[str, str]]] = {
    "timm": [
        ("vit_tiny_patch16_224 (token)", "timm:vit_tiny_patch16_224"),
        ("vit_tiny_patch16_224 (avg)", "timm:vit_tiny_patch16_224?global_pool=avg"),
        ("vit_small_patch16_224 (token)", "timm:vit_small_patch16_224"),
        ("vit_small_patch16_224 (avg)", "timm:vit_small_patch16_224?global_pool=avg"),
        ("vit_base_patch16_224 (token)", "timm:vit_base_patch16_224"),
        ("vit_base_patch16_224 (avg)", "timm:vit_base_patch16_224?global_pool=avg"),
    ],
    "torchvision": [("vit_b_16", "torchvision:vit_b_16"), ("vit_b_32", "torchvision:vit_b_32")],
    "hf": [
        ("ViTForImageClassification (default config)", "hf:default"),
        ("ViTModel (default config)", "hf:model"),
    ],
    "vit_pytorch": [("ViT pool=cls", "vit_pytorch:cls"), ("ViT pool=mean", "vit_pytorch:mean")],
}


@dataclass
class MatrixRow:
    """One (model, device, dtype) result."""

    library: str
    model: str
    target: str
    device: str
    dtype: str
    status: str
    first_divergence: str | None = None
    first_divergence_subop: str | None = None
    first_grad_divergence: str | None = None
    max_stage_err: float | None = None
    stage_tol: float | None = None  # the tolerance of the worst stage (err/tol is the headroom)
    max_grad_err: float | None = None
    grad_tol: float | None = None
    reason: str = ""
    elapsed_s: float = 0.0
    device_name: str = ""
    torch: str = ""
    date: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target, self.device, self.dtype)


def _json_float(v: float | None) -> Any:
    if v is None or (v == v and abs(v) != float("inf")):
        return v
    return str(v)


def _worst(items: Sequence[Any]) -> tuple[float | None, float | None]:
    """(error, tol) of the item with the largest err/tol."""
    best: tuple[float, float | None, float | None] | None = None
    for it in items:
        if it.rel_err is None:
            continue
        q = it.rel_err / it.tol if it.tol else float("inf")
        if q != q:  # nan
            q = float("inf")
        if best is None or q > best[0]:
            best = (q, it.rel_err, it.tol)
    return (best[1], best[2]) if best else (None, None)


def row_from_report(library: str, model: str, target: str, device: str, dtype: str, report: Any) -> MatrixRow:
    se, st = _worst(report.stages)
    ge, gt = _worst(report.grads)
    env = report.environment
    return MatrixRow(
        library=library,
        model=model,
        target=target,
        device=device,
        dtype=dtype,
        status=report.status.value,
        first_divergence=report.first_divergence,
        first_divergence_subop=report.first_divergence_subop,
        first_grad_divergence=report.first_grad_divergence,
        max_stage_err=se,
        stage_tol=st,
        max_grad_err=ge,
        grad_tol=gt,
        reason=(report.reason or "").splitlines()[0] if report.reason else "",
        elapsed_s=round(report.elapsed_s, 2),
        device_name=str(env.get("device_name", "")),
        torch=str(env.get("torch", "")),
        date=str(env.get("date", "")),
    )


def _slug(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts)


def run_matrix(
    libraries: Sequence[str],
    device: str,
    dtypes: Sequence[str],
    out: Path,
    *,
    only: str | None = None,
    batch: int = 2,
    seed: int = 0,
    grads: bool = True,
    log: Any = None,
) -> list[MatrixRow]:
    """Run every selected configuration; write per-run reports under ``out/reports``; return the rows."""
    from .compare import check, environment
    from .report import atomic_write_text
    from .targets import TargetError, build_target

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows: list[MatrixRow] = []
    for lib in libraries:
        for label, target in CONFIGS[lib]:
            if only and only not in target and only not in label:
                continue
            try:
                model, _ = build_target(target, seed=seed)
            except (TargetError, ImportError) as e:
                for dt in dtypes:
                    env = environment(device, dt)
                    rows.append(
                        MatrixRow(
                            lib,
                            label,
                            target,
                            device,
                            dt,
                            "SKIPPED",
                            reason=str(e).splitlines()[0],
                            device_name=str(env["device_name"]),
                            torch=str(env["torch"]),
                            date=str(env["date"]),
                        )
                    )
                log(f"{target}: skipped ({e})")
                continue
            for dt in dtypes:
                t0 = time.perf_counter()
                # A survey records every error, the isolated ones of passing float64 rows too.
                report = check(model, device=device, dtype=dt, batch=batch, seed=seed, grads=grads, isolate=True)
                report.description.setdefault("target", target)
                atomic_write_text(out / "reports" / f"{_slug(lib, label, device, dt)}.json", report.to_json() + "\n")
                row = row_from_report(lib, label, target, device, dt, report)
                rows.append(row)
                log(
                    f"{target} [{device}/{dt}]: {row.status} in {time.perf_counter() - t0:.1f}s"
                    + (f" (first divergence {row.first_divergence})" if row.first_divergence else "")
                )
            del model
    return rows


def load_rows(path: Path) -> list[MatrixRow]:
    """Rows of an existing ``matrix.json`` (empty when absent; a corrupt file is an error)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != MATRIX_SCHEMA:
        raise ValueError(f"{path}: matrix schema {data.get('schema')!r} is not {MATRIX_SCHEMA}")
    names = set(MatrixRow.__dataclass_fields__)
    rows = []
    for r in data.get("rows", []):
        kw = {k: v for k, v in r.items() if k in names}
        for f in ("max_stage_err", "stage_tol", "max_grad_err", "grad_tol"):
            if isinstance(kw.get(f), str):
                kw[f] = float(kw[f])
        rows.append(MatrixRow(**kw))
    return rows


def merge_rows(old: Sequence[MatrixRow], new: Sequence[MatrixRow]) -> list[MatrixRow]:
    """``old`` updated by ``new`` (same (target, device, dtype) replaced), sorted for a stable table."""
    merged = {r.key: r for r in old}
    merged.update({r.key: r for r in new})
    lib_order = {lib: i for i, lib in enumerate(CONFIGS)}
    dtype_order = {d: i for i, d in enumerate(_DTYPES)}
    return sorted(
        merged.values(),
        key=lambda r: (lib_order.get(r.library, 99), r.model, r.device, dtype_order.get(r.dtype, 99), r.target),
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def render_markdown(rows: Sequence[MatrixRow]) -> str:
    lines = [
        "# Conformance matrix",
        "",
        "Generated by `python -m conformance.matrix`; errors are normwise relative (docs/tolerance.md),",
        "shown for the stage / gradient closest to its tolerance.",
        "",
        "| library | model | device | dtype | status | first divergence | stage err (tol) | grad err (tol) | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = r.first_divergence or ""
        if r.first_divergence_subop:
            first += f" ({r.first_divergence_subop})"
        if not first and r.first_grad_divergence:
            first = f"grads {r.first_grad_divergence}"
        if not first and r.reason:
            first = r.reason[:80]
        lines.append(
            f"| {r.library} | {r.model} | {r.device} | {r.dtype} | {r.status} | {first.replace('|', '/')} | "
            f"{_fmt(r.max_stage_err)} ({_fmt(r.stage_tol)}) | {_fmt(r.max_grad_err)} ({_fmt(r.grad_tol)}) | "
            f"{r.elapsed_s:.1f}s |"
        )
    devices = sorted({f"{r.device}: {r.device_name}" for r in rows if r.device_name})
    torch_v = sorted({r.torch for r in rows if r.torch})
    lines += ["", f"devices: {'; '.join(devices) or '-'}; torch {', '.join(torch_v) or '-'}", ""]
    return "\n".join(lines)


def write_matrix(out: Path, rows: Sequence[MatrixRow]) -> list[MatrixRow]:
    """Merge ``rows`` into ``out/matrix.json`` and rewrite ``out/matrix.md`` (both atomically)."""
    from .report import atomic_write_text

    merged = merge_rows(load_rows(out / "matrix.json"), rows)
    doc = {
        "schema": MATRIX_SCHEMA,
        "rows": [{k: _json_float(v) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in merged],
    }
    atomic_write_text(out / "matrix.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "matrix.md", render_markdown(merged))
    return merged


def _dtypes(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in _DTYPES]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"dtypes must be a comma list of {', '.join(_DTYPES)}; got {text!r}")
    return list(dict.fromkeys(items))


def _out_dir(text: str) -> Path:
    """An output directory that can be created/written, checked while parsing (before any model runs)."""
    from vitspec._fs import UnwritableError, check_writable

    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    try:
        check_writable(path / "matrix.json")
    except UnwritableError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def _version() -> str:
    from vitspec import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m conformance.matrix", description=__doc__.split("\n\n")[0])
    p.add_argument("--library", choices=(*CONFIGS, "all"), default="all", help="which library (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: cpu)")
    p.add_argument("--dtypes", type=_dtypes, default=["float64"], help="comma list (default: float64)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--out", required=True, type=_out_dir, help="output directory (matrix.json, matrix.md, reports/)")
    p.add_argument("--only", default=None, metavar="SUBSTR", help="only configurations whose target contains SUBSTR")
    p.add_argument("--batch", type=positive_int, default=2, help="batch size (default: 2)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed (default: 0)")
    p.add_argument("--no-grads", dest="grads", action="store_false", help="forward only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from vitspec._fs import safe_streams

    safe_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    if args.batch <= 0:
        print("error: --batch must be > 0", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "conformance.matrix: cuda skipped: no CUDA device available (torch.cuda.is_available() is False); "
            f"{args.out} left unchanged",
            file=sys.stderr,
        )
        return 0
    libraries = list(CONFIGS) if args.library == "all" else [args.library]
    rows = run_matrix(
        libraries,
        args.device,
        args.dtypes,
        args.out,
        only=args.only,
        batch=args.batch,
        seed=args.seed,
        grads=args.grads,
    )
    if not rows:
        print(f"error: no configuration matches --only {args.only!r}", file=sys.stderr)
        return 2
    write_matrix(args.out, rows)
    print(f"wrote {args.out / 'matrix.json'} and {args.out / 'matrix.md'} ({len(rows)} new rows)")
    return 0 if all(r.status in ("PASS", "SKIPPED") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
