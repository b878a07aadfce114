"""The one glob dialect of ghost-lsp: `exclude` settings, `.ghostignore` and `.gitignore`."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import PurePosixPath


@lru_cache(maxsize=1024)
def glob_to_regex(glob: str) -> re.Pattern:
    """A gitignore-style glob as a regex (not anchored at the end): `**` spans folders, `*`, `?`
    and `[...]` do not cross "/"."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[":
            j = glob.find("]", i + 1)
            if j < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = glob[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body.replace("\\", "\\\\")) + "]")
                i = j + 1
        elif glob[i] == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


@lru_cache(maxsize=256)
def _anchored(pattern: str) -> re.Pattern:
    return re.compile(glob_to_regex(pattern).pattern + r"\Z")


def is_excluded(path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True if `path` matches a glob. A pattern without "/" matches the file name anywhere;
    a relative pattern with "/" may start in any directory."""
    if not path:
        return False
    p = path.replace("\\", "/")
    name = PurePosixPath(p).name
    for pat in patterns:
        if "/" not in pat:
            if _anchored(pat).match(name):
                return True
            continue
        if not pat.startswith(("/", "**")):
            pat = "**/" + pat
        if _anchored(pat).match(p.lstrip("/")) or _anchored(pat).match(p):
            return True
    return False
