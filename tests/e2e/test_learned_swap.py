"""The real `ghost-lsp serve` swaps in the workspace's learned model live: it answers before,
while and after a learned model appears in its data folder, and then reports (ghost/health)
that the learned model answers. A broken learned model never stops the base from serving."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig, client_capabilities

from ghost_lsp.settings.core import learned_dir

pytestmark = pytest.mark.asyncio(loop_scope="function")

SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, item):\n        "
_QUALITY_OFF = {"filters": {"bracketBalance": False, "syntax": False, "confidence": False, "trivial": False}}
SETTINGS = {"debounceMs": 0, "maxNewTokens": 8, **_QUALITY_OFF}


def install_learned(model_dir: Path, dest: Path, name: str) -> None:
    """A model folder renamed into place (as `ghost-lsp learn` installs one), named `name`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-test")
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("checkpoint", "README.md"))
    man = json.loads((tmp / "manifest.json").read_text())
    man["name"] = name
    (tmp / "manifest.json").write_text(json.dumps(man))
    old = dest.with_name(f".{dest.name}.old-test")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


async def start(model_dir: Path, tmp_path: Path, project: Path):
    env = {**os.environ, "GHOST_LSP_MODEL": str(model_dir), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    config = ClientServerConfig(server_command=[sys.executable, "-m", "ghost_lsp.cli", "serve", "--db",
                                                str(tmp_path / "feedback.db")], server_env=env)
    lsp = await config.start()
    await lsp.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual_studio_code"), root_uri=project.as_uri(),
        initialization_options={"ghost": SETTINGS}))
    uri = (project / "m.py").as_uri()
    lsp.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=SOURCE)))
    return lsp, uri


async def ask(lsp, uri: str):
    """One inline completion request; it must be answered (a list or nothing), not time out."""
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=9, character=8),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    return await asyncio.wait_for(lsp.text_document_inline_completion_async(params), 20)


async def health(lsp) -> dict:
    got = await asyncio.wait_for(lsp.protocol.send_request_async("ghost/health", None), 10)
    return got if isinstance(got, dict) else {k: getattr(got, k) for k in dir(got) if not k.startswith("_")}


async def stop(lsp) -> None:
    try:
        await lsp.shutdown_session()
    finally:
        await lsp.stop()


async def test_learned_model_is_swapped_in_live(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "m.py").write_text(SOURCE)
    lsp, uri = await start(model_dir, tmp_path, project)
    try:
        await ask(lsp, uri)  # before: the base model answers
        before = await health(lsp)
        assert before["model_loaded"] and not before["learned_model"]
        assert before["model_dir"] == str(model_dir)

        install_learned(model_dir, learned_dir(project), "learned-for-test")
        answered, deadline, now = 0, time.monotonic() + 60, await health(lsp)
        while not now["learned_model"] and time.monotonic() < deadline:
            await ask(lsp, uri)  # during: every request is answered while the new engine loads
            answered += 1
            await asyncio.sleep(0.3)
            now = await health(lsp)
        assert now["learned_model"], now
        assert now["model"].startswith("learned-for-test:")
        assert now["model_dir"] == str(learned_dir(project))
        assert answered >= 1
        await ask(lsp, uri)  # after
        assert any("learned from this workspace" in m.message for m in lsp.messages)

        # a broken replacement: the learned model loaded before keeps answering
        broken = tmp_path / "broken"
        shutil.copytree(model_dir, broken, ignore=shutil.ignore_patterns("checkpoint"))
        (broken / "model.onnx").write_bytes(b"not a model")
        install_learned(broken, learned_dir(project), "broken")
        await asyncio.sleep(2.5)
        for _ in range(3):
            await ask(lsp, uri)
            await asyncio.sleep(0.5)
        after = await health(lsp)
        assert after["model"].startswith("learned-for-test:") and after["model_loaded"]
    finally:
        await stop(lsp)


async def test_a_broken_learned_model_leaves_the_base_serving(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "m.py").write_text(SOURCE)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken, ignore=shutil.ignore_patterns("checkpoint"))
    (broken / "model.onnx").write_bytes(b"not a model")
    install_learned(broken, learned_dir(project), "broken")
    lsp, uri = await start(model_dir, tmp_path, project)
    try:
        await ask(lsp, uri)
        h = await health(lsp)
        assert h["model_loaded"] and not h["learned_model"] and h["model_dir"] == str(model_dir)
    finally:
        await stop(lsp)
