"""``python -m conformance [TARGET]`` (== ``vitspec conform [TARGET]``): check one ViT against the spec.

Exit codes: 0 conformant, 1 not conformant (MISMATCH / NONFINITE / CRASH: the first
divergent stage and the stage table are printed), 2 usage error, unknown target or a
model the spec cannot express (one message on stderr, never a traceback).

The module imports nothing heavy at import time, so ``--help`` is instant and the
``vitspec`` command can build its parser cheaply.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from vitspec.argtypes import positive_int, seed_int

if TYPE_CHECKING:
    from .report import Report

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "add_arguments", "build_parser", "main", "render", "run"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_DTYPES = ("float64", "float32", "bfloat16", "float16")
_FALLBACK_DEFAULT_TARGET = "timm:vit_tiny_patch16_224"


class UsageError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 2."""


def _default_target() -> str:
    try:
        from .targets import DEFAULT_TARGET
    except ImportError:
        return _FALLBACK_DEFAULT_TARGET
    return str(DEFAULT_TARGET)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``conform`` arguments (shared by ``python -m conformance`` and ``vitspec conform``)."""
    parser.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="TARGET",
        help=f"model to check, LIBRARY:NAME (default: conformance.targets.DEFAULT_TARGET = {_FALLBACK_DEFAULT_TARGET})",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="float64",
        help="model dtype; the spec reference is always float64 (default: float64)",
    )
    parser.add_argument("--batch", type=positive_int, default=2, metavar="N", help="input batch size (default: 2)")
    parser.add_argument(
        "--seed", type=seed_int, default=0, metavar="N", help="seed for weights, input, cotangent (default: 0)"
    )
    parser.add_argument("--no-grads", dest="grads", action="store_false", help="compare the forward pass only")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the report as Markdown")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of per-stage errors vs tolerance")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the verdict line")


def build_parser(prog: str = "python -m conformance") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check a third-party ViT against TorchLean's ViT spec (forward stages and gradients).",
        epilog="exit status: 0 conformant, 1 not conformant, 2 usage error / unknown target / unsupported model",
    )
    add_arguments(parser)
    return parser


# -- rendering -----------------------------------------------------------------------------
def _stage_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    from .report import format_err

    rows = []
    for s in [*report.stages, *report.subops]:
        verdict = "ok" if s.ok else ("FAIL" if s.ok is False else (s.note or "not compared"))
        lowp = f" (spec {format_err(s.spec_lowp_err)})" if s.spec_lowp_err is not None else ""
        rows.append((s.name, format_err(s.max_abs_err), format_err(s.rel_err) + lowp, format_err(s.tol), verdict))
    for group, gs in report.grad_groups().items():
        errs = [g.rel_err for g in gs if g.rel_err is not None]
        tols = [g.tol for g in gs if g.tol is not None]
        bad = [g.library_name for g in gs if g.ok is False]
        verdict = "ok" if not bad and all(g.ok for g in gs) else ("FAIL: " + ", ".join(bad) if bad else "not compared")
        abs_errs = [g.max_abs_err for g in gs if g.max_abs_err is not None]
        rows.append(
            (
                f"grad {group}",
                format_err(max(abs_errs) if abs_errs else None),
                format_err(max(errs) if errs else None),
                format_err(min(tols) if tols else None),
                verdict,
            )
        )
    return rows


def render(report: Report, *, quiet: bool = False, stream: IO[str] | None = None) -> None:
    """Print the verdict (and, unless ``quiet``, the stage/gradient table) with rich if available."""
    stream = stream or sys.stdout
    headline = report.headline()
    if quiet:
        print(headline, file=stream)
        return
    rows = _stage_rows(report)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _render_plain(report, headline, rows, stream)
        return
    console = Console(file=stream, highlight=False, soft_wrap=True)
    style = "bold green" if report.ok else "bold red"
    console.print(headline, style=style, markup=False)
    if report.deviations:
        console.print("deviations from the spec: " + "; ".join(report.deviations), markup=False)
    if rows:
        table = Table(show_lines=False, header_style="bold")
        for col, just in (("stage", "left"), ("max abs err", "right"), ("rel err", "right"), ("tol", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        table.add_column("result")
        for r in rows:
            res = r[4]
            table.add_row(*r[:4], f"[red]{res}[/red]" if res.startswith("FAIL") else res)
        console.print(table)
    for n in report.notes:
        console.print(f"note: {n}", markup=False)


def _render_plain(report: Report, headline: str, rows: Sequence[tuple[str, ...]], stream: IO[str]) -> None:
    print(headline, file=stream)
    if report.deviations:
        print("deviations from the spec: " + "; ".join(report.deviations), file=stream)
    if rows:
        header = ("stage", "max abs err", "rel err", "tol", "result")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
        for r in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=stream)
    for n in report.notes:
        print(f"note: {n}", file=stream)


def _make_progress(enabled: bool) -> tuple[Callable[[str, int, int], None] | None, Callable[[], None]]:
    """A rich progress bar on stderr when it is a TTY; ``(callback, close)``."""
    if not enabled:
        return None, lambda: None
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        return None, lambda: None
    prog = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True, redirect_stdout=False
    )
    prog.start()
    task = prog.add_task("checking", total=None)

    def cb(step: str, done: int, total: int) -> None:
        prog.update(task, description=step[:40], completed=done, total=total)

    return cb, prog.stop


# -- running ---------------------------------------------------------------------------------
def _build(target: str, seed: int) -> tuple[Any, str]:
    try:
        from .targets import TargetError, build_target
    except ImportError as e:
        raise UsageError(f"cannot load the target registry (conformance.targets): {e}") from None
    try:
        model, name = build_target(target, seed=seed)
    except TargetError as e:
        raise UsageError(str(e)) from None
    except ImportError as e:
        raise UsageError(f"target {target!r} needs an optional library that is not installed: {e}") from None
    return model, name


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run a parsed ``conform`` command; returns the exit code (see module doc)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        return _run(args, stdout, stderr)
    except UsageError as e:
        print(f"error: {e}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=stderr)
        return 130


def _run(args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> int:
    from vitspec.errors import VitSpecError

    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a hard dependency
        raise UsageError(f"torch is not importable: {e}") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    for opt in ("json", "markdown", "plot"):
        path = getattr(args, opt, None)
        if path and os.path.isdir(path):
            raise UsageError(f"--{opt} {path}: is a directory")

    target = args.target or _default_target()
    try:
        model, name = _build(target, args.seed)
        from .compare import check

        show_progress = not args.quiet and stderr.isatty()
        cb, close = _make_progress(show_progress)
        try:
            report = check(
                model,
                device=args.device,
                dtype=args.dtype,
                batch=args.batch,
                seed=args.seed,
                grads=args.grads,
                progress=cb,
            )
        finally:
            close()
    except VitSpecError as e:  # ConfigError / Unsupported / MappingError raised before a report exists
        raise UsageError(str(e)) from None
    except ImportError as e:
        raise UsageError(f"an optional library is missing: {e}") from None
    report.description.setdefault("target", target)
    report.description.setdefault("target_name", name)

    try:
        if args.json:
            report.write_json(args.json)
        if args.markdown:
            report.write_markdown(args.markdown)
        if args.plot:
            try:
                report.plot(args.plot)
            except ImportError as e:
                raise UsageError(f"--plot needs matplotlib: {e}") from None
    except OSError as e:
        raise UsageError(f"cannot write the report: {e}") from None

    from .report import Status

    if report.status is Status.UNSUPPORTED:
        print(f"error: {target}: unsupported model: {report.reason}", file=stderr)
        return EXIT_USAGE
    render(report, quiet=args.quiet, stream=stdout)
    return report.exit_code


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m conformance") -> int:
    """Parse ``argv`` and run; argparse errors give exit code 2 with its usage message, no traceback."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), message already printed
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    return run(args)
