"""``python -m conformance [TARGET]`` (== ``vitspec conform [TARGET]``): check one ViT against the spec.

Exit codes: 0 conformant, 1 not conformant (MISMATCH / NONFINITE / CRASH: the first
divergent stage and the stage table are printed), 2 usage error (bad flags, an output that
cannot be written, a target that cannot be found or built, a factory that raises or calls
``sys.exit``, a check that cannot fit in memory), 3 the spec cannot express the model
(UNSUPPORTED), 4 the check ran past ``--timeout``. For 2, 3 and 4 one line goes to stderr,
never a traceback (``--debug`` prints it).

The module imports nothing heavy at import time, so ``--help`` is instant and the
``vitspec`` command can build its parser cheaply.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from vitspec._fs import safe_streams
from vitspec.argtypes import (
    TARGET_GRAMMAR,
    OneLineParser,
    nonempty_str,
    output_path,
    positive_float,
    positive_int,
    seed_int,
)
from vitspec.cli import EXIT_FAIL, EXIT_OK, EXIT_TIMEOUT, EXIT_UNSUPPORTED, EXIT_USAGE

if TYPE_CHECKING:
    from .report import Report

__all__ = [
    "EXIT_FAIL",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "add_arguments",
    "build_parser",
    "main",
    "render",
    "run",
]

EXIT_STATUS = (
    "exit status: 0 conformant, 1 not conformant (MISMATCH/NONFINITE/CRASH), 2 usage error (bad flags, "
    "unwritable output, a target that cannot be found or built, not enough memory), 3 the spec cannot "
    "express the model (UNSUPPORTED), 4 the check ran past --timeout"
)
_MAX_ERROR = 500  # characters in a one-line error
_DTYPES = ("float64", "float32", "bfloat16", "float16")
_FALLBACK_DEFAULT_TARGET = "timm:vit_tiny_patch16_224"


class UsageError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 2."""


class CheckTimeout(BaseException):  # BaseException: a model's `except Exception` cannot swallow it
    """The check ran past ``--timeout``."""


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
        type=nonempty_str,
        metavar="TARGET",
        help=f"model to check (default: {_FALLBACK_DEFAULT_TARGET}); see the TARGET grammar below",
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
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="isolate every encoder block, also where it cannot change the verdict (a float64 check whose "
        "propagated errors all sit far inside the tolerance skips them: about one spec forward saved)",
    )
    parser.add_argument(
        "--trunk-only",
        action="store_true",
        help="check everything up to the pooled features and leave the head out (for a model whose only "
        "inexpressible part is its head); the verdict says the head was not checked",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="load real weights into the target first: .safetensors or a torch checkpoint (strict key match)",
    )
    parser.add_argument(
        "--input",
        metavar="PATH",
        help="check on real inputs: an image, a directory of images (preprocessed as the library does) "
        "or a saved tensor .pt/.safetensors; the batch is then its size",
    )
    out = "('-' = stdout; the table then goes to stderr)"
    parser.add_argument("--json", metavar="PATH", type=output_path, help=f"write the report as JSON {out}")
    parser.add_argument("--markdown", metavar="PATH", type=output_path, help=f"write the report as Markdown {out}")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        type=output_path,
        help="write a PNG of per-stage errors vs tolerance (needs matplotlib)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the verdict line")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="stop a check still running after SECONDS: TIMEOUT, exit status 4 (default: no limit)",
    )
    parser.add_argument(
        "--no-memory-check",
        dest="memory_check",
        action="store_false",
        help="skip the refusal of a check whose estimated memory exceeds what is available",
    )
    parser.add_argument(
        "--spec-revision",
        metavar="R",
        default=None,
        help="the TorchLean revision to check against, e.g. b2a2184 or torchlean@411682f (default: the "
        "model's own for a spec profile, else the latest); the deviation list is relative to it",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (exit 2) too")
    parser.epilog = f"{TARGET_GRAMMAR}\n\n{EXIT_STATUS}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser(prog: str = "python -m conformance") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Check a third-party ViT against TorchLean's ViT spec (forward stages and gradients).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_arguments(parser)
    return parser


def _version() -> str:
    from vitspec import __version__

    return __version__


# -- rendering -----------------------------------------------------------------------------
#: The summary table: the propagated error (spec run end to end) and the isolated error (the spec's
#: stage on the model's own input of that stage), both normwise relative; gradients have no isolated error.
_COLUMNS = ("stage", "max abs err", "rel err", "isolated err", "tol", "result")


def _stage_rows(report: Report) -> list[tuple[str, str, str, str, str, str]]:
    from .report import format_err

    rows = []
    for s in [*report.stages, *report.subops]:
        # A stage fails if it is wrong downstream (propagated) or on its own inputs (isolated).
        verdict = "FAIL" if s.failed else ("ok" if s.ok else (s.note or "not compared"))
        if s.isolated_ok is False:
            verdict += f" (isolated {format_err(s.isolated_err)} > {format_err(s.isolated_tol)})"
        lowp = f" (spec {format_err(s.spec_lowp_err)})" if s.spec_lowp_err is not None else ""
        iso = format_err(s.isolated_err) if s.isolated_err is not None else "-"
        rows.append((s.name, format_err(s.max_abs_err), format_err(s.rel_err) + lowp, iso, format_err(s.tol), verdict))
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
                "-",
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
        for col in _COLUMNS[:-1]:
            table.add_column(col, justify="left" if col == "stage" else "right")
        table.add_column(_COLUMNS[-1])
        for r in rows:
            res = r[-1]
            table.add_row(*r[:-1], f"[red]{res}[/red]" if res.startswith("FAIL") else res)
        console.print(table)
    for n in report.notes:
        console.print(f"note: {n}", markup=False)


def _render_plain(report: Report, headline: str, rows: Sequence[tuple[str, ...]], stream: IO[str]) -> None:
    print(headline, file=stream)
    if report.deviations:
        print("deviations from the spec: " + "; ".join(report.deviations), file=stream)
    if rows:
        header = _COLUMNS
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
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
    from .conversion import is_converted_file, load_converted

    if is_converted_file(target):  # its metadata says what to build
        from vitspec.errors import VitSpecError

        try:
            return load_converted(target), os.path.basename(target)
        except VitSpecError as e:
            raise UsageError(str(e)) from None
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


def _adapter(model: Any, target: str) -> Any:
    """The adapter the target's options ask for (``?input_hw=32x64``, :func:`conformance.targets.adapter_options`),
    or None to let :func:`conformance.check` detect one."""
    from .conversion import is_converted_file
    from .targets import TargetError, adapter_options

    if is_converted_file(target):  # the file's description is the model's: no target options
        return None
    try:
        options = adapter_options(target)
    except TargetError as e:
        raise UsageError(str(e)) from None
    if not options:
        return None
    from .adapters import detect

    try:
        return detect(model, copy=False, **options)  # the CLI built the model for this check alone
    except TypeError as e:  # an adapter that does not take the option (a user adapter registered first)
        raise UsageError(f"{target!r}: the detected adapter does not take {', '.join(options)} ({e})") from None


def _printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) shown as U+FFFD, so it can be encoded."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run a parsed ``conform`` command; returns the exit code (see module doc)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        return _run(args, stdout, stderr)
    except UsageError as e:
        _print_error(f"error: {e}", stderr, args)
        return EXIT_USAGE
    except CheckTimeout:
        target = _printable(args.target or _default_target())
        print(f"TIMEOUT: {target}: the check did not finish within --timeout {args.timeout:g} s", file=stderr)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        print("interrupted", file=stderr)
        return 130


