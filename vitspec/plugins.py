"""Extension points that other packages fill, so that ``vitspec`` imports none of them by name.

A package adds to ``vitspec`` by declaring entry points in its ``pyproject.toml``:

- group ``vitspec.commands``: a :class:`vitspec.cli.Command` (``conformance`` adds ``vitspec conform``);
- group ``vitspec.target_models``: a callable ``(target: str, *, seed: int) -> (spec model, name)``
  giving the spec model that computes what a third-party ViT target computes (``conformance``
  provides it; ``vitspec attention-map --target`` uses it).

Entry points come from the installed distributions' metadata. A source checkout that was never
installed (or whose metadata predates an edit of ``pyproject.toml``) has none for a group; then the
same declarations are read from the ``pyproject.toml`` next to the package, so ``python -m vitspec``
behaves the same from a bare checkout.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

__all__ = ["COMMANDS_GROUP", "TARGET_MODELS_GROUP", "declared", "load_group"]

COMMANDS_GROUP = "vitspec.commands"
TARGET_MODELS_GROUP = "vitspec.target_models"

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group``: installed metadata first, else this checkout's ``pyproject.toml``."""
    found = list(metadata.entry_points(group=group))
    return found or _from_pyproject(group)


def _from_pyproject(group: str) -> list[metadata.EntryPoint]:
    try:
        data = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):  # not a checkout (an installed wheel): nothing to add
        return []
    table = data.get("project", {}).get("entry-points", {}).get(group, {})
    return [metadata.EntryPoint(name, value, group) for name, value in table.items() if isinstance(value, str)]


def load_group(group: str) -> tuple[dict[str, object], dict[str, str]]:
    """``(loaded, problems)``: each entry point of ``group`` loaded by name, and for each one that
    failed to load, why (one line). A broken plugin never breaks the others."""
    loaded: dict[str, object] = {}
    problems: dict[str, str] = {}
    for ep in declared(group):
        try:
            loaded[ep.name] = ep.load()
        except Exception as e:  # any import-time failure of a third-party plugin
            problems[ep.name] = f"{ep.value}: {type(e).__name__}: {e}".splitlines()[0]
    return loaded, problems
