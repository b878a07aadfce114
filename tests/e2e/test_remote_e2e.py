"""`ghost-lsp serve` with remote_url → a live `ghost-lsp serve-model`: suggestions come from the
model server; a killed server costs a bounded wait, and suggestions return when it comes back."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig, client_capabilities

from ghost_lsp.tools.bench.serving import free_port
from ghost_lsp.tools.bench.serving import start_model_server as start

TOKEN = "e2e-remote-token"
SOURCE = "def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, item):\n        self.items.append(item)\n"
SPOTS = [(1, "    return "), (6, "        self."), (5, "    def push(self, item):")]


def start_model_server(model: Path, port: int):
    return start(model, "--threads", "1", port=port, token=TOKEN, timeout=30.0)[0]


def served_requests(port: int) -> float:
    """Requests the model server ran: to the end (200) or until the client closed the stream
    (499: the remote engine stops reading once the completer's rules would cut the rest)."""
    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(('ghost_serve_requests_total{status="200"}', 'ghost_serve_requests_total{status="499"}')):
                total += float(line.split()[-1])
    return total


async def suggestions(lsp, uri):
    for line, prefix in SPOTS:
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, len(prefix)),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
        got = await asyncio.wait_for(lsp.text_document_inline_completion_async(params), 20)
        got = list(got.items if hasattr(got, "items") else got or [])
        if got:
            return got
    return []


@pytest.mark.asyncio
async def test_serve_with_remote_url(model_dir, tmp_path):
    port = free_port()
    model_server = start_model_server(model_dir, port)
    # No local model: every suggestion must come from the model server.
    config = ClientServerConfig(server_command=[sys.executable, "-m", "ghost_lsp.cli", "serve",
                                                "--model", str(tmp_path / "no-local-model"),
                                                "--db", str(tmp_path / "f.db")])
    lsp = await config.start()
    try:
        await lsp.initialize_session(types.InitializeParams(
            capabilities=client_capabilities("visual_studio_code"),
            initialization_options={"ghost": {"debounceMs": 0, "maxNewTokens": 16, "deadlineMs": 3000,
                                              "remoteUrl": f"http://127.0.0.1:{port}", "remoteToken": TOKEN,
                                              # the remote path, not the probability cut, is under test
                                              "filters": {"minCumLogprob": -1e9}}}))
        uri = (tmp_path / "m.py").as_uri()
        lsp.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=SOURCE)))
        before = served_requests(port)
        got = await suggestions(lsp, uri)
        assert got and got[0].insert_text.strip()
        assert served_requests(port) > before

        model_server.kill()
        model_server.wait(5)
        t0 = time.monotonic()
        assert await suggestions(lsp, uri) == []  # nothing to show, and no hang
        assert time.monotonic() - t0 < 3 * len(SPOTS)

        model_server = start_model_server(model_dir, port)
        # Back without restarting the language server, once the circuit breaker's cooldown
        # (5 s after repeated failures) lets a request probe the server again.
        t0 = time.monotonic()
        while not await suggestions(lsp, uri):
            assert time.monotonic() - t0 < 15, "no suggestions after the model server came back"
            await asyncio.sleep(0.5)
        errors = [m.message for m in lsp.messages if m.type == types.MessageType.Error]
        assert not errors, errors
    finally:
        await lsp.shutdown_session()
        model_server.kill()
        model_server.wait(5)
