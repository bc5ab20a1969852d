"""Every Python block in README.md and docs/*.md runs as written, or is marked as a listing.

Convention (docs/getting-started.md, "Code blocks in the docs"): a ```` ```python ```` block is a
runnable sample; the blocks of one page run in order in one namespace (a later block may use an
earlier one's names), in a scratch directory, so whatever they write lands there. A block right
after the line ``<!-- signature -->`` is a signature listing (an API's shape, not a program) and
is not run. The marker is an HTML comment, so it is invisible on GitHub and in the mkdocs site
(a ``title=...`` info string would break mkdocs' ``fenced_code``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SIGNATURE = "<!-- signature -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    is_signature: bool = False

    @property
    def is_python(self) -> bool:
        words = self.info.split()
        return bool(words) and words[0] in ("python", "py")


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (indented fences, e.g. inside lists, included)."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^[ \t]*{re.escape(ticks)}\s*$", lines[j]):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        out.append(Block(page, i + 1, info, "\n".join(body) + "\n", before == SIGNATURE))
        i = j + 1
    return out


def _python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.is_python for b in blocks(p))]


def test_the_fence_parser_finds_blocks_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n\n- item\n\n"
        "  <!-- signature -->\n  ```python\n  def f(a: int) -> int: ...\n  ```\n"
        "```bash\nls\n```\n"
    )
    bs = blocks(page)
    assert [(b.line, b.is_python, b.is_signature) for b in bs] == [
        (2, True, False),
        (9, True, True),
        (12, False, False),
    ]
    assert bs[1].code == "def f(a: int) -> int: ...\n"


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files a sample writes land in the scratch directory
    namespace: dict[str, object] = {"__name__": "__doc_sample__"}
    ran = 0
    for b in blocks(page):
        if not b.is_python:
            continue
        if b.is_signature:
            continue
        where = f"{page.relative_to(ROOT)}:{b.line}"
        code = compile(b.code, where, "exec")
        try:
            exec(code, namespace)
        except Exception as e:
            pytest.fail(f"{where}: the sample raised {type(e).__name__}: {e}", pytrace=False)
        ran += 1
    assert ran or any(b.is_signature for b in blocks(page))


_OUTPUT_FLAG = re.compile(r"(?:^|\s)(?:-o|--output|--json|--markdown|--plot|--vit-json)[ =](?P<path>\S+)")


def test_readme_commands_write_only_under_out() -> None:
    """README commands run in a clean clone write nothing but ``out/`` (ignored by git), and never a tracked file."""
    readme = ROOT / "README.md"
    paths = [
        m["path"]
        for b in blocks(readme)
        if b.info.split()[:1] == ["bash"]
        for line in b.code.splitlines()
        for m in _OUTPUT_FLAG.finditer(line.split("#", 1)[0])
    ]
    paths += re.findall(r"\.save\(['\"]([^'\"]+)['\"]\)", readme.read_text(encoding="utf-8"))
    assert paths, "the README examples write no file at all?"
    assert all(p.startswith("out/") or p == "-" for p in paths), paths
    assert "/out/" in (ROOT / ".gitignore").read_text().splitlines()
