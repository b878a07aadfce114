"""The project index: outlines of the workspace's Python modules, for the prompt.

Built once in a background thread, then kept current file by file (`update`/`remove`, called on
didSave and workspace/didChangeWatchedFiles). It walks the workspace respecting `.gitignore`
files (nested ones included) and the settings' exclusion globs, never follows symlinked
directories (so symlink loops cannot trap it), and caps itself — files visited, file size,
build time — saying so in the log. Binary and unreadable files are skipped and counted.

For each Python module it keeps, parsed with `ast`: the source text of each top-level
definition's header (signature, a class's outline: its methods' signatures and fields) and
the names the module imports, so re-exports (`from .schema import Schema` in a package's
`__init__`) resolve to the real definition. Other languages are not indexed (the open-files
provider still gives them neighbour windows).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ghost_lsp.context.outline import ModuleInfo, outline_module
from ghost_lsp.settings.globs import glob_to_regex, is_excluded

log = logging.getLogger(__name__)

ALWAYS_SKIP = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox",
                         ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages"})
PY_SUFFIXES = (".py", ".pyi")


# -- .gitignore ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    base: str  # directory of the .gitignore, relative to the root ("" = root)
    regex: re.Pattern
    negate: bool
    dir_only: bool


class IgnoreRules:
    """Git's ignore semantics, the common part: `#` comments, `!` negation, trailing `/` for
    directories, patterns with an inner `/` anchored to their .gitignore's folder, `**`."""

    def __init__(self) -> None:
        self.rules: list[_Rule] = []

    def add(self, base: str, text: str) -> None:
        for raw in text.splitlines():
            line = raw.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            if not line:
                continue
            anchored = "/" in line
            line = line.lstrip("/")
            pattern = line if anchored else "**/" + line
            self.rules.append(_Rule(base, glob_to_regex(pattern), negate, dir_only))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        result = False
        for r in self.rules:
            if r.base:
                if not rel.startswith(r.base + "/"):
                    continue
                sub = rel[len(r.base) + 1:]
            else:
                sub = rel
            if r.dir_only and not is_dir:
                continue
            if r.regex.fullmatch(sub):
                result = not r.negate
        return result


# -- the index ------------------------------------------------------------------------------


@dataclass
class IndexStats:
    files_seen: int = 0
    modules: int = 0
    skipped_large: int = 0
    skipped_binary: int = 0
    skipped_unreadable: int = 0
    capped: str = ""  # why the walk stopped early, "" if it did not
    seconds: float = 0.0


