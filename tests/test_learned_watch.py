"""The server's side of learned models (lsp/learned.py): the throttled check that notices a
learned model appearing, changing or going, and when `learn = "idle"` starts a run."""

from __future__ import annotations

import json
import os
import shutil

from ghost_lsp.lsp.learned import IdleLearner, Watch, serving_folder
from ghost_lsp.settings.core import Settings, from_dict, learned_dir


def test_watch_sees_a_learned_model_appear_change_and_go(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    base, root = tmp_path / "base", str(tmp_path / "proj")
    s = Settings(model="")
    monkeypatch.setenv("GHOST_LSP_MODEL", str(base))
    w = Watch()
    assert w.changed(s, root, now=0) is None  # nothing loaded yet: nothing to compare
    w.mark(serving_folder(s, root)[0])
    assert w.changed(s, root, now=10) is None
    dest = learned_dir(root)
    dest.mkdir(parents=True)
    (dest / "manifest.json").write_text("{}")
    assert w.changed(s, root, now=10.5) is None  # throttled: one look every CHECK_EVERY_S
    assert w.changed(s, root, now=20) == dest  # appeared
    w.mark(dest)
    assert w.changed(s, root, now=30) is None
    new = tmp_path / "new"
    new.mkdir()
    (new / "manifest.json").write_text(json.dumps({"name": "v2"}))
    shutil.rmtree(dest)
    os.replace(new, dest)  # a newer learned model renamed into place
    assert w.changed(s, root, now=40) == dest
    w.mark(dest)
    shutil.rmtree(dest)
    assert w.changed(s, root, now=50) == base  # gone: back to the base


def test_idle_learning_is_due_only_after_typing_then_a_pause(tmp_path):
    s, warnings = from_dict({"learn": "idle", "learnIdleMinutes": 1})
    assert not warnings and s.learn == "idle"
    assert from_dict({"learn": "always"})[1]  # a bad mode is a warning, "off" kept
    idle = IdleLearner()
    root = str(tmp_path)
    t = idle.last_typed
    assert not idle.due(s, root, now=t + 3600)  # never typed: nothing new to learn
    idle.typed()
    t = idle.last_typed
    assert not idle.due(s, root, now=t + 30)  # still typing
    assert idle.due(s, root, now=t + 61)
    assert not idle.due(Settings(), root, now=t + 61)  # learn = "off" (the default)
    assert not idle.due(Settings(learn="idle", model="/named"), root, now=t + 61)  # a named model is served
    assert not idle.due(s, None, now=t + 61)  # no workspace
    idle.last_run, idle.typed_since_run = t + 61, False
    idle.typed()
    assert not idle.due(s, root, now=idle.last_typed + 61)  # at most once per 6 idle periods


def test_idle_learning_runs_learn_as_its_own_process(tmp_path, monkeypatch):
    import ghost_lsp.lsp.learned as learned

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    started = []

    class FakePopen:
        pid = 4242

        def __init__(self, cmd, **kw):
            started.append((cmd, kw))

        def poll(self):
            return None  # still running

    monkeypatch.setattr(learned.subprocess, "Popen", FakePopen)
    s = Settings(learn="idle", learn_idle_minutes=1, exclude=("**/customer_data/**", "*.key"))
    idle = IdleLearner()
    idle.typed()
    idle.start(s, str(tmp_path))
    (cmd, kw), = started
    assert cmd[1:] == ["-m", "ghost_lsp.cli", "learn", str(tmp_path), "--no-progress",
                       "--exclude", "**/customer_data/**", "--exclude", "*.key"]  # the editor's globs go along
    assert kw["start_new_session"] and kw["stdin"] is learned.subprocess.DEVNULL
    idle.typed()
    assert not idle.due(s, str(tmp_path), now=idle.last_typed + 10_000)  # one run at a time
