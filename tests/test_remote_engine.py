"""RemoteEngine against a live serve-model, a dead port, servers that misbehave, and loopback
fakes that record what it sends (dialects, log-probs, the prompt cut to the context, FIM)."""

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
from ghost_lsp.settings.filters import ALL_OFF
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


class CaptureServer:
    """A loopback OpenAI-style server that records each POST body and streams `texts` back.

    `models` is what GET /v1/models lists; `reply` overrides the completions answer (bytes)."""

    def __init__(self, models: list[dict], texts=("ab", "cd"), reply: bytes | None = None):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, data, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, json.dumps({"object": "list", "data": models}).encode())

            def do_POST(self):
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if reply is not None:
                    self.wfile.write(reply)
                    self.close_connection = True
                    return
                events = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "text": t, "finish_reason": None,
                                                                      "logprobs": None}]}).encode() + b"\n\n"
                                  for t in texts)
                events += b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}\n\ndata: [DONE]\n\n'
                self._send(200, events, "text/event-stream")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("owner,model_id,dialect", [
    ("vllm", "bigcode/starcoder2-3b", "vllm"), ("me", "/models/m.gguf", "llama.cpp"),
    ("llamacpp", "m", "llama.cpp"), ("ghost-lsp", "tiny:none", "ghost-lsp"), ("library", "qwen2.5-coder", "openai")])
def test_dialect_from_models_and_neutral_sampling_fields(owner, model_id, dialect):
    """Greedy means argmax on every server: the neutral top_k/min_p/repetition penalty go out
    explicitly, under the server's own names, and nothing a dialect does not document."""
    fake = CaptureServer([{"id": model_id, "object": "model", "owned_by": owner}])
    try:
        eng = RemoteEngine(fake.url, timeout_ms=2000)
        eng.generate("x = ", GREEDY, deadline=time.monotonic() + 5)
        assert eng.dialect == dialect
        [body] = fake.bodies
        extra = set(body) - {"prompt", "max_tokens", "temperature", "top_p", "stream", "model", "logprobs",
                             "truncate_prompt_tokens"}
        assert extra == {"openai": set(), "ghost-lsp": set(), "vllm": {"top_k", "min_p", "repetition_penalty"},
                         "llama.cpp": {"top_k", "min_p", "repeat_penalty"}}[dialect]
        if dialect == "vllm":
            assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)
        if dialect == "llama.cpp":
            assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)
        assert body["temperature"] == 0.0 and body["top_p"] == 1.0 and body["model"] == model_id
        assert ("truncate_prompt_tokens" in body) == (dialect in ("vllm", "ghost-lsp"))  # estimated counts only
    finally:
        fake.close()


def test_logprobs_asked_only_when_the_gate_or_the_ranker_reads_them():
    from ghost_lsp.completion.completer import wants_logprobs
    from ghost_lsp.settings.filters import FilterSettings

    no_gate = FilterSettings(confidence=False)
    assert wants_logprobs(Settings())  # the confidence gate is on by default
    assert not wants_logprobs(Settings(filters=no_gate))
    assert wants_logprobs(Settings(filters=no_gate, n=3))  # the ranker compares candidates by them
    assert not wants_logprobs(Settings(filters=no_gate, n=3, rerank_model="teacher"))
    fake = CaptureServer([{"id": "m", "owned_by": "me"}])
    try:
        eng = RemoteEngine(fake.url, timeout_ms=2000)
        eng.generate("x", SamplingParams(max_new_tokens=4, logprobs=False), deadline=time.monotonic() + 5)
        eng.generate("x", SamplingParams(max_new_tokens=4), deadline=time.monotonic() + 5)
        assert "logprobs" not in fake.bodies[0] and fake.bodies[1]["logprobs"] == 0
    finally:
        fake.close()


def test_a_requests_own_fault_does_not_open_the_breaker(caplog):
    """An empty 200 stream (llama.cpp's answer to a prompt over its context) or a 400 is this
    request's fault: the server is up, so the next request still asks it."""
    empty = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 0\r\n"
             b"Connection: close\r\n\r\n")
    bad = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 41\r\n"
           b'Connection: close\r\n\r\n{"error": {"message": "prompt too long"}}')
    for reply, match in ((empty, "without data"), (bad, "prompt too long")):
        fake = CaptureServer([{"id": "m", "owned_by": "me"}], reply=reply)
        try:
            eng = RemoteEngine(fake.url, timeout_ms=1000, failures_to_open=2, cooldown_s=30)
            for _ in range(4):
                with pytest.raises(RemoteError, match=match) as err:
                    eng.generate("x", GREEDY, deadline=time.monotonic() + 3)
                assert not err.value.server_fault and not isinstance(err.value, RemoteUnavailable)
            assert len(fake.bodies) == 4
        finally:
            fake.close()


