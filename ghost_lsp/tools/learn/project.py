"""What `ghost-lsp learn` may train on: the workspace's own source files, under the same rules
that keep text from the model at serving time, and a held-out slice of them.

A file is left out when `.gitignore` (nested ones too), the workspace's `.ghostignore` or the
`exclude` globs name it or a folder above it, when it sits in a folder nobody writes code in
(`.git`, `.venv`, `node_modules`, ... as the project index skips them), when it is a symlink
(a link may point outside the project, at a key file; links are how walks loop), binary, not
UTF-8, unreadable, larger than 1 MB, or not source code in the language table (data, JSON,
Markdown, plain text). Every kept file goes through the feedback log's secret redaction
(`feedback/redact.py`); each line in which it finds a secret is dropped (not replaced by a
marker: the model should not learn to write markers either), and the counts say so.

The held-out slice is chosen by a stable hash of the file's path (about 15 %), so a second
`learn` on the same project measures on the same files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ghost_lsp.context.index import ALWAYS_SKIP, IgnoreRules
from ghost_lsp.feedback.redact import redact
from ghost_lsp.languages import language_for_path
from ghost_lsp.settings.globs import is_excluded
from ghost_lsp.settings.layers import ghostignore

HELDOUT_SHARE = 0.15
MAX_FILE_BYTES = 1_000_000
MAX_FILES = 20_000
NOT_CODE = frozenset({"plaintext", "json", "jsonc", "markdown"})
MARKER = "[REDACTED"


@dataclass
class ProjectFile:
    rel: str  # posix path relative to the root
    text: str
    heldout: bool = False


@dataclass
class ProjectData:
    root: Path
    files: list[ProjectFile] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # why files or lines were left out

    @property
    def train(self) -> list[ProjectFile]:
        return [f for f in self.files if not f.heldout]

    @property
    def heldout(self) -> list[ProjectFile]:
        return [f for f in self.files if f.heldout]

    def count(self, why: str, n: int = 1) -> None:
        self.counts[why] = self.counts.get(why, 0) + n

    def describe(self) -> str:
        """The counts in one line: "3 files kept; left out: 2 gitignored, 1 binary"."""
        left = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(self.counts.items()) if n)
        return f"{len(self.files)} source files kept" + (f"; left out: {left}" if left else "")


def path_hash(rel: str) -> float:
    """A stable number in [0, 1] for a relative path."""
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def scrub(text: str) -> tuple[str, int]:
    """`text` without the lines in which the redactor finds a secret; (text, lines dropped)."""
    red = redact(text)
    if red == text:
        return text, 0
    kept, dropped = [], 0
    for line in red.splitlines(keepends=True):
        if MARKER in line:
            dropped += 1
        else:
            kept.append(line)
    return "".join(kept), dropped


def _read(path: str, data: ProjectData) -> str | None:
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            data.count("too_large")
            return None
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError:
        data.count("unreadable")
        return None
    if b"\x00" in raw[:8192]:
        data.count("binary")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        data.count("not_utf8")
        return None


def collect(root: str | Path, exclude: tuple[str, ...] | list[str] = ()) -> ProjectData:
    """The project's trainable source files (secret lines dropped), split train / held-out."""
    root = Path(root).resolve()
    data = ProjectData(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    patterns = tuple(exclude) + ghostignore(str(root))
    rules = IgnoreRules()
    stack: list[tuple[str, str]] = [(str(root), "")]
    seen_dirs: set[tuple[int, int]] = set()
    visited = 0
    while stack:
        folder, rel_folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            data.count("unreadable")
            continue
        gi = next((e for e in entries if e.name == ".gitignore"), None)
        if gi is not None and not gi.is_symlink():
            try:
                rules.add(rel_folder, Path(gi.path).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                pass
        subdirs = []
        for e in entries:
            rel = f"{rel_folder}/{e.name}" if rel_folder else e.name
            try:
                if e.is_symlink():
                    data.count("symlinks")
                    continue
                is_dir = e.is_dir(follow_symlinks=False)
                is_file = not is_dir and e.is_file(follow_symlinks=False)
            except OSError:
                data.count("unreadable")
                continue
            if is_dir:
                if e.name in ALWAYS_SKIP:
                    continue
                if rules.ignored(rel, True):
                    data.count("gitignored")
                elif is_excluded(rel, patterns) or is_excluded(rel + "/", patterns):
                    data.count("excluded")
                else:
                    subdirs.append((e.path, rel))
                continue
            if not is_file:
                data.count("not_regular_files")  # sockets, pipes, devices
                continue
            visited += 1
            if visited > MAX_FILES:
                data.count("over_the_file_cap")
                continue
            if rules.ignored(rel, False):
                data.count("gitignored")
            elif is_excluded(rel, patterns):
                data.count("excluded")
            elif language_for_path(rel) in NOT_CODE:
                data.count("not_code")
            else:
                text = _read(e.path, data)
                if text is None:
                    continue
                text, dropped = scrub(text)
                if dropped:
                    data.count("secret_lines_dropped", dropped)
                if text.strip():
                    data.files.append(ProjectFile(rel, text, path_hash(rel) < HELDOUT_SHARE))
                else:
                    data.count("empty")
        stack.extend(reversed(subdirs))
    _balance(data)
    return data


def _balance(data: ProjectData) -> None:
    """At least one file on each side when there are two or more: the smallest hash is held out."""
    if len(data.files) < 2:
        for f in data.files:
            f.heldout = False
        return
    by_hash = sorted(data.files, key=lambda f: path_hash(f.rel))
    if not any(f.heldout for f in data.files):
        by_hash[0].heldout = True
    if all(f.heldout for f in data.files):
        by_hash[-1].heldout = False