def _print_error(line: str, stderr: IO[str], args: argparse.Namespace) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc(file=stderr)
    text = " ".join(_printable(line).split())
    if len(text) > _MAX_ERROR:  # a 5000-character path must not become a screenful
        text = text[: _MAX_ERROR - 80] + " ... " + text[-75:]
    print(text, file=stderr)


def _preflight(args: argparse.Namespace) -> None:
    """Everything that can be refused before the model is built (usage errors, exit 2)."""
    import importlib.util

    outputs = [f"--{o}" for o in ("json", "markdown", "plot") if getattr(args, o, None) == "-"]
    if len(outputs) > 1:
        raise UsageError(f"{' and '.join(outputs)}: only one output can go to stdout ('-')")
    if getattr(args, "plot", None) and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'vitspec[cli]'")
    for opt in ("json", "markdown", "plot"):  # also when run() is called without the parser's checks
        path = getattr(args, opt, None)
        if path:
            _writable_or_usage(path, f"--{opt}")


def _writable_or_usage(path: str, what: str) -> None:
    from vitspec._fs import UnwritableError, check_writable

    try:
        check_writable(path, what)
    except UnwritableError as e:
        raise UsageError(str(e)) from None


def _check_memory(model: Any, args: argparse.Namespace, adapter: Any = None) -> None:
    """Refuse (exit 2) a check whose estimated memory exceeds what the machine has left."""
    if not getattr(args, "memory_check", True):
        return
    from .budget import available_bytes, estimate_check_bytes, format_bytes

    try:
        from .adapters import detect

        d = (adapter if adapter is not None else detect(model, copy=False)).describe()
    except Exception:  # no adapter / unsupported: check() reports that itself, cheaply
        return
    itemsize = {"float64": 8, "float32": 4}.get(args.dtype, 2)
    est = estimate_check_bytes(d.cfg, d.in_c, d.in_h, d.in_w, batch=args.batch, itemsize=itemsize, grads=args.grads)
    avail = available_bytes()
    if avail is not None and args.device == "cpu" and est.bytes > avail:
        raise UsageError(
            f"--batch {args.batch}: the check would need about {format_bytes(est.bytes)} of memory, "
            f"{format_bytes(avail)} is available (use a smaller --batch, or --no-memory-check)"
        )