def test_known_context_caps_the_prompt_keeping_its_end(tiny_model_dir_fp32):
    """Nothing over remote_context - max_tokens is sent: the prompt's start goes, the text at the
    cursor stays; exact with the model folder's tokenizer, by the estimate without."""
    fake = CaptureServer([{"id": "/models/m.gguf", "owned_by": "me"}])
    try:
        long = "".join(f"value_{i} = compute({i}, {i * 7})\n" for i in range(200)) + "result = "
        eng = RemoteEngine(fake.url, timeout_ms=2000, model_dir=tiny_model_dir_fp32, same_model=True, context=128)
        eng.generate(long, SamplingParams(max_new_tokens=32), deadline=time.monotonic() + 5)
        sent = fake.bodies[-1]["prompt"]
        assert eng.manifest.context_length == 128 and eng.model_id == "remote:/models/m.gguf"
        assert long.endswith(sent) and sent.endswith("result = ") and 96 - 2 <= eng.count_tokens(sent) <= 96
        # the model folder says 256 and the server says nothing: 256 holds
        eng = RemoteEngine(fake.url, timeout_ms=2000, model_dir=tiny_model_dir_fp32, same_model=True)
        eng.generate(long, SamplingParams(max_new_tokens=48), deadline=time.monotonic() + 5)
        assert eng.manifest.context_length == 256 and eng.count_tokens(fake.bodies[-1]["prompt"]) <= 256 - 48
        # a special token at the start (a template's head) is kept
        eng.generate("<fim_prefix>" + long, SamplingParams(max_new_tokens=48), deadline=time.monotonic() + 5)
        assert fake.bodies[-1]["prompt"].startswith("<fim_prefix>") and fake.bodies[-1]["prompt"].endswith("result = ")
        # no tokenizer: the estimate (3.5 chars a token)
        eng = RemoteEngine(fake.url, timeout_ms=2000, context=100)
        eng.generate(long, SamplingParams(max_new_tokens=20), deadline=time.monotonic() + 5)
        assert fake.bodies[-1]["prompt"] == long[-280:]
    finally:
        fake.close()


def test_fim_is_rendered_here_and_sent_as_prompt_only(tiny_model_dir_fp32, tmp_path):
    """With the model folder the completer renders the folder's FIM template itself; the body
    carries `prompt` (prefix and suffix inside) and never `suffix` (no server-side template)."""
    import asyncio

    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.types import CompletionRequest

    manifest = Manifest.load(tiny_model_dir_fp32)
    assert manifest.fim and manifest.family == "starcoder"
    fake = CaptureServer([{"id": "/models/tiny.gguf", "owned_by": "me"}], texts=("a + b",))
    try:
        s = Settings(remote_url=fake.url, remote_model_dir=str(tiny_model_dir_fp32), remote_fallback=False,
                     filters=ALL_OFF, debounce_ms=0, context_providers=())
        eng = make_remote_engine(s, tmp_path / "no-local-model")
        assert eng.manifest.family == "starcoder" and eng.dialect == "llama.cpp"
        text = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
        req = CompletionRequest(uri="file:///m.py", version=1, path="/m.py", language="python", line=1, character=11)
        got = asyncio.run(Completer(eng, s).complete(req, text))
        assert got is not None and got.text == "a + b"
        [body] = fake.bodies
        assert "suffix" not in body
        assert body["prompt"].startswith("<fim_prefix>") and body["prompt"].endswith("<fim_middle>")
        assert "<fim_suffix>\n\nprint(add(1, 2))" in body["prompt"]
    finally:
        fake.close()


def test_early_stop_closes_the_stream_on_serve_model(live):
    """The completer's stop rule ends a remote request before max_tokens: the engine stops
    reading and closes the connection; the model server counts a client-closed request (499)."""
    import urllib.request

    def closed() -> float:
        with urllib.request.urlopen(live + "/metrics", timeout=5) as r:
            return sum(float(line.split()[-1]) for line in r.read().decode().splitlines()
                       if line.startswith('ghost_serve_requests_total{status="499"}'))

    eng = RemoteEngine(live, token=TOKEN, timeout_ms=5000)
    seen = []
    before = closed()
    cand = eng.generate("def f():\n", SamplingParams(max_new_tokens=200, temperature=1.0, seed=3,
                                                     stop_check=lambda t: seen.append(t) or len(seen) >= 2),
                        deadline=time.monotonic() + 10)
    assert cand.finish_reason == "early_stop" and len(seen) == 2
    t0 = time.monotonic()
    while closed() == before:
        assert time.monotonic() - t0 < 5
        time.sleep(0.05)
    assert eng.generate("x = ", GREEDY, deadline=time.monotonic() + 10).finish_reason in ("length", "stop", "eos")


def test_a_deadline_shorter_than_the_timeout_is_an_empty_answer_not_a_fault():
    """A server that takes the connection but has not answered when the request's own deadline
    passes: the suggestion is empty ("deadline"); the breaker does not count it. The same
    silence past the server timeout is a fault."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop_accepting = threading.Event()

    def accept():  # take connections, never answer
        srv.settimeout(0.2)
        while not stop_accepting.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        eng = RemoteEngine(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout_ms=2000, failures_to_open=1)
        t0 = time.monotonic()
        cand = eng.generate("x", SamplingParams(max_new_tokens=4), deadline=time.monotonic() + 0.2)
        assert cand.finish_reason == "deadline" and cand.text == "" and time.monotonic() - t0 < 1.5
        assert eng._failures == 0 and eng._open_until <= time.monotonic()
        eng.timeout_s = 0.2  # now the server's own timeout passes first: a fault, the breaker opens
        with pytest.raises(RemoteError, match="no answer within"):
            eng.generate("x", SamplingParams(max_new_tokens=4), deadline=time.monotonic() + 5)
        with pytest.raises(RemoteUnavailable):
            eng.generate("x", SamplingParams(max_new_tokens=4), deadline=time.monotonic() + 5)
    finally:
        stop_accepting.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
