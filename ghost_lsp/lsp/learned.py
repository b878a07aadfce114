"""The workspace's learned model, as the server sees it: which model folder to serve, whether a
learned one appeared or changed since it was loaded, and (setting `learn = "idle"`) a low-priority
`ghost-lsp learn` run after a while without typing.

`ghost-lsp learn` (an offline tool: ghost_lsp/tools/learn/) installs a complete model folder at
settings.core.learned_dir(root) by renaming it into place; the server only reads that folder,
never imports the tool, and runs it (for "idle") as a separate process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from lsprotocol import types

from ghost_lsp.settings.core import Settings, data_dir, learned_dir, model_dir, project_key

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0  # how often a request may stat the learned model's manifest


def serving_folder(s: Settings, root: str | None) -> tuple[Path, bool]:
    """(model folder to serve, whether it is the workspace's learned model). The learned model
    is used when the setting allows it, no model is named in the settings and none is remote."""
    if s.learned_model and root and not s.model and not s.remote_url:
        learned = learned_dir(root)
        if (learned / "manifest.json").is_file():
            return learned, True
    return model_dir(s), False


def stamp(folder: Path) -> tuple[int, int, int] | None:
    """What changes when a model folder is replaced: its manifest's (or a .gguf file's) inode,
    mtime and size."""
    try:
        path = Path(folder)
        st = os.stat(path if path.suffix.lower() == ".gguf" else path / "manifest.json")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Watch:
    """Throttled check: has the folder the server should serve changed since `loaded`?"""

    def __init__(self) -> None:
        self.loaded: tuple[Path, tuple | None] | None = None  # (folder, stamp) of the engine serving
        self._next = 0.0

    def mark(self, folder: Path) -> None:
        self.loaded = (folder, stamp(folder))

    def changed(self, s: Settings, root: str | None, *, now: float | None = None) -> Path | None:
        """The folder to swap to, or None (at most one stat every CHECK_EVERY_S)."""
        now = time.monotonic() if now is None else now
        if self.loaded is None or now < self._next:
            return None
        self._next = now + CHECK_EVERY_S
        folder, _ = serving_folder(s, root)
        if (folder, stamp(folder)) != self.loaded:
            return folder
        return None


class IdleLearner:
    """Runs `ghost-lsp learn ROOT` in the background (its own process, niced by the command
    itself) once the user has not typed for `learn_idle_minutes`, if they typed since the last
    run, and at most once per 6 × `learn_idle_minutes`. A run outlives the server (it is
    time-boxed and installs nothing half-done)."""

    def __init__(self) -> None:
        self.last_typed = time.monotonic()
        self.typed_since_run = False
        self.last_run = float("-inf")
        self.proc: subprocess.Popen | None = None

    def typed(self) -> None:
        self.last_typed = time.monotonic()
        self.typed_since_run = True

    def due(self, s: Settings, root: str | None, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        idle = s.learn_idle_minutes * 60
        return (s.learn == "idle" and bool(root) and s.learned_model and not s.model and not s.remote_url
                and self.typed_since_run and now - self.last_typed >= idle
                and now - self.last_run >= 6 * idle and (self.proc is None or self.proc.poll() is not None))

    def start(self, s: Settings, root: str) -> None:
        self.last_run, self.typed_since_run = time.monotonic(), False
        logs = data_dir() / "learned"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "ghost_lsp.cli", "learn", root, "--no-progress"]
        for glob in s.exclude:  # the editor's exclude globs (a client may send its own), not only the defaults
            cmd += ["--exclude", glob]
        with open(logs / f"{project_key(root)}.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        log.info("learning from %s in the background (pid %d, log %s)", root, self.proc.pid, out.name)


class LearnedModel:
    """The language server's part in this (a mixin of lsp/server.py's GhostServer, which has
    `settings`, `completer`, `watch`, `idle_learner`, `served`, `_loads`, `_swap_task`, `tell`,
    `workspace_root` and `load_engine_at`)."""

    def init_learned(self) -> None:
        self.watch = Watch()  # the workspace's learned model appearing or changing
        self._swap_task: asyncio.Future | None = None
        self.served: Path | None = None  # the folder of the engine answering
        self._loads = 0  # engines installed so far: a swap that loaded over a newer one drops its own
        self.idle_learner = IdleLearner()
        self._idle_task: asyncio.Future | None = None

    async def serve_base_instead(self, folder: Path, cause: str) -> bool:
        """The workspace's learned model at `folder` did not load: serve the base model, and try
        the learned one again when it changes. False if the base does not load either."""
        self.tell(f"the workspace's learned model was not loaded ({cause}); serving the base model")
        self.watch.mark(folder)
        try:
            engine = await asyncio.to_thread(self.load_engine_at, model_dir(self.settings))
        except Exception as e:  # noqa: BLE001 - said by the caller's message
            log.warning("the base model did not load either: %s", e)
            return False
        self.completer.engine, self.served = engine, model_dir(self.settings)
        self._loads += 1
        return True

    def serving_folder(self, s: Settings | None = None):
        """(model folder, whether it is the workspace's learned model): lsp/learned.py."""
        return serving_folder(s or self.settings, self.workspace_root())

    def check_learned(self) -> None:
        """On a request, cheaply (one stat every few seconds): when the workspace's learned model
        appeared, changed or went away, load the new engine off the request path, then swap."""
        if self._swap_task is not None and not self._swap_task.done():
            return
        folder = self.watch.changed(self.settings, self.workspace_root())
        if folder is not None:
            self._swap_task = asyncio.ensure_future(self._swap(folder))

    async def _swap(self, folder) -> None:
        self.watch.mark(folder)  # one try per version of the folder: a broken one is not retried
        loads = self._loads
        try:
            engine = await asyncio.to_thread(self.load_engine_at, folder)
        except Exception as e:  # noqa: BLE001 - the engine serving keeps serving
            self.tell(f"model {folder} not loaded ({e}); still serving the one loaded before")
            return
        if loads != self._loads or folder != self.serving_folder()[0]:
            return  # settings or another swap moved on while this one loaded
        self._loads += 1
        old, self.completer.engine = self.completer.engine, engine  # requests under way keep theirs
        self.served = folder
        self.completer.forward.clear()
        learned = self.serving_folder()[1] and folder == self.serving_folder()[0]
        self.tell(f"now serving {engine.model_id}" + (", the model learned from this workspace" if learned else "")
                  + f" ({folder}); was {old.model_id if old is not None else 'none'}", types.MessageType.Info)

    async def idle_learning(self, every_s: float = 30.0) -> None:
        """Setting learn = "idle": run `ghost-lsp learn` on the workspace after a pause in typing."""
        while True:
            await asyncio.sleep(every_s)
            root = self.workspace_root()
            if self.idle_learner.due(self.settings, root):
                try:
                    self.idle_learner.start(self.settings, root)
                except OSError as e:
                    self.tell(f"could not start `ghost-lsp learn` ({e})")

