"""pytest plugin: run the conformance suite against any ViT (``pytest --vit-target TARGET``).

Registered as the ``pytest11`` entry point ``vitspec_conformance`` (this module,
``vitspec.pytest_plugin``), so it is loaded by *every* pytest run in an environment where
vitspec is installed. It therefore:

- imports nothing heavy at load time (no torch, no third-party libraries) and never imports
  the ``conformance`` package: a project with its own top-level ``conformance`` package runs
  ``python -m pytest`` unaffected (the suite imports ``conformance`` only once it is collected);
- only adds ``--vit-*`` options (prefixed, so they cannot clash with other plugins);
- does nothing at all unless the conformance suite is collected;
- refuses bad options at startup with a usage error (exit 4, one line): an ``--vit-xfails``
  file that is missing or not UTF-8, a ``--vit-json`` that cannot be written. An xfail id that
  matches no collected suite test is reported as a warning naming it.

Usage::

    pytest --vit-target timm:vit_tiny_patch16_224            # runs conformance/suite
    pytest --pyargs conformance.suite --vit-target hf:default --vit-dtype float32
    VITSPEC_TARGET=torchvision:vit_b_16 pytest conformance/suite --vit-json report.json
    pytest --vit-target timm:vit_base_patch16_224 --vit-weights vit_b16.safetensors --vit-input images/

With ``--vit-target`` and no paths on the command line, the plugin points the run at
the conformance suite instead of the project's ``testpaths`` (a user asking for a target
wants it checked, not the project's own tests). The environment variable alone never
redirects a run, so a stray ``VITSPEC_TARGET`` cannot hide the project's tests.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

__all__ = ["ENV_TARGET", "SuiteOptions", "get_options", "read_xfails"]

#: Environment variable naming the target when ``--vit-target`` is not given.
ENV_TARGET = "VITSPEC_TARGET"

# The suite ships beside this package (``conformance/suite`` next to ``vitspec/``); its path is found
# without importing ``conformance``, which may be another project's package of the same name.
_SUITE_DIR = Path(__file__).resolve().parent.parent / "conformance" / "suite"
_XFAILS = pytest.StashKey[set[str]]()
_DTYPES = ("float64", "float32", "bfloat16", "float16")


def _positive_int(text: str) -> int:
    # Imported on use: loading the plugin (every pytest run in this venv) must not import torch.
    from vitspec.argtypes import positive_int

    return positive_int(text)


def _seed_int(text: str) -> int:
    from vitspec.argtypes import seed_int

    return seed_int(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vitspec", "vitspec conformance suite (conformance/suite)")
    group.addoption(
        "--vit-target",
        default=None,
        metavar="TARGET",
        help=f"model to check, e.g. timm:vit_tiny_patch16_224 (default: ${ENV_TARGET}; none = suite skips)",
    )
    group.addoption("--vit-device", default="cpu", choices=("cpu", "cuda"), help="device for the check (cpu)")
    group.addoption("--vit-dtype", default="float64", choices=_DTYPES, help="model dtype (float64)")
    group.addoption(
        "--vit-batch", default=2, type=_positive_int, metavar="N", help="batch size of the seeded input (2)"
    )
    group.addoption("--vit-seed", default=0, type=_seed_int, metavar="N", help="seed for weights and inputs (0)")
    group.addoption(
        "--vit-xfails",
        default=None,
        metavar="FILE",
        help="file of test ids (one per line, '#' comments) expected to fail for this target",
    )
    group.addoption(
        "--vit-weights",
        default=None,
        metavar="PATH",
        help="load real weights into the target first: .safetensors or a torch checkpoint (strict key match)",
    )
    group.addoption(
        "--vit-input",
        default=None,
        metavar="PATH",
        help="check on real inputs: an image, a directory of images (preprocessed as the library does) "
        "or a saved (B, C, H, W) tensor; --vit-batch is then B",
    )
    group.addoption("--vit-json", default=None, metavar="PATH", help="write the conformance Report as JSON")


class SuiteOptions:
    """The ``--vit-*`` options, resolved (target falls back to ``$VITSPEC_TARGET``)."""

    def __init__(self, config: pytest.Config) -> None:
        self.target: str | None = config.getoption("--vit-target") or os.environ.get(ENV_TARGET) or None
        self.device: str = config.getoption("--vit-device")
        self.dtype: str = config.getoption("--vit-dtype")
        self.batch: int = config.getoption("--vit-batch")
        self.seed: int = config.getoption("--vit-seed")
        self.xfails: str | None = config.getoption("--vit-xfails")
        self.json: str | None = config.getoption("--vit-json")
        self.weights: str | None = config.getoption("--vit-weights")
        self.input: str | None = config.getoption("--vit-input")


def get_options(config: pytest.Config) -> SuiteOptions:
    return SuiteOptions(config)


def read_xfails(path: str | os.PathLike[str]) -> set[str]:
    """Test ids from an xfail file: one per line, blank lines and ``#`` comments ignored.

    Raises :class:`pytest.UsageError` for a file that cannot be read or is not UTF-8."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise pytest.UsageError(f"--vit-xfails {path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise pytest.UsageError(f"--vit-xfails {path}: cannot read it ({e.strerror or e})") from None
    ids: set[str] = set()
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            ids.add(entry)
    return ids


def pytest_configure(config: pytest.Config) -> None:
    # Redirect a bare `pytest --vit-target X` (no paths given) to the suite; see module doc.
    if config.getoption("--vit-target"):
        source = getattr(config, "args_source", None)
        if source is not None and source.name in ("TESTPATHS", "INVOCATION_DIR"):
            config.args[:] = [str(_SUITE_DIR)]
    xf = config.getoption("--vit-xfails")
    if xf:
        if not Path(xf).is_file():
            raise pytest.UsageError(f"--vit-xfails: no such file: {xf}")
        config.stash[_XFAILS] = read_xfails(xf)
    for opt in ("--vit-weights", "--vit-input"):  # a typo is refused now, not after building the model
        path = config.getoption(opt)
        if path and not Path(path).exists():
            raise pytest.UsageError(f"{opt}: no such file or directory: {path}")
    out = config.getoption("--vit-json")
    if out:  # refused now, not after the whole check
        from vitspec._fs import UnwritableError, check_writable

        try:
            check_writable(out, "--vit-json")
        except UnwritableError as e:
            raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    xf = config.getoption("--vit-xfails")
    wanted = config.stash.get(_XFAILS, set())
    if not xf or not wanted:
        return
    used: set[str] = set()
    suite_items = 0
    for item in items:
        if not _in_suite(item):
            continue
        suite_items += 1
        # Match the bare name (``test_stage[blocks.3]``) or the full node id.
        ids = {item.name, item.nodeid, item.nodeid.split("::", 1)[-1]} & wanted
        if ids:
            used |= ids
            item.add_marker(pytest.mark.xfail(reason=f"listed in {xf}", strict=False))
    unmatched = sorted(wanted - used)
    if suite_items and unmatched:  # a typo must not silently leave a failing test un-xfailed
        shown = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        warnings.warn(pytest.PytestConfigWarning(f"--vit-xfails {xf}: no collected test matches {shown}"), stacklevel=1)


def _in_suite(item: Any) -> bool:
    try:
        return Path(str(item.path)).resolve().is_relative_to(_SUITE_DIR)
    except (OSError, ValueError):
        return False
