"""Feedback inferred by the real server process from the client's edits, and the feedback
file surviving a kill -9 in the middle of a burst of writes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import pytest_asyncio
from lsprotocol import types

from test_server import db_rows, pos, shown, start_server, stop_server, utf16_len

# The async tests share the module-scoped server's event loop; the kill -9 test is plain.
in_server_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def model_dir(request):
    """$GHOST_LSP_E2E_MODEL (any model folder) if set, else the e2e conftest's model."""
    env = os.environ.get("GHOST_LSP_E2E_MODEL")
    return env if env else request.getfixturevalue("model_dir")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(model_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "feedback.db"
    lsp, _ = await start_server(model_dir, db, init_options={"ghost": {"debounceMs": 0, "maxNewTokens": 24, "logLevel": "DEBUG",
        # this file tests the feedback loop, not suggestion quality: keep what the model says
        "filters": {"bracketBalance": False, "syntax": False, "confidence": False, "trivial": False}}})
    yield lsp, db
    await stop_server(lsp)


def type_text(lsp, uri: str, line: int, character: int, text: str, version: int) -> int:
    """Send one didChange per character, as an editor does while the user types."""
    for ch in text:
        version += 1
        lsp.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=pos(line, character), end=pos(line, character)), text=ch)]))
        if ch == "\n":
            line, character = line + 1, 0
        else:
            character += utf16_len(ch)
    return version


def event_detail(db, sid) -> dict:
    """The detail of the suggestion's one event."""
    (detail,) = db_rows(db, "SELECT detail FROM events WHERE suggestion_id = ?", (sid,))[0]
    return json.loads(detail)


def kinds(db, sid, want=1):
    return [k for (k,) in db_rows(db, "SELECT kind FROM events WHERE suggestion_id = ? ORDER BY id", (sid,), want=want)]


@in_server_loop
async def test_typing_the_suggestion_without_accepting_is_typed_anyway(server, tmp_path_factory):
    lsp, db = server
    uri, line, prefix, item, sid, suggestion = await shown(lsp, tmp_path_factory)
    type_text(lsp, uri, line, utf16_len(prefix), suggestion, 1)
    assert kinds(db, sid) == ["typed_anyway"]
    assert event_detail(db, sid)["chars"] == len(suggestion)


@in_server_loop
async def test_typing_something_else_is_rejected(server, tmp_path_factory):
    lsp, db = server
    uri, line, prefix, item, sid, suggestion = await shown(lsp, tmp_path_factory)
    other = "~" if not suggestion.startswith("~") else "`"
    type_text(lsp, uri, line, utf16_len(prefix), other + "x", 1)
    assert kinds(db, sid) == ["rejected"]
    assert event_detail(db, sid)["reason"] == "typed_other"


@in_server_loop
async def test_editor_inserting_the_item_then_the_command_is_one_accept(server, tmp_path_factory):
    lsp, db = server
    uri, line, prefix, item, sid, _ = await shown(lsp, tmp_path_factory)
    lsp.text_document_did_change(types.DidChangeTextDocumentParams(  # VS Code: replace the range
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(range=item.range, text=item.insert_text)]))
    await lsp.workspace_execute_command_async(types.ExecuteCommandParams(command="ghost.accept", arguments=[sid]))
    await asyncio.sleep(3)  # past the grace in which the edit waits for the command
    assert kinds(db, sid) == ["accepted"]
    assert event_detail(db, sid)["how"] == "command"


# -- kill -9 during a burst of writes -------------------------------------------------------------


def _frame(msg: dict) -> bytes:
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _serve(model_dir, db, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "ghost_lsp.cli", "serve", "--model", str(model_dir), "--db", str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.log", "ab"),
                            cwd=tmp_path)


def _init(proc, root):
    proc.stdin.write(_frame({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                             "params": {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {}}}))
    proc.stdin.write(_frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
    proc.stdin.flush()


def _accepts(proc, ids):
    proc.stdin.write(b"".join(_frame({"jsonrpc": "2.0", "id": f"r{i}", "method": "workspace/executeCommand",
                                      "params": {"command": "ghost.accept", "arguments": [i]}}) for i in ids))
    proc.stdin.flush()


def _committed(db) -> set[str]:
    try:  # the server may not have created the file yet (a slow start on a loaded machine)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return set()
    try:
        return {r[0] for r in conn.execute("SELECT suggestion_id FROM events WHERE kind = 'accepted'")}
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()


def test_kill_9_mid_burst_loses_no_committed_event(model_dir, tmp_path):
    db = tmp_path / "feedback.db"
    proc = _serve(model_dir, db, tmp_path)
    try:
        _init(proc, tmp_path)
        ids = [f"burst-{i:05d}" for i in range(10_000)]
        seen: set[str] = set()
        sent = 0
        deadline = time.monotonic() + 60
        while len(seen) < 3000 and time.monotonic() < deadline:
            # at most two chunks in flight: the writer's queue holds 1,000 and drops beyond that,
            # so a slow (2-core CI) writer must not be outrun
            if sent - len(seen) < 500:
                _accepts(proc, ids[sent:sent + 500])
                sent += 500
            time.sleep(0.02)
            seen |= _committed(db)
        assert len(seen) >= 3000, "the burst did not reach the file"
        _accepts(proc, ids[sent:sent + 500])  # so that writes are still queued when the kill lands
        os.kill(proc.pid, signal.SIGKILL)  # while more writes are still queued
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    after = _committed(db)
    assert seen <= after  # every event a reader saw committed is still there
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()

    proc = _serve(model_dir, db, tmp_path)  # the next start opens the same file and writes
    try:
        _init(proc, tmp_path)
        _accepts(proc, ["after-restart"])
        deadline = time.monotonic() + 20
        while "after-restart" not in _committed(db) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "after-restart" in _committed(db)
        assert after <= _committed(db)
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
