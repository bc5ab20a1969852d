"""The ``vitspec`` command: one subcommand per tool, each living in its own module.

A subcommand is a :class:`Command` in :data:`COMMANDS`: a name, a one-line help, and the
dotted path of a module that defines::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...     # the exit code

Adding one is a single :func:`register` call below (``train`` and ``attention-map`` are).
Another package adds commands through the entry-point group ``vitspec.commands`` (each entry
point names a :class:`Command`; :func:`discover`, :mod:`vitspec.plugins`): that is how
``conformance`` adds ``conform`` without ``vitspec`` importing it.
Modules are imported lazily: only the chosen subcommand's module is imported, so
``vitspec --help`` stays instant and a missing optional dependency of one command
cannot break the others.

``vitspec conform ...`` is exactly ``python -m conformance ...`` (same arguments, same
``run``, same exit codes: 0 conformant, 1 not, 2 usage error / unknown target, 3 unsupported
model, 4 ``--timeout`` reached). ``python -m vitspec`` is the ``vitspec`` command.

Bad input never ends in a traceback: argparse refuses bad values (exit 2 with its usage
message), and a :class:`~vitspec.errors.VitSpecError` (``ConfigError``, ``ShapeError``,
``LoadError``, ``TargetError``, ...), an ``OSError`` (missing or unwritable file) or an
``ImportError`` (missing optional library, named with the extra that provides it) raised by a
command's ``run`` becomes one line ``vitspec COMMAND: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from ._fs import safe_streams
from .argtypes import TARGET_GRAMMAR, OneLineParser
from .errors import VitSpecError
from .plugins import COMMANDS_GROUP, load_group

__all__ = [
    "COMMANDS",
    "EXIT_FAIL",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "EXTRAS",
    "Command",
    "build_parser",
    "discover",
    "main",
    "missing_extra",
    "one_line",
    "register",
]

#: The exit status of every vitspec command (``vitspec conform|diff|convert|train|...``, ``python -m conformance``):
#: 0 conformant / same function, 1 not, 2 usage error, 3 the spec (or a target library) cannot express the model,
#: 4 the check ran past ``--timeout``.
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNSUPPORTED, EXIT_TIMEOUT = 0, 1, 2, 3, 4
#: Characters in a one-line error message.
MAX_ERROR = 500


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


@functools.cache
def _plugins() -> tuple[tuple[Command, ...], dict[str, str]]:
    """The commands other installed packages declare (loaded once), and why any failed to load."""
    loaded, problems = load_group(COMMANDS_GROUP)
    cmds = []
    for name, cmd in loaded.items():
        if isinstance(cmd, Command):
            cmds.append(cmd)
        else:
            problems[name] = f"entry point {name!r} is a {type(cmd).__name__}, not a vitspec.cli.Command"
    return tuple(cmds), problems


def discover() -> dict[str, str]:
    """Add the commands of other installed packages (entry-point group ``vitspec.commands``, see
    :mod:`vitspec.plugins`; ``conformance`` adds ``conform``) to :data:`COMMANDS`; a command already
    registered keeps its place. Returns, per entry point that failed to load, why (one line)."""
    cmds, problems = _plugins()
    for cmd in cmds:
        COMMANDS.setdefault(cmd.name, cmd)
    return problems


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages, e.g. a ConfigError's list, joined)."""
    parts = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = " ".join(parts) or type(err).__name__
    if len(text) > MAX_ERROR:  # a 5000-character path must not become a screenful
        text = text[: MAX_ERROR - 80] + " ... " + text[-75:]
    return text


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

register(
    "audit-spec",
    "check a TorchLean revision's explicit backward against autograd through its own forward",
    "vitspec.audit",
    "Audit the spec itself: for each primitive, an encoder layer and the whole model (both variants, "
    "several head counts, cache and recompute), the revision's explicit backward against autograd through "
    "the same revision's forward, field by field, in float64; a table names each inconsistent gradient "
    "field, its error and the Lean definition responsible. "
    "Exit status: 0 consistent, 1 inconsistent, 2 bad arguments (unknown revision, unwritable --json).",
)

#: Optional top-level modules -> the vitspec extra that installs them.
EXTRAS = {
    "sklearn": "cli",
    "matplotlib": "cli",
    "rich": "cli",
    "PIL": "cli",
    "timm": "thirdparty",
    "torchvision": "thirdparty",
    "transformers": "thirdparty",
    "vit_pytorch": "thirdparty",
    "einops": "thirdparty",
    "safetensors": "cli",
}


def missing_extra(err: ImportError) -> str:
    """``err`` as one line that names the package and the extra providing it."""
    name = (err.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    hint = f"; install it with: pip install 'vitspec[{extra}]'" if extra else ""
    return f"an optional library is missing: {one_line(err)}{hint}"


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
    parser = OneLineParser(
        prog="vitspec",
        description="TorchLean's ViT spec, executable in PyTorch.",
        epilog=f"{TARGET_GRAMMAR}\n\nEvery command has --help; `python -m vitspec` is this command.",
    )
    parser.add_argument("--version", action="version", version=f"vitspec {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    discover()
    chosen = _chosen(argv)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        if cmd.name == chosen:
            cmd.load().add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitspec`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    safe_streams()  # an ASCII-only stdout must not turn a message into a traceback
    broken = discover()
    named = next((tok for tok in argv if not tok.startswith("-")), None)
    if named in broken and named not in COMMANDS:
        print(f"vitspec: error: command {named!r} failed to load: {broken[named]}", file=sys.stderr)
        return EXIT_USAGE
    try:
        parser = build_parser(argv)
    except ImportError as e:  # the chosen command's module (or its optional dependency) is missing
        print(f"vitspec: error: cannot load command {_chosen(argv)!r}: {missing_extra(e)}", file=sys.stderr)
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
        print(f"vitspec {cmd.name}: error: {missing_extra(e)}", file=sys.stderr)
        return EXIT_USAGE
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
