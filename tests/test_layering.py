"""The package's import structure: ``vitspec`` never imports ``conformance``, no module of ``vitspec``
imports itself back through others (function-level imports included), and the plugin hooks that
replace the old imports work: ``conformance`` reaches ``vitspec`` only through entry points."""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

import pytest

from vitspec import cli, plugins

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (absolute names), and every string
    literal handed to ``importlib.import_module``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from . import schema` imports a module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            out.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return out


def _vitspec_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "vitspec").rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_vitspec_never_imports_conformance() -> None:
    bad = {
        _module_name(p): sorted(i for i in _imports(p) if i == "conformance" or i.startswith("conformance."))
        for p in (ROOT / "vitspec").rglob("*.py")
    }
    assert not {m: i for m, i in bad.items() if i}, "vitspec must reach conformance only through entry points"


def test_vitspec_has_no_import_cycles() -> None:
    graph = _vitspec_graph()
    # A package's __init__ importing its own submodules is how packages work; a submodule importing a
    # sibling *through* the package __init__ is not counted as a cycle by Python either.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles in vitspec: {cycles}"


def test_io_is_below_models() -> None:
    graph = _vitspec_graph()
    assert "vitspec.io" in graph["vitspec.models.vit"], "models build on the file format"
    assert not {m for m in graph["vitspec.io"] if m.startswith("vitspec.models")}


def test_conform_command_comes_from_the_entry_point() -> None:
    cli.discover()
    cmd = cli.COMMANDS["conform"]
    assert cmd.module == "conformance.cli"
    mod = cmd.load()
    assert callable(mod.add_arguments) and callable(mod.run)


def test_entry_points_fall_back_to_pyproject_in_an_uninstalled_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "entry_points", lambda **kw: [])
    got = {ep.name: ep.value for ep in plugins.declared(plugins.COMMANDS_GROUP)}
    assert got == {
        "conform": "conformance.hooks:COMMAND",
        "diff": "conformance.hooks:DIFF_COMMAND",
        "convert": "conformance.hooks:CONVERT_COMMAND",
    }
    got = {ep.name: ep.value for ep in plugins.declared(plugins.TARGET_MODELS_GROUP)}
    assert got == {"conformance": "conformance.hooks:spec_model_for_target"}


def test_a_broken_plugin_is_reported_in_one_line_and_breaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        metadata.EntryPoint("good", "vitspec.cli:Command", plugins.COMMANDS_GROUP),
        metadata.EntryPoint("bad", "vitspec_no_such_plugin_xyz:THING", plugins.COMMANDS_GROUP),
    ]
    monkeypatch.setattr(plugins, "declared", lambda group: eps)
    loaded, problems = plugins.load_group(plugins.COMMANDS_GROUP)
    assert loaded == {"good": cli.Command}
    assert list(problems) == ["bad"] and "ModuleNotFoundError" in problems["bad"] and "\n" not in problems["bad"]


def test_attention_map_target_models_come_from_the_entry_point() -> None:
    loaded, problems = plugins.load_group(plugins.TARGET_MODELS_GROUP)
    assert not problems
    from conformance.hooks import spec_model_for_target

    assert list(loaded.values()) == [spec_model_for_target]
