"""Helix, replayed: no Helix binary can be installed here, so these tests check the shipped
editors/helix/languages.toml and drive the real `ghost-lsp serve` the way Helix does —
its recorded initialize capabilities (tests/editors/data/helix_capabilities.json: UTF-8
offered first, no inline completion), its `config` as initializationOptions and as
didChangeConfiguration, completion items applied as incremental didChange and no
completion-item command. The real editor is NOT run.

Also the "one inference per keystroke" rule: a client with inline completion gets no
completion items unless it asks for them (setting `completionItems`)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest
from editor_helpers import EDITORS, FAST, server_command
from lsprotocol import types
from pygls.protocol import default_converter
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from ghost_lsp.settings.core import from_dict

HERE = Path(__file__).resolve().parent
LANGUAGES = EDITORS / "helix" / "languages.toml"
SOURCE = '''import os


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def add(a, b):
    return a + b
'''
# (line, text put there): the cursor goes at its end; the first spot with a suggestion wins.
SPOTS = [(9, "    return "), (3, "def "), (0, "import "), (5, "    "), (9, "    x = ")]


def helix_capabilities() -> types.ClientCapabilities:
    raw = json.loads((HERE / "data" / "helix_capabilities.json").read_text())
    raw.pop("_source")
    return default_converter().structure(raw, types.ClientCapabilities)


def helix_config() -> dict:
    return tomllib.loads(LANGUAGES.read_text())["language-server"]["ghost"]["config"]


async def start(model: Path, db: Path, caps: types.ClientCapabilities, init_options) -> tuple[LanguageClient, types.InitializeResult]:
    lsp = await ClientServerConfig(server_command=server_command(model, db)).start()
    result = await lsp.initialize_session(types.InitializeParams(
        capabilities=caps, initialization_options=init_options,
        client_info=types.ClientInfo(name="helix", version="25.07.1")))
    return lsp, result


async def stop(lsp: LanguageClient) -> None:
    try:
        await lsp.shutdown_session()
    finally:
        await lsp.stop()


def test_languages_toml_parses_and_adds_ghost_next_to_the_usual_server():
    data = tomllib.loads(LANGUAGES.read_text())
    ghost = data["language-server"]["ghost"]
    assert ghost["command"] == "ghost-lsp" and ghost["args"] == ["serve"]
    python = next(lang for lang in data["language"] if lang["name"] == "python")
    servers = python["language-servers"]
    assert {"name": "ghost", "only-features": ["completion"]} in servers
    assert any(isinstance(s, str) for s in servers)  # the user's usual server stays
    settings, warnings = from_dict(ghost["config"])
    assert warnings == [] and settings.max_new_tokens == ghost["config"]["maxNewTokens"]


async def test_helix_session_completion_items_and_inferred_accept(model_dir, tmp_path):
    db = tmp_path / "f.db"
    lsp, init = await start(model_dir, db, helix_capabilities(), {**helix_config(), **FAST})
    try:
        assert init.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        assert init.capabilities.completion_provider is not None
        # Helix sends its `config` again after initialized (and on :config-reload).
        lsp.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={**helix_config(), **FAST}))
        for n, (line, text) in enumerate(SPOTS):
            lines = SOURCE.split("\n")
            lines[line] = text
            uri = (tmp_path / f"h{n}.py").as_uri()
            doc = "\n".join(lines)
            lsp.text_document_did_open(types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
            # UTF-8 columns: the byte length of the line (ASCII here, so also its length).
            cursor = types.Position(line=line, character=len(text.encode()))
            got = await asyncio.wait_for(lsp.text_document_completion_async(types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=cursor)), 20)
            if got is None or not got.items:
                continue
            item = got.items[0]
            assert item.text_edit.range.end == cursor
            # Helix applies the edit as one incremental change and runs no command.
            lsp.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=item.text_edit.range, text=item.text_edit.new_text)]))
            assert wait_rows(db, "select kind, detail from events where kind = 'accepted'")
            rows = wait_rows(db, "select kind, detail from events where kind = 'accepted'")
            assert json.loads(rows[0][1]).get("how") == "edit"
            assert [m.message for m in lsp.messages] == []  # no settings warning for the shipped config
            return
        pytest.fail(f"no completion item at any of {len(SPOTS)} spots")
    finally:
        await stop(lsp)


def wait_rows(db: Path, sql: str, timeout: float = 5.0) -> list[tuple]:
    end = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                rows = con.execute(sql).fetchall()
        except sqlite3.OperationalError:
            rows = []
        if rows or time.monotonic() > end:
            return rows
        time.sleep(0.1)


def vscode_like_capabilities() -> types.ClientCapabilities:
    """VS Code's recorded capabilities plus inline completion (vscode-languageclient ≥ 10)."""
    caps = client_capabilities("visual_studio_code")
    caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    return caps


@pytest.mark.parametrize("options,answers", [(FAST, False), ({**FAST, "completionItems": True}, True)])
async def test_inline_clients_get_no_second_inference(model_dir, tmp_path, options, answers):
    """VS Code asks for inline completion and completion on each keystroke: by default only
    the inline request runs the model; `completionItems: true` brings the items back."""
    lsp, _ = await start(model_dir, tmp_path / "f.db", vscode_like_capabilities(), options)
    try:
        for n, (line, text) in enumerate(SPOTS):
            lines = SOURCE.split("\n")
            lines[line] = text
            uri = (tmp_path / f"v{n}.py").as_uri()
            lsp.text_document_did_open(types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1,
                                                     text="\n".join(lines))))
            cursor = types.Position(line=line, character=len(text))
            inline = await asyncio.wait_for(lsp.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=cursor,
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))), 20)
            if inline is None or not inline.items:
                continue
            started = time.monotonic()
            items = await asyncio.wait_for(lsp.text_document_completion_async(types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=cursor)), 20)
            if answers:
                if items is None or not items.items:
                    continue  # the single-line path may filter out what the inline path kept
                assert items.items[0].command.command == "ghost.accept"
            else:
                assert items is None
                assert time.monotonic() - started < 0.5  # answered without running the model
            return
        pytest.fail(f"no suggestion at any of {len(SPOTS)} spots")
    finally:
        await stop(lsp)


@pytest.mark.parametrize("value,want,warned", [(True, True, False), (False, False, False), (None, None, False),
                                               ("yes", None, True)])
def test_completion_items_setting(value, want, warned):
    s, warnings = from_dict({"completionItems": value})
    assert s.completion_items is want and bool(warnings) is warned
