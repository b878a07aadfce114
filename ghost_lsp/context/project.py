"""Project definitions: the outlines of names the current file imports from the project.

Imports are read with a regex (the file under the cursor is often mid-edit and unparsable), from
the head of the document and the prefix window. Names used closest to the cursor come first;
`import pkg.mod as m` + `m.func(` asks for `func` in `pkg.mod`.
"""

from __future__ import annotations

import os
import re
import time

from ghost_lsp.context.base import DEFINITIONS, ContextRequest
from ghost_lsp.types import Context, Snippet

_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]+)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n#;]+)", re.M)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ATTR = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
HEAD_CHARS = 64_000  # imports live at the top; a 10 MB file costs no more than this


def parse_imports(text: str, module: str = "", is_package: bool = False):
    """(names, modules): names = local name -> (module, attr); modules = local alias -> module."""
    names: dict[str, tuple[str, str]] = {}
    modules: dict[str, str] = {}
    for m in _FROM.finditer(text):
        mod = m.group(1)
        level = len(mod) - len(mod.lstrip("."))
        if level:
            parts = module.split(".") if module else []
            if not is_package:
                parts = parts[:-1]
            parts = parts[:len(parts) - (level - 1)] if level > 1 else parts
            mod = ".".join(parts + ([mod.lstrip(".")] if mod.lstrip(".") else []))
        for item in m.group(2).strip("() \t\n").replace("\n", " ").split(","):
            bits = item.split()
            if not bits or bits[0] == "*":
                continue
            local = bits[2] if len(bits) == 3 and bits[1] == "as" else bits[0]
            if _IDENT.fullmatch(bits[0]) and _IDENT.fullmatch(local):
                names[local] = (mod, bits[0])
    for m in _IMPORT.finditer(text):
        for item in m.group(1).split(","):
            bits = item.split()
            if not bits:
                continue
            if len(bits) == 3 and bits[1] == "as":
                modules[bits[2]] = bits[0]
            else:
                modules[bits[0].split(".")[0]] = bits[0].split(".")[0]
                modules[bits[0]] = bits[0]
    return names, modules


class ProjectDefinitions:
    name = DEFINITIONS

    def __init__(self, max_snippets: int = 8, near_lines: int = 60):
        self.max_snippets, self.near_lines = max_snippets, near_lines

    def provide(self, req: ContextRequest, ctx: Context, deadline: float) -> list[Snippet]:
        index = req.index
        if index is None or len(index) == 0 or ctx.language != "python":
            return []
        current = index.module_of_path(req.path) if req.path else None
        is_package = req.path.endswith("__init__.py")
        head = req.text[:HEAD_CHARS]
        names, modules = parse_imports(head + "\n" + ctx.prefix[-HEAD_CHARS:], current or "", is_package)
        if not names and not modules:
            return []
        # Distance (in lines before the cursor) of the nearest use of each wanted thing.
        near = ctx.prefix.split("\n")[-self.near_lines:]
        wanted: dict[tuple[str, str], float] = {}
        for dist, line in enumerate(reversed(near)):
            score = 1.0 / (1 + dist)
            for a, b in _ATTR.findall(line):
                if a in modules:
                    wanted.setdefault((modules[a], b), score)
                elif a in names:
                    # `from pkg import mod` + `mod.func`: func in pkg.mod if mod is a module,
                    # else the imported object itself
                    mod, attr = names[a]
                    wanted.setdefault((f"{mod}.{attr}" if mod else attr, b), score)
                    wanted.setdefault(names[a], score * 0.5)
            for w in _IDENT.findall(line):
                if w in names:
                    wanted.setdefault(names[w], score)
        for key in names.values():  # imported but not used nearby: least wanted
            wanted.setdefault(key, 0.001)
        out: list[Snippet] = []
        seen: set[str] = set()
        for (mod, attr), score in sorted(wanted.items(), key=lambda kv: -kv[1]):
            if len(out) >= self.max_snippets or time.monotonic() > deadline:
                break
            if current and mod == current:
                continue  # the current file is in the window already
            found = index.definition(mod, attr)
            if found is None or found[1] in seen:
                continue
            seen.add(found[1])
            out.append(Snippet(path=os.path.relpath(found[0], index.root), text=found[1].rstrip("\n") + "\n", score=score, source=self.name))
        return out
