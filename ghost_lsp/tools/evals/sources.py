"""Held-out Python source for the evals: a folder, a file, an sdist archive, or a PyPI package
reserved for evaluation (downloaded once as an sdist with pip into a cache folder).

Reserved packages (data/eval-reserved.txt) are never in a training corpus, so a model has
not seen them; other code may have been trained on, and the eval says so in its record.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

MAX_FILE_BYTES = 200_000
_SKIP_DIRS = {".git", ".tox", ".venv", "venv", "node_modules", "__pycache__", "build", "dist"}


def reserved_packages() -> set[str]:
    from ghost_lsp.tools.reserved import EVAL_RESERVED, load_reserved

    return load_reserved(EVAL_RESERVED) if EVAL_RESERVED.exists() else set()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ghost-lsp" / "eval-sources"


def download_sdist(name: str, dest: Path | None = None) -> Path:
    """The sdist of PyPI package `name` (cached); raises ValueError with pip's reason."""
    dest = dest or cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    mine = re.compile(re.escape(re.sub(r"[-_.]+", "_", name.lower())) + r"_\d")
    have = [p for p in dest.iterdir() if mine.match(re.sub(r"[-_.]+", "_", p.name.lower()))]
    if have:
        return sorted(have)[-1]
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           "--disable-pip-version-check", "-q", "-d", str(dest), name],
                          capture_output=True, text=True, timeout=600)
    have = [p for p in dest.iterdir() if mine.match(re.sub(r"[-_.]+", "_", p.name.lower()))]
    if not have:  # pip may exit non-zero over index warnings yet have fetched the file
        raise ValueError(f"cannot download the sdist of {name!r}: {proc.stderr.strip()[-300:]}")
    return sorted(have)[-1]


def _is_test_path(rel: str) -> bool:
    parts = rel.replace("\\", "/").split("/")
    return any(p in ("test", "tests", "testing") for p in parts[:-1]) or parts[-1].startswith("test_")


def read_tree(root: str | Path) -> list[tuple[str, str]]:
    """(path, text) of every readable UTF-8 .py file under `root`, in path order, nothing skipped."""
    files = []
    for p in sorted(Path(root).rglob("*.py")):
        try:
            files.append((str(p), p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return files


def read_python_files(source: str | Path, include_tests: bool = False) -> list[tuple[str, str]]:
    """(relative path, text) of every UTF-8 .py file in a folder, file or .tar.gz/.zip archive."""
    src = Path(source)
    out: list[tuple[str, str]] = []

    def add(rel: str, data: bytes) -> None:
        if len(data) > MAX_FILE_BYTES or (not include_tests and _is_test_path(rel)):
            return
        try:
            out.append((rel, data.decode("utf-8")))
        except UnicodeDecodeError:
            pass

    if src.is_dir():
        for p in sorted(src.rglob("*.py")):
            if not _SKIP_DIRS & set(p.relative_to(src).parts):
                add(str(p.relative_to(src)), p.read_bytes())
    elif src.is_file() and src.suffix == ".py":
        add(src.name, src.read_bytes())
    elif src.is_file() and src.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(src) as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                if m.isfile() and m.name.endswith(".py"):
                    add(m.name, tf.extractfile(m).read())
    elif src.is_file() and src.suffix == ".zip":
        with zipfile.ZipFile(src) as zf:
            for n in sorted(zf.namelist()):
                if n.endswith(".py"):
                    add(n, zf.read(n))
    else:
        raise ValueError(f"{src}: not a folder, .py file or .tar.gz/.zip archive")
    return out
