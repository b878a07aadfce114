"""RemoteEngine against a live serve-model, a dead port, and servers that misbehave."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.loading import make_remote_engine
from ghost_lsp.engine.remote import RemoteEngine, RemoteError, RemoteUnavailable
from ghost_lsp.settings.core import Settings
from ghost_lsp.types import SamplingParams
from test_serving_http import TOKEN, free_port, start_model_server, stop

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def live(tiny_model_dir_fp32):
    proc, url = start_model_server(tiny_model_dir_fp32, "--max-batch", "4")
    yield url
    stop(proc)


class FakeServer:
    """A loopback TCP server that answers every connection with `reply` (None: says nothing)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.settimeout(2)
            try:
                conn.recv(65536)
            except OSError:
                pass
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _sse(*texts, finish="length"):
    events = b"".join(b'data: {"choices": [{"index": 0, "text": %s, "finish_reason": null}]}\n\n'
                      % (b'"' + t.encode() + b'"') for t in texts)
    events += b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "%s"}]}\n\ndata: [DONE]\n\n' % finish.encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(events)) + events


def test_remote_greedy_equals_local(live, tiny_model_dir_fp32, caplog):
    caplog.set_level(logging.DEBUG, logger="ghost_lsp")
    local = OnnxEngine(tiny_model_dir_fp32, reuse_kv=False)
    eng = RemoteEngine(live + "/v1", token=TOKEN, timeout_ms=5000, model_dir=tiny_model_dir_fp32)
    assert eng.discover() and eng.model_id == f"remote:{local.model_id}"
    assert eng.manifest.name == local.manifest.name and eng.count_tokens("def f(): pass") == local.count_tokens("def f(): pass")
    for prompt in ("def add(a, b):\n    return", "import os\n"):
        cand = eng.generate(prompt, GREEDY, deadline=time.monotonic() + 10)
        ref = local.generate(prompt, GREEDY)
        assert cand.text == ref.text and cand.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert TOKEN not in caplog.text and TOKEN not in repr(eng)


def test_remote_without_local_model_estimates_and_discovers(live):
    eng = RemoteEngine(live, token=TOKEN, timeout_ms=5000)
    assert eng.count_tokens("x" * 35) == 10  # chars / 3.5 before anything is known
    assert eng.discover()
    assert eng.manifest.context_length > 0 and eng.manifest.family  # from the server's /v1/models
    assert eng.generate("x = ", GREEDY, deadline=time.monotonic() + 10).finish_reason in ("length", "stop", "eos")


def test_cancel_and_deadline_end_the_request(live):
    eng = RemoteEngine(live, token=TOKEN, timeout_ms=5000)
    cancel = threading.Event()
    cancel.set()
    t0 = time.monotonic()
    assert eng.generate("x", SamplingParams(max_new_tokens=200), cancel=cancel).finish_reason == "cancelled"
    cand = eng.generate("def f():\n", SamplingParams(max_new_tokens=5000 // 20, temperature=1.0),
                        deadline=time.monotonic() + 0.05)
    assert cand.finish_reason in ("deadline", "length", "stop", "eos")
    assert time.monotonic() - t0 < 3


def test_wrong_token_is_a_clear_error(live, caplog):
    caplog.set_level(logging.DEBUG)
    eng = RemoteEngine(live, token="not-the-token", timeout_ms=2000, failures_to_open=99)
    with pytest.raises(RemoteError, match="token was refused"):
        eng.generate("x", GREEDY, deadline=time.monotonic() + 5)
    assert "not-the-token" not in caplog.text


def test_dead_port_fails_fast_then_circuit_opens(tiny_model_dir_fp32):
    eng = RemoteEngine(f"http://127.0.0.1:{free_port()}", timeout_ms=500, failures_to_open=2, cooldown_s=30)
    t0 = time.monotonic()
    for _ in range(2):
        with pytest.raises(RemoteError, match="cannot connect"):
            eng.generate("x", GREEDY, deadline=time.monotonic() + 2)
    with pytest.raises(RemoteUnavailable):
        eng.generate("x", GREEDY, deadline=time.monotonic() + 2)
    assert time.monotonic() - t0 < 2
    # with a local fall-back the same dead server still yields a suggestion
    local = OnnxEngine(tiny_model_dir_fp32, reuse_kv=False)
    eng.fallback = local
    assert eng.generate("def add(a, b):\n    return", GREEDY).text == local.generate(
        "def add(a, b):\n    return", GREEDY).text


def test_silent_and_garbage_servers_do_not_hang():
    silent = FakeServer([None])
    garbage = FakeServer([b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"])
    broken = FakeServer([b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\nConnection: close\r\n\r\ndata: {not json}\n\n"])
    try:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="within"):
            RemoteEngine(silent.url, timeout_ms=300).generate("x", GREEDY, deadline=time.monotonic() + 5)
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(RemoteError, match="without data"):
            RemoteEngine(garbage.url, timeout_ms=300).generate("x", GREEDY, deadline=time.monotonic() + 5)
        with pytest.raises(RemoteError, match="not an OpenAI completions stream"):
            RemoteEngine(broken.url, timeout_ms=300).generate("x", GREEDY, deadline=time.monotonic() + 5)
    finally:
        for s in (silent, garbage, broken):
            s.close()


def test_retries_after_429_only_within_the_deadline():
    busy = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    fake = FakeServer([busy, _sse("ab", "cd")])
    try:
        eng = RemoteEngine(fake.url, timeout_ms=1000)
        cand = eng.generate("x", GREEDY, deadline=time.monotonic() + 3)
        assert cand.text == "abcd" and cand.finish_reason == "length"
        always_busy = FakeServer([busy])
        with pytest.raises(RemoteError, match="no time left"):
            RemoteEngine(always_busy.url, timeout_ms=1000).generate("x", GREEDY, deadline=time.monotonic() + 0.12)
        always_busy.close()
    finally:
        fake.close()


def test_make_remote_engine_from_settings(live, tiny_model_dir_fp32, monkeypatch):
    monkeypatch.setenv("GHOST_LSP_REMOTE_TOKEN", TOKEN)
    eng = make_remote_engine(Settings(remote_url=live, remote_timeout_ms=5000), tiny_model_dir_fp32)
    assert eng.fallback is not None and eng.model_id.startswith("remote:")
    assert eng.generate("x = ", GREEDY, deadline=time.monotonic() + 10).finish_reason != "error"
    with pytest.raises(EngineError, match="remote_url"):
        RemoteEngine("ftp://x")
