"""Scripted editing sessions (ghost_lsp/tools/evals/scripted.py) played against the real server
process: the suggestion is whatever the server showed, the actions go over LSP (didChange,
ghost.accept, didClose, a new request elsewhere) and the label is read back from the
feedback file the server wrote. Scenarios that need minutes of waiting (expiry, survival)
are covered in-process by tests/test_scripted_sessions.py on a fake clock; `ghost-lsp sessions`
prints the confusion table of the in-process corpus."""

from __future__ import annotations

import asyncio
import random

import pytest
import pytest_asyncio
from lsprotocol import types

from ghost_lsp.tools.evals.scripted import (LONG_WAITS, MULTILINE, NONE, SCENARIOS, Change, Close, Command, Show, Wait,
                                         build, strongest)
from test_server import (SOURCE, SPOTS, db_rows, inline, items, pos, shown, start_server,
                         stop_server)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Undo after accept waits seconds, not minutes, before the undo: it runs live with waits capped.
LIVE = [s for s in SCENARIOS if (s not in LONG_WAITS or s == "undo_after_accept") and s not in MULTILINE]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(model_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "feedback.db"
    lsp, _ = await start_server(model_dir, db, init_options={"ghost": {
        "debounceMs": 0, "maxNewTokens": 16, "forwardCache": False, "ngramCache": False,
        # the labels are under test, not the suggestion's quality: keep what the model says; no n-gram
        # cache, or after a dozen copies of SOURCE a trained model only repeats the text after the cursor
        "filters": {"bracketBalance": False, "syntax": False, "confidence": False, "trivial": False}}})
    yield lsp, db
    await stop_server(lsp)


def _position(text: str, offset: int) -> types.Position:
    """Code-point offset → LSP position (the test document is ASCII: UTF-16 units = code points)."""
    before = text[:offset]
    return pos(before.count("\n"), len(before) - (before.rfind("\n") + 1))


async def _play(lsp, uri: str, session, sid: str, text: str) -> None:
    version = 1
    for a in session.actions:
        if isinstance(a, Show):
            if a.sid != session.sid:  # the cursor moved and the editor asked again elsewhere
                here = text[:session.cursor].count("\n")
                lines = text.split("\n")
                for line, _ in SPOTS:  # the first other line where the model says something
                    if line != here and items(await inline(lsp, uri, pos(line, len(lines[line])))):
                        break
        elif isinstance(a, Change):
            version += 1
            lsp.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(start=_position(text, a.start), end=_position(text, a.end)), text=a.text)]))
            text = text[:a.start] + a.text + text[a.end:]
        elif isinstance(a, Command):
            await lsp.workspace_execute_command_async(types.ExecuteCommandParams(command="ghost.accept",
                                                                                 arguments=[sid]))
        elif isinstance(a, Wait):
            # keystroke pauses shrink (the labels do not depend on them); grace periods (3 s) are real
            await asyncio.sleep(min(a.seconds, 3.5) if a.seconds >= 1.0 else 0.005)
        elif isinstance(a, Close):
            lsp.text_document_did_close(types.DidCloseTextDocumentParams(
                text_document=types.TextDocumentIdentifier(uri=uri)))


async def test_scripted_sessions_through_the_server_agree_with_the_script(server, tmp_path_factory):
    lsp, db = server
    rng = random.Random(7)
    results = []
    for scenario in LIVE * 2:
        uri, line, prefix, _, sid, suggestion = await shown(lsp, tmp_path_factory, f"{scenario}.py")
        cursor = sum(len(x) + 1 for x in SOURCE.split("\n")[:line]) + len(prefix)
        other = "zz_mine = 0" if not suggestion.startswith("z") else "yy_mine = 0"
        try:
            session = build(scenario, SOURCE, cursor, suggestion, other, random.Random(rng.random()), sid="live")
        except ValueError:  # e.g. a one-word suggestion cannot carry a word accept
            continue
        await _play(lsp, uri, session, sid, SOURCE)
        rows = db_rows(db, "SELECT kind FROM events WHERE suggestion_id = ? AND kind != 'shown'", (sid,), timeout=6)
        results.append((scenario, session.label, strongest(k for (k,) in rows) if rows else NONE))
    wrong = [r for r in results if r[1] != r[2]]
    assert len({r[0] for r in results}) >= len(LIVE) - 1, results  # nearly every scenario ran
    agreement = 1 - len(wrong) / len(results)
    print(f"scripted sessions through the server: {len(results)} sessions, agreement {agreement:.1%}")
    assert agreement >= 0.98, wrong
