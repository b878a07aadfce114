"""The house stays as ARCHITECTURE.md draws it: no import loops among ghost_lsp's modules, and
nothing outside ghost_lsp/tools/ imports the offline tools.

Every import counts, the ones inside functions and under `if TYPE_CHECKING` too: a loop hidden
in a function is still a loop for whoever reads the code. `python tests/test_architecture.py`
prints the graph's summary, its loops and its runtime → tools imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ghost_lsp"
TOOLS = "ghost_lsp.tools"
# The one place that names the tools (as a string, loaded when a tool command runs).
TOOLS_MOUNT = "ghost_lsp.cli.tools"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict) -> str | None:
    """The longest known module that `name` (a dotted path) starts with."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        head = ".".join(parts[:k])
        if head in known:
            return head
    return None


def imports_of(mod: str, path: Path, known: dict) -> list[tuple[str, int]]:
    """(imported ghost_lsp module, line) for every import statement in the file."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from a import b` imports the module a.b when there is one, else a name of a
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for n in names:
            if n == "ghost_lsp" or n.startswith("ghost_lsp."):
                target = _resolve(n, known)
                if target and target != mod:
                    out.append((target, node.lineno))
    return out


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {m: {t: line for t, line in reversed(imports_of(m, p, known))} for m, p in known.items()}


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def runtime_to_tools(g: dict[str, dict[str, int]]) -> list[str]:
    return [f"{m} -> {t} (line {line})" for m, ts in sorted(g.items()) if not _in_tools(m)
            for t, line in sorted(ts.items()) if _in_tools(t)]


def _in_tools(m: str) -> bool:
    return m == TOOLS or m.startswith(TOOLS + ".")


def _describe(comp: list[str], g) -> str:
    ties = [f"  {a} -> {b} (line {g[a][b]})" for a in comp for b in comp if b in g[a]]
    return " ↔ ".join(comp) + "\n" + "\n".join(ties)


def test_no_import_loops():
    g = graph()
    loops = cycles(g)
    assert not loops, "import loops:\n" + "\n".join(_describe(c, g) for c in loops)


def test_runtime_never_imports_tools():
    bad = runtime_to_tools(graph())
    assert not bad, "runtime modules importing the offline tools:\n" + "\n".join(bad)


def test_tools_are_named_only_at_their_mount():
    """No importlib side door: outside tools/, only cli/tools.py names a tools module."""
    known = modules()
    named = []
    for m, p in known.items():
        if _in_tools(m) or m == TOOLS_MOUNT:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and TOOLS + "." in node.value:
                named.append(f"{m}: {node.value!r}")
    assert not named, "\n".join(named)


MAX_LINES = 400


def test_a_module_over_400_lines_says_why():
    """A room too big to hold in mind states at its top why it stays one module."""
    big = []
    for m, p in modules().items():
        text = p.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and "Why one module" not in doc:
            big.append(f"{m}: {text.count(chr(10))} lines")
    assert not big, "modules over 400 lines without a reason in their docstring:\n" + "\n".join(big)


def test_the_graph_is_read():
    """The walker sees the imports it must (a guard against a test that checks nothing)."""
    g = graph()
    assert "ghost_lsp.completion.completer" in g
    assert "ghost_lsp.engine.base" in g["ghost_lsp.completion.completer"]
    assert "ghost_lsp.lsp.server" in g["ghost_lsp.cli.serve"]  # an import inside a function


if __name__ == "__main__":
    g = graph()
    print(f"{len(g)} modules, {sum(len(t) for t in g.values())} import edges")
    loops = cycles(g)
    print(f"import loops: {len(loops)}")
    for c in loops:
        print(_describe(c, g))
    bad = runtime_to_tools(g)
    print(f"runtime -> tools imports: {len(bad)}")
    for b in bad:
        print("  " + b)
