"""``vitspec diff A B``: the command over :func:`conformance.diff.compare_models` (docs/diff-convert.md).

A and B are targets (``conformance.targets``), with ``--weights-a/-b`` loaded into them, or files that
``vitspec convert -o`` wrote, which rebuild their model alone (:func:`conformance.conversion.build_operand`).
"""

from __future__ import annotations

import argparse
import sys
from typing import IO

from vitspec.cli import EXIT_UNSUPPORTED, EXIT_USAGE, one_line
from vitspec.errors import MappingError, VitSpecError

from .adapters import Unsupported
from .conversion import build_operand
from .diff import compare_models, render

__all__ = ["EXIT_STATUS", "add_arguments", "run"]

EXIT_STATUS = (
    "exit status: 0 same function (every stage and gradient within the tolerance), 1 not, "
    "2 usage error (bad target, unreadable weights or input, unwritable output), 3 the spec cannot express A or B"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vitspec diff`` arguments."""
    from vitspec.argtypes import TARGET_GRAMMAR, nonempty_str, output_path, positive_int, seed_int

    parser.add_argument(
        "a", type=nonempty_str, metavar="A", help="first model (TARGET grammar below, or a vitspec convert -o file)"
    )
    parser.add_argument("b", type=nonempty_str, metavar="B", help="second model (the same)")
    parser.add_argument("--weights-a", metavar="PATH", help="load real weights into A (strict key match)")
    parser.add_argument("--weights-b", metavar="PATH", help="load real weights into B (strict key match)")
    parser.add_argument("--input", metavar="PATH", help="compare on real inputs (an image, a directory, a tensor)")
    parser.add_argument("--batch", type=positive_int, default=2, metavar="N", help="input batch size (default: 2)")
    parser.add_argument("--seed", type=seed_int, default=0, metavar="N", help="seed for weights, input, cotangent")
    parser.add_argument("--no-grads", dest="grads", action="store_false", help="compare the forward pass only")
    parser.add_argument("--no-spec", dest="against_spec", action="store_false", help="skip each model's own check")
    parser.add_argument("--json", metavar="PATH", type=output_path, help="write the comparison as JSON")
    parser.add_argument("--markdown", metavar="PATH", type=output_path, help="write the comparison as Markdown")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the verdict line")
    parser.epilog = f"{TARGET_GRAMMAR}\n\n{EXIT_STATUS}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run a parsed ``diff`` command; returns the exit code (0 same function, 1 not, 2 usage, 3 unsupported)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        a = build_operand(args.a, seed=args.seed, weights=args.weights_a)
        b = build_operand(args.b, seed=args.seed, weights=args.weights_b)
        inputs = None
        if args.input:
            from .inputs import load_inputs

            inputs, _ = load_inputs(args.input, a)
        cmp = compare_models(
            a, b, batch=args.batch, seed=args.seed, grads=args.grads, inputs=inputs,
            against_spec=args.against_spec, labels=(args.a, args.b),
        )  # fmt: skip
    except (Unsupported, MappingError) as e:  # the model's parameters do not map: as check() says, UNSUPPORTED
        print(f"UNSUPPORTED: {one_line(e)}", file=stderr)
        return EXIT_UNSUPPORTED
    except VitSpecError as e:
        print(f"vitspec diff: error: {one_line(e)}", file=stderr)
        return EXIT_USAGE
    cmp.write_reports(args.json, args.markdown)
    render(cmp, stderr if "-" in (args.json, args.markdown) else stdout, quiet=args.quiet)
    return cmp.exit_code