class _Alarm:
    """``--timeout``: raise :class:`CheckTimeout` in the main thread after ``seconds`` (SIGALRM, POSIX)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.armed = (
            seconds is not None
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        )

    def __enter__(self) -> _Alarm:
        if self.armed:
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds or 0))
        return self

    def _fire(self, signum: int, frame: Any) -> None:
        raise CheckTimeout()

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)


def _return_freed_memory() -> None:
    """glibc: give every allocation of 128 KiB or more its own mapping, returned to the OS when freed.

    A check allocates and frees gigabytes phase by phase (the model's run, then the spec's); glibc's
    adaptive threshold would keep freed tensors in the heap, and the peak resident set would count
    memory no tensor uses (docs/benchmarks.md, "Peak memory"). A no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixing it turns the adaptive threshold off)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _run(args: argparse.Namespace, stdout: IO[str], stderr: IO[str]) -> int:
    from vitspec.errors import VitSpecError

    if args.target is not None and not str(args.target).strip():
        raise UsageError("TARGET is empty (an unset variable?); name a target or omit it for the default")
    _preflight(args)
    _return_freed_memory()
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a hard dependency
        raise UsageError(f"torch is not importable: {e}") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")

    target = args.target or _default_target()
    shown = _printable(target)
    try:
        with _Alarm(getattr(args, "timeout", None)):
            model, name = _build(target, args.seed)
            adapter = _adapter(model, target)
            from .inputs import weights_and_inputs

            inputs, input_how = weights_and_inputs(model, getattr(args, "weights", None), getattr(args, "input", None))
            _check_memory(model, args, adapter)
            from .compare import check

            show_progress = not args.quiet and stderr.isatty()
            cb, close = _make_progress(show_progress)
            try:
                report = check(
                    model,
                    adapter=adapter,
                    device=args.device,
                    dtype=args.dtype,
                    batch=args.batch,
                    seed=args.seed,
                    grads=args.grads,
                    progress=cb,
                    inputs=inputs,
                    spec_revision=getattr(args, "spec_revision", None),
                    scope="trunk" if getattr(args, "trunk_only", False) else "full",
                    isolate=getattr(args, "isolate", False),
                    consume=True,  # the model was built for this check alone: no second copy of its weights
                    spec_cache=False,  # the spec recomputes each layer in its backward: peak memory over time
                )
            finally:
                close()
    except (UsageError, CheckTimeout, KeyboardInterrupt):
        raise
    except VitSpecError as e:  # ConfigError / Unsupported / MappingError raised before a report exists
        raise UsageError(str(e)) from None
    except ImportError as e:
        raise UsageError(f"an optional library is missing: {e}") from None
    except SystemExit as e:  # sys.exit() from the target's module, factory, forward or a hook
        raise UsageError(f"{shown}: the model called sys.exit({e.code!r}) during the check") from None
    except MemoryError:
        raise UsageError(f"{shown}: out of memory (try a smaller --batch)") from None
    except Exception as e:  # a model problem check() could not turn into a status (e.g. it cannot be copied)
        raise UsageError(f"{shown}: the check could not run: {type(e).__name__}: {e}") from None
    report.description.setdefault("target", shown)
    report.description.setdefault("target_name", _printable(name))
    if getattr(args, "weights", None):
        report.description["weights"] = str(args.weights)
    if input_how:
        report.description["input"] = input_how

    try:
        if args.json:
            report.write_json(args.json)
        if args.markdown:
            report.write_markdown(args.markdown)
        if args.plot:
            try:
                report.plot(args.plot)
            except ImportError as e:
                raise UsageError(f"--plot needs matplotlib: {e}; pip install 'vitspec[cli]'") from None
    except OSError as e:
        raise UsageError(f"cannot write the report: {e}") from None

    from .report import Status

    if report.status is Status.UNSUPPORTED:
        print(_printable(f"UNSUPPORTED: {shown}: {report.reason}").replace("\n", " "), file=stderr)
        return EXIT_UNSUPPORTED
    to_stdout = "-" in (args.json, args.markdown, args.plot)
    render(report, quiet=args.quiet, stream=stderr if to_stdout else stdout)
    return report.exit_code


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m conformance") -> int:
    """Parse ``argv`` and run; argparse errors give exit code 2 with its usage message, no traceback."""
    safe_streams()  # an ASCII-only stdout must not turn a headline into a traceback
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), message already printed
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    return run(args)