class ProjectIndex:
    """Python module outlines of one workspace folder. Thread-safe: built and updated on other
    threads, read by requests (which see whatever is built so far)."""

    def __init__(self, root: str | Path, *, max_files: int = 20_000, max_file_bytes: int = 1_000_000,
                 max_seconds: float = 60.0, exclude: tuple[str, ...] = ()):
        self.root = Path(root).resolve()
        self.max_files, self.max_file_bytes, self.max_seconds = max_files, max_file_bytes, max_seconds
        self.exclude = exclude
        self.stats = IndexStats()
        self.ready = threading.Event()
        self._modules: dict[str, ModuleInfo] = {}   # dotted name -> info
        self._by_path: dict[str, str] = {}          # absolute path -> dotted name
        self._aliases: dict[str, str] = {}          # dotted name -> its full-path alias
        self._lock = threading.Lock()
        self._ignore = IgnoreRules()
        self._thread: threading.Thread | None = None

    # -- building -------------------------------------------------------------------------

    def start(self) -> "ProjectIndex":
        """Build in a daemon thread; `ready` is set when done (also after a failure)."""
        self._thread = threading.Thread(target=self._build_safely, name="ghost-index", daemon=True)
        self._thread.start()
        return self

    def _build_safely(self) -> None:
        try:
            self.build()
        except Exception:  # noqa: BLE001 - the index is optional; requests go on without it
            log.exception("project index of %s failed; completions go on without it", self.root)
        finally:
            self.ready.set()

    def _excluded(self, rel: str) -> bool:
        if not self.exclude:
            return False

        return is_excluded(rel, self.exclude)

    def _walk(self):
        """Yield (absolute path, relative posix path) of indexable files, within the caps."""
        t0 = time.monotonic()
        stack = [(str(self.root), "")]
        seen_dirs: set[tuple[int, int]] = set()
        while stack:
            folder, rel_folder = stack.pop()
            try:
                st = os.stat(folder)
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:  # bind mounts and the like can still loop
                    continue
                seen_dirs.add(key)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.stats.skipped_unreadable += 1
                log.debug("index: cannot list %s: %s", folder, e)
                continue
            gi = next((e for e in entries if e.name == ".gitignore"), None)
            if gi is not None:
                try:
                    self._ignore.add(rel_folder, Path(gi.path).read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    pass
            subdirs = []
            for e in entries:
                rel = f"{rel_folder}/{e.name}" if rel_folder else e.name
                try:
                    # never follow a symlinked directory: that is where loops come from
                    is_dir = e.is_dir(follow_symlinks=False)
                    is_file = not is_dir and e.is_file()
                except OSError:
                    self.stats.skipped_unreadable += 1
                    continue
                if is_dir:
                    if e.name in ALWAYS_SKIP or self._ignore.ignored(rel, True) or self._excluded(rel):
                        continue
                    subdirs.append((e.path, rel))
                elif is_file:
                    if self._ignore.ignored(rel, False) or self._excluded(rel):
                        continue
                    self.stats.files_seen += 1
                    if self.stats.files_seen > self.max_files:
                        self.stats.capped = f"more than {self.max_files} files"
                        return
                    if time.monotonic() - t0 > self.max_seconds:
                        self.stats.capped = f"walk took over {self.max_seconds:.0f} s"
                        return
                    if e.name.endswith(PY_SUFFIXES):
                        yield e.path, rel
            stack.extend(reversed(subdirs))

    def build(self) -> IndexStats:
        t0 = time.monotonic()
        self.stats = IndexStats()
        self._ignore = IgnoreRules()
        files = list(self._walk())
        packages = {rel.rsplit("/", 1)[0] if "/" in rel else "" for _, rel in files
                    if rel.endswith("/__init__.py") or rel == "__init__.py"}
        for path, rel in files:
            if self._elapsed_over(t0):
                break
            self._index_file(path, rel, packages)
        self.stats.modules = len(self._modules)
        self.stats.seconds = time.monotonic() - t0
        s = self.stats
        log.info("project index of %s: %d python modules from %d files in %.2f s", self.root, s.modules,
                 s.files_seen, s.seconds)
        if s.capped:
            log.warning("project index of %s capped itself: %s; the rest is not indexed", self.root, s.capped)
        skipped = [f"{n} {why}" for n, why in ((s.skipped_large, f"over {self.max_file_bytes // 1000} kB"),
                                                (s.skipped_binary, "binary"), (s.skipped_unreadable, "unreadable"))
                   if n]
        if skipped:
            log.warning("project index of %s skipped files: %s", self.root, ", ".join(skipped))
        return s

    def _elapsed_over(self, t0: float) -> bool:
        if time.monotonic() - t0 > self.max_seconds:
            self.stats.capped = self.stats.capped or f"indexing took over {self.max_seconds:.0f} s"
            return True
        return False

    def _read(self, path: str) -> str | None:
        try:
            size = os.stat(path).st_size
            if size > self.max_file_bytes:
                self.stats.skipped_large += 1
                return None
            with open(path, "rb") as f:
                data = f.read(self.max_file_bytes + 1)
        except OSError:
            self.stats.skipped_unreadable += 1
            return None
        if b"\x00" in data[:8192]:
            self.stats.skipped_binary += 1
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.stats.skipped_binary += 1
            return None

    @staticmethod
    def module_name(rel: str, packages: set[str]) -> tuple[str, bool]:
        """Dotted name from the topmost package folder (so `src/pkg/mod.py` is `pkg.mod`)."""
        parts = rel[:-len(Path(rel).suffix)].split("/")
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        folder_parts = rel.split("/")[:-1]
        top = len(folder_parts)
        while top > 0 and "/".join(folder_parts[:top]) in packages:
            top -= 1
        return ".".join(parts[top:]), is_package

    def _index_file(self, path: str, rel: str, packages: set[str]) -> None:
        text = self._read(path)
        if text is None:
            return
        name, is_package = self.module_name(rel, packages)
        if not name:
            return
        info = outline_module(text, path, name, is_package)
        # Folders without __init__.py may still be imported by their full dotted path
        # (namespace packages), so that name is an alias.
        full = rel[:-len(Path(rel).suffix)].replace("/", ".").removesuffix(".__init__")
        with self._lock:
            old = self._by_path.get(path)
            if old and old != name:
                self._modules.pop(old, None)
                self._aliases.pop(old, None)
            self._modules[name] = info
            self._by_path[path] = name
            if full != name and full not in self._modules:
                self._modules[full] = info
                self._aliases[name] = full

    # -- keeping current --------------------------------------------------------------------

    def _rel(self, path: str | Path) -> str | None:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return None

    def update(self, path: str | Path) -> bool:
        """Re-read one file after it was saved or changed on disk. False if not indexable."""
        rel = self._rel(path)
        if rel is None or not rel.endswith(PY_SUFFIXES) or any(p in ALWAYS_SKIP for p in rel.split("/")):
            return False
        if self._ignore.ignored(rel, False) or self._excluded(rel):
            return False
        if not os.path.isfile(path):
            self.remove(path)
            return False
        folder = Path(path).resolve().parent
        packages = set()
        while folder != self.root and (folder / "__init__.py").is_file():
            packages.add(folder.relative_to(self.root).as_posix())
            folder = folder.parent
        self._index_file(str(Path(path).resolve()), rel, packages)
        return True

    def remove(self, path: str | Path) -> None:
        key = str(Path(path).resolve())
        with self._lock:
            name = self._by_path.pop(key, None)
            if name:
                self._modules.pop(name, None)
                alias = self._aliases.pop(name, None)
                if alias:
                    self._modules.pop(alias, None)

    # -- lookups ------------------------------------------------------------------------------

    def module(self, name: str) -> ModuleInfo | None:
        return self._modules.get(name)

    def module_of_path(self, path: str) -> str | None:
        try:
            return self._by_path.get(str(Path(path).resolve()))
        except OSError:
            return None

    def definition(self, module: str, name: str, hops: int = 4) -> tuple[str, str] | None:
        """(path, outline) of `name` as `module` exposes it, following re-exports; a submodule
        gives its module outline. None if the project does not define it."""
        for _ in range(hops):
            info = self._modules.get(module)
            if info is None:
                sub = self._modules.get(f"{module}.{name}")
                return (sub.path, sub.outline) if sub and sub.outline else None
            if name in info.defs:
                return info.path, info.defs[name]
            sub = self._modules.get(f"{module}.{name}")
            if sub is not None:
                return (sub.path, sub.outline) if sub.outline else None
            target = info.imports.get(name)
            if target is None:
                return None
            module, attr = target
            if attr is None:
                sub = self._modules.get(module)
                return (sub.path, sub.outline) if sub and sub.outline else None
            name = attr
        return None

    def paths(self) -> list[str]:
        """Absolute paths of the indexed modules, in indexing order (the n-gram cache reads them)."""
        with self._lock:
            return list(self._by_path)

    def __len__(self) -> int:
        return len(self._by_path)
