"""The ``vitspec`` command: one subcommand per tool, each living in its own module.

A subcommand is a :class:`Command` in :data:`COMMANDS`: a name, a one-line help, and the
dotted path of a module that defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...     # the exit code

Adding one is a single :func:`register` call below (``train`` and ``attention-map`` are).
Modules are imported lazily: only the chosen subcommand's module is imported, so
``vitspec --help`` stays instant and a missing optional dependency of one command
cannot break the others.

``vitspec conform ...`` is exactly ``python -m conformance ...`` (same arguments, same
``run``, same exit codes: 0 conformant, 1 not, 2 usage error / unknown target / unsupported).

Bad input never ends in a traceback: argparse refuses bad values (exit 2 with its usage
message), and a :class:`~vitspec.errors.VitSpecError` (``ConfigError``, ``ShapeError``,
``LoadError``, ``TargetError``, ...), an ``OSError`` (missing or unwritable file) or an
``ImportError`` (missing optional library) raised by a command's ``run`` becomes one line
``vitspec COMMAND: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from .errors import VitSpecError

__all__ = [
    "COMMANDS",
    "Command",
    "build_parser",
    "main",
    "one_line",
    "register",
]

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    """A ``vitspec`` subcommand implemented by ``module`` (``add_arguments`` + ``run``)."""

    name: str
    help: str
    module: str
    description: str = ""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


#: Subcommands by name, in ``--help`` order.
COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, module: str, description: str = "") -> Command:
    """Add (or replace) a subcommand; returns it."""
    cmd = Command(name, help, module, description or help)
    COMMANDS[name] = cmd
    return cmd


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages, e.g. a ConfigError's list, joined)."""
    parts = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(parts) or type(err).__name__


register(
    "conform",
    "check a third-party ViT against the spec (== python -m conformance)",
    "conformance.cli",
    "Check a third-party ViT against TorchLean's ViT spec, stage by stage and gradient by gradient. "
    "Exit status: 0 conformant, 1 not conformant, 2 usage error / unknown target / unsupported model.",
)
register(
    "train",
    "train a small ViTClsSpec on sklearn's digits through the explicit backward",
    "vitspec.train",
    "Train a small ViTClsSpec (CLS token) on scikit-learn's bundled 8x8 digits, with the spec's explicit "
    "backward as the gradient (vitspec.autograd.SpecViT) and torch.optim.AdamW; prints the test accuracy. "
    "Exit status: 0 done, 2 bad arguments (or scikit-learn missing).",
)
register(
    "attention-map",
    "write a PNG of a ViT's last-layer CLS attention and attention rollout over an image",
    "vitspec.viz",
    "Draw what the CLS token attends to (last layer, heads averaged) and the attention rollout, "
    "computed with the spec's own primitives, for a random spec model (default), a saved spec model "
    "(--model) or a third-party ViT (--target, random init). "
    "Exit status: 0 written, 2 bad arguments / unreadable file / unsupported model.",
)


def _version() -> str:
    try:
        from . import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (first token that is not an option), if any."""
    for tok in argv:
        if tok == "--":
            return None
        if not tok.startswith("-"):
            return tok if tok in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand chosen in ``argv`` gets its full arguments."""
    parser = argparse.ArgumentParser(
        prog="vitspec",
        description="TorchLean's ViT spec, executable in PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"vitspec {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    chosen = _chosen(argv)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        if cmd.name == chosen:
            cmd.load().add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitspec`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except ImportError as e:  # the chosen command's module (or its optional dependency) is missing
        print(f"vitspec: error: cannot load command {_chosen(argv)!r}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2); argparse printed the message
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    cmd = COMMANDS[args.command]
    try:
        code = cmd.load().run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (VitSpecError, OSError) as e:  # bad input: a typed vitspec error, a missing/unwritable file
        print(f"vitspec {cmd.name}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:  # an optional dependency of the command, imported late
        print(f"vitspec {cmd.name}: error: an optional library is missing: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
