"""Python module outlines for the project index: each top-level definition's header (signature,
a class's methods and fields, its docstring's first line) and the names the module imports, so
re-exports resolve to the real definition. Parsed with `ast`."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


MAX_CLASS_LINES = 30   # a class outline longer than this is cut (whole lines)
MAX_MODULE_LINES = 30  # idem for a module's outline


@dataclass
class ModuleInfo:
    path: str
    defs: dict[str, str] = field(default_factory=dict)      # top-level name -> source outline
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (module, attr)
    outline: str = ""  # the module's top-level signatures, for `import mod` / `from pkg import mod`


def _header(lines: list[str], node: ast.AST) -> list[str]:
    """The definition's own lines up to its body (decorators and a multi-line signature included)."""
    start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno]) - 1
    body_line = node.body[0].lineno - 1
    if body_line <= node.lineno - 1:  # `def f(): return 1` on one line
        return [lines[node.lineno - 1]]
    return [ln for ln in lines[start:body_line] if ln.strip() and not ln.strip().startswith("#")]


def _docline(node: ast.AST, indent: str) -> list[str]:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str):
        text = first.value.value.strip().split("\n", 1)[0].strip()
        if text:
            return [f'{indent}"""{text[:100]}"""']
    return []


def _dedent(block: list[str], col: int) -> list[str]:
    return [ln[col:] if ln[:col].strip() == "" else ln.lstrip() for ln in block]


def _outline_def(lines: list[str], node: ast.AST) -> str:
    col = node.col_offset
    head = _header(lines, node)
    if len(head) == 1 and node.body[0].lineno == node.lineno:
        return "\n".join(_dedent(head, col))
    inner = " " * (col + 4)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        out = head + _docline(node, inner) + [inner + "..."]
        return "\n".join(_dedent(out, col))
    out = head + _docline(node, inner)
    for member in node.body:
        if len(out) >= MAX_CLASS_LINES:
            break
        if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if member.name.startswith("_") and member.name != "__init__":
                continue  # private helpers say little about how the class is used
            out += _header(lines, member) if member.body[0].lineno > member.lineno else [lines[member.lineno - 1]]
        elif isinstance(member, (ast.Assign, ast.AnnAssign)) and member.lineno == member.end_lineno:
            targets = member.targets if isinstance(member, ast.Assign) else [member.target]
            if any(isinstance(t, ast.Name) and not t.id.startswith("_") for t in targets):
                out.append(lines[member.lineno - 1])
    if len(out) == len(head):
        out.append(inner + "...")
    return "\n".join(_dedent(out[:MAX_CLASS_LINES], col))


def _module_name_of(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = current.split(".") if current else []
    if not is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def outline_module(source: str, path: str = "", module: str = "", is_package: bool = False) -> ModuleInfo:
    """Outline of a Python source; an unparsable one gives an empty outline (never raises)."""
    info = ModuleInfo(path=path)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return info
    lines = source.split("\n")
    summary = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            info.defs[node.name] = _outline_def(lines, node)
            if not node.name.startswith("_"):
                summary.append(lines[node.lineno - 1].rstrip())
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.lineno == node.end_lineno:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    info.defs[t.id] = lines[node.lineno - 1][:200]
        elif isinstance(node, ast.ImportFrom):
            mod = _module_name_of(node, module, is_package)
            for a in node.names:
                if a.name != "*":
                    info.imports[a.asname or a.name] = (mod, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    info.imports[a.asname] = (a.name, None)
    info.outline = "\n".join(summary[:MAX_MODULE_LINES])
    return info
