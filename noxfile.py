"""nox sessions for vitspec.

Every session runs in the interpreter nox itself runs in, with no virtualenv of its
own (``default_venv_backend = "none"``): torch is pinned and large, so the sessions
reuse the one ``scripts/setup.sh`` installed instead of downloading it per session.
Invoke nox from that environment::

    bash scripts/setup.sh
    .venv/bin/nox -l                      # list sessions
    .venv/bin/nox                         # the default ones: tests, lint, typecheck, docs
    .venv/bin/nox -s "tests(device='cuda')"
    .venv/bin/nox -s "conformance(library='timm', device='cpu')"
    .venv/bin/nox -s bench -- --quick     # arguments after -- go to each benchmark

A session that needs CUDA skips itself, saying so, when ``torch.cuda.is_available()`` is False.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

ROOT = Path(__file__).resolve().parent
#: The interpreter running nox (``.venv/bin/python`` when invoked as ``.venv/bin/nox``).
PY = sys.executable
LINT_PATHS = ("vitspec", "conformance", "tests", "benchmarks", "examples", "noxfile.py")
DEVICES = ["cpu", "cuda"]
LIBRARIES = ["timm", "torchvision", "hf", "vit_pytorch"]


def _skip_without_cuda(session: nox.Session, device: str) -> None:
    if device != "cuda":
        return
    import torch  # deferred: importing torch costs seconds and `nox -l` does not need it

    if not torch.cuda.is_available():
        session.skip(f"device={device!r} needs CUDA, but torch.cuda.is_available() is False on this machine")


@nox.session
@nox.parametrize("device", DEVICES)
def tests(session: nox.Session, device: str) -> None:
    """The default test suite (not slow) on one device; extra pytest arguments after ``--``."""
    _skip_without_cuda(session, device)
    session.env["VITSPEC_TEST_DEVICE"] = device
    session.run(PY, "-m", "pytest", "-q", "-n", "2", "-m", "not slow", *session.posargs)


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Only the tests marked slow (full-size models)."""
    # Exit 5 means no test carries the mark yet: nothing failed.
    session.run(PY, "-m", "pytest", "-q", "-m", "slow", *session.posargs, success_codes=[0, 5])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check (configuration in pyproject.toml)."""
    session.run(PY, "-m", "ruff", "check", *LINT_PATHS)
    session.run(PY, "-m", "ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the packages listed in pyproject.toml."""
    session.run(PY, "-m", "mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors, into a throwaway directory."""
    site = Path(session.create_tmp()) / "site"
    session.run(PY, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site))


@nox.session
@nox.parametrize("device", DEVICES)
@nox.parametrize("library", LIBRARIES)
def conformance(session: nox.Session, library: str, device: str) -> None:
    """Conformance matrix for one third-party library on one device, written under out/matrix."""
    _skip_without_cuda(session, device)
    # float64 is the reference check; the native-dtype rows use the dtype-aware budget.
    dtypes = "float64,float32" if device == "cpu" else "float32,bfloat16"
    args = ["--library", library, "--device", device, "--dtypes", dtypes, "--out", "out/matrix"]
    session.run(PY, "-m", "conformance.matrix", *args, *session.posargs)


@nox.session
def zoo(session: nox.Session) -> None:
    """The model zoo (conformance.zoo): every configuration unmodified and perturbed; writes docs/zoo.md."""
    session.run(PY, "-m", "conformance.zoo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmarks/bench_*.py in turn; arguments after ``--`` are passed to each."""
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.skip("no benchmarks/bench_*.py found")
    for script in scripts:
        session.run(PY, str(script.relative_to(ROOT)), *session.posargs)
