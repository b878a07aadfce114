"""The completer with a fake engine (the real stages around it). The real model is
exercised end to end in tests/e2e."""

import asyncio
import threading
import time

import pytest

from ghost_lsp.completion.completer import Completer, is_excluded, want_multiline
from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.settings.core import Settings
from ghost_lsp.types import Candidate, CompletionRequest

TEXT = "def add(a, b):\n    return \n"
REQ = CompletionRequest(uri="file:///p/m.py", version=1, line=1, character=11, path="/p/m.py")
FAST = Settings(debounce_ms=0)


class FakeEngine:
    model_id = "fake:none"

    def __init__(self, text="a + b\nprint('more')\n", block=False):
        self.manifest = Manifest(name="fake")
        self.text = text
        self.block = block
        self.calls = []
        self.started = threading.Event()
        self.stopped = threading.Event()

    def count_tokens(self, text):
        return len(text) // 4 + 1

    def generate(self, prompt, params, cancel=None, deadline=None):
        self.calls.append((prompt, params, deadline))
        self.started.set()
        if self.block:  # decode "forever", checking the cancel event each step as the engine does
            while not cancel.is_set():
                time.sleep(0.005)
            self.stopped.set()
            return Candidate(text="", finish_reason="cancelled")
        return Candidate(text=self.text, token_ids=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3],
                         finish_reason="length", prefill_ms=1.0, decode_ms=2.0, prompt_tokens=5)


async def test_completion_has_id_timings_and_model():
    engine = FakeEngine()
    c = await Completer(engine, FAST).complete(REQ, TEXT)
    assert c is not None
    assert c.text.startswith("a + b") and "\n" not in c.text  # single line after `return `
    assert len(c.id) == 32 and c.model_id == "fake:none" and c.prompt_hash
    assert {"context_ms", "prompt_ms", "prefill_ms", "decode_ms", "filters_ms", "total_ms"} <= set(c.timings_ms)
    assert c.timings_ms["prefill_ms"] == 1.0 and c.timings_ms["decode_ms"] == 2.0
    (prompt, params, deadline), = engine.calls
    assert prompt.endswith("return ") or "return" in prompt
    assert params.temperature == 0.0 and params.max_new_tokens == FAST.max_new_tokens
    assert deadline > time.monotonic()


async def test_excluded_open_documents_never_reach_the_prompt():
    engine = FakeEngine()
    docs = {"/p/.env": "total = add(1, 2)\nadd_token = 'ENV_MARKER'\n",
            "/p/secrets/keys.py": "def add_key(a, b):\n    total = add(a, b)\n    return 'SECRETS_MARKER'\n",
            "/p/other.py": "def add_all(a, b):\n    total = add(a, b)\n    return 'OPEN_MARKER'\n"}
    s = Settings(debounce_ms=0, context_providers=("open_files",))
    await Completer(engine, s).complete(REQ, TEXT, docs)
    (prompt, _, _), = engine.calls
    assert "OPEN_MARKER" in prompt  # an open file does give a snippet
    assert "ENV_MARKER" not in prompt and "SECRETS_MARKER" not in prompt


async def test_ids_are_unique():
    completer = Completer(FakeEngine(), FAST)
    a = await completer.complete(REQ, TEXT)
    b = await completer.complete(REQ, TEXT)
    assert a.id != b.id


async def test_n_candidates_first_greedy_rest_sampled():
    engine = FakeEngine()
    s = Settings(debounce_ms=0, n=3, temperature=0.7, top_p=0.9)
    assert await Completer(engine, s).complete(REQ, TEXT) is not None
    temps = [p.temperature for _, p, _ in engine.calls]
    assert temps == [0.0, 0.7, 0.7]
    assert all(p.top_p == 0.9 for _, p, _ in engine.calls)


@pytest.mark.parametrize("why,completer,req,text", [
    ("no engine", Completer(None, FAST), REQ, TEXT),
    ("disabled", Completer(FakeEngine(), Settings(debounce_ms=0, enabled=False)), REQ, TEXT),
    ("excluded", Completer(FakeEngine(), FAST), CompletionRequest(uri="file:///p/.env", version=1, line=0,
                                                                  character=0, path="/p/.env"), "A=1\n"),
    ("binary", Completer(FakeEngine(), FAST), REQ, "def f():\x00\n    return \n"),
    ("bad position", Completer(FakeEngine(), FAST), CompletionRequest(uri="u", version=1, line=40, character=0), TEXT),
])
async def test_no_model_call(why, completer, req, text):
    assert await completer.complete(req, text) is None
    if completer.engine is not None:
        assert completer.engine.calls == []


async def test_whitespace_only_output_gives_none():
    assert await Completer(FakeEngine(text="   \n\n"), FAST).complete(REQ, TEXT) is None


async def test_engine_error_gives_none():
    engine = FakeEngine()
    engine.generate = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    assert await Completer(engine, FAST).complete(REQ, TEXT) is None


async def test_task_cancel_reaches_the_engine():
    engine = FakeEngine(block=True)
    completer = Completer(engine, FAST)
    task = asyncio.create_task(completer.complete(REQ, TEXT))
    assert await asyncio.to_thread(engine.started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # decoding stops within a step, and the worker is free for the next request
    assert await asyncio.to_thread(engine.stopped.wait, 2)
    engine.block = False
    assert await completer.complete(REQ, TEXT) is not None


async def test_newer_request_for_same_document_supersedes():
    engine = FakeEngine(block=True)
    completer = Completer(engine, FAST)
    old = asyncio.create_task(completer.complete(REQ, TEXT))
    assert await asyncio.to_thread(engine.started.wait, 5)
    engine.block = False
    new = await completer.complete(REQ, TEXT)
    assert await old is None and new is not None


@pytest.mark.parametrize("path,excluded", [
    ("/home/u/p/.env", True),
    ("/home/u/p/.env.local", True),
    ("/home/u/p/secrets/db.py", True),
    ("/home/u/p/certs/server.pem", True),
    ("/home/u/p/app/main.py", False),
    ("/home/u/p/environment.py", False),
    ("", False),
])
def test_default_excludes(path, excluded):
    assert is_excluded(path, Settings().exclude) is excluded


def test_exclude_patterns():
    assert is_excluded("/a/b/build/x.py", ["build/**"])
    assert not is_excluded("/a/b/rebuild/x.py", ["build/**"])
    assert is_excluded("/a/gen_x.py", ["gen_*.py"])
    assert is_excluded("C:\\p\\secrets\\k.py", ["**/secrets/**"])


@pytest.mark.parametrize("mode,req,prefix,suffix,expected", [
    ("always", False, "x = ", "", True),
    ("never", True, "", "", False),
    ("auto", True, "    ", "", True),
    ("auto", True, "def f():", "", True),
    ("auto", True, "    return ", "", False),
    ("auto", True, "", ")", False),
    ("auto", False, "", "", False),
])
def test_want_multiline(mode, req, prefix, suffix, expected):
    assert want_multiline(mode, req, prefix, suffix) is expected
