"""The ``vitspec`` command: one subcommand per tool, each living in its own module.

A subcommand is a :class:`Command` in :data:`COMMANDS`: a name, a one-line help, and the
dotted path of a module that defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...     # the exit code

Adding one (``train``, ``attention-map``, ...) is a single :func:`register` call below.
Modules are imported lazily: only the chosen subcommand's module is imported, so
``vitspec --help`` stays instant and a missing optional dependency of one command
cannot break the others.

``vitspec conform ...`` is exactly ``python -m conformance ...`` (same arguments, same
``run``, same exit codes: 0 conformant, 1 not, 2 usage error / unknown target / unsupported).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

__all__ = ["COMMANDS", "Command", "build_parser", "main", "register"]

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


register(
    "conform",
    "check a third-party ViT against the spec (== python -m conformance)",
    "conformance.cli",
    "Check a third-party ViT against TorchLean's ViT spec, stage by stage and gradient by gradient. "
    "Exit status: 0 conformant, 1 not conformant, 2 usage error / unknown target / unsupported model.",
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
    code = COMMANDS[args.command].load().run(args)
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
