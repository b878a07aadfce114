"""Next-line accuracy on held-out code: the one implementation every benchmark shares.

Cursor positions are sampled at line starts inside function bodies (after the indentation, where
an editor leaves the cursor after Enter). The completion for the cursor is compared with the
line the author really wrote: exact match (after trimming trailing whitespace) and edit
similarity (1 - Levenshtein distance / longer length).
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Position:
    path: str
    text: str
    line: int       # 0-based
    character: int  # code points, after the indentation
    target: str     # the rest of the line, right-trimmed

    @property
    def document(self) -> str:
        """The file as the editor holds it before the line is typed: the target line keeps only
        its indentation. Complete on this, not on `text`: a fill-in-the-middle prompt built from
        `text` has the answer in its suffix."""
        lines = self.text.split("\n")
        lines[self.line] = lines[self.line][: self.character]
        return "\n".join(lines)


def function_body_lines(source: str) -> list[int]:
    """0-based numbers of lines inside function bodies (not the `def` lines); [] if unparsable."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            # skip the docstring: predicting prose is a different task
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                body = node.body[1:]
            else:
                body = node.body
            if not body:
                continue
            start = body[0].lineno - 1
            end = (node.end_lineno or node.lineno) - 1
            lines.update(range(start, end + 1))
    return sorted(lines)


def suggestible_lines(text: str) -> list[int]:
    """0-based numbers of the lines worth predicting: code in function bodies, at least 4
    characters, not a comment (the next-line eval's positions, the scripted sessions' lines)."""
    lines = text.split("\n")
    out = []
    for n in function_body_lines(text):
        if n < len(lines):
            stripped = lines[n].strip()
            if len(stripped) >= 4 and not stripped.startswith("#"):
                out.append(n)
    return out


def sample_positions(files: Iterable[tuple[str, str]], count: int, seed: int = 0) -> list[Position]:
    """Sample `count` positions over (path, text) files, evenly by file first, deterministic."""
    rng = random.Random(seed)
    candidates: list[list[Position]] = []
    for path, text in files:
        src_lines = text.split("\n")
        per_file = []
        for n in suggestible_lines(text):
            line = src_lines[n]
            indent = len(line) - len(line.lstrip())
            per_file.append(Position(path, text, n, indent, line[indent:].rstrip()))
        if per_file:
            candidates.append(per_file)
    rng.shuffle(candidates)
    out: list[Position] = []
    # round-robin over files so one huge file does not dominate
    while len(out) < count and candidates:
        for per_file in list(candidates):
            if not per_file:
                candidates.remove(per_file)
                continue
            out.append(per_file.pop(rng.randrange(len(per_file))))
            if len(out) >= count:
                break
    return out


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, target: str) -> float:
    if not pred and not target:
        return 1.0
    return 1.0 - levenshtein(pred, target) / max(len(pred), len(target))


@dataclass
class NextLineResult:
    positions: int
    exact_match: float
    edit_similarity: float
    empty_rate: float
    samples: list[tuple[Position, str]]


def evaluate(positions: list[Position], complete: Callable[[Position], str], keep_samples: int = 0) -> NextLineResult:
    """Score `complete(position) -> predicted rest of line` on every position."""
    em = es = empty = 0.0
    samples = []
    for p in positions:
        pred = complete(p).split("\n", 1)[0].rstrip()
        em += pred == p.target
        es += edit_similarity(pred, p.target)
        empty += not pred
        if len(samples) < keep_samples:
            samples.append((p, pred))
    n = max(1, len(positions))
    return NextLineResult(len(positions), em / n, es / n, empty / n, samples)
