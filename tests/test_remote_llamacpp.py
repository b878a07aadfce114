"""RemoteEngine against llama.cpp's own OpenAI-compatible server (llama-cpp-python's `[server]`
extra, `python -m llama_cpp.server`), on the tiny random Llama written as a GGUF at test time.
Loopback only; one server for the module (n_ctx 256, the model's window, and an API key)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] (the dev extra) is not installed")

from ghost_lsp.completion.completer import Completer  # noqa: E402
from ghost_lsp.engine.loading import make_remote_engine  # noqa: E402
from ghost_lsp.engine.onnx import OnnxEngine  # noqa: E402
from ghost_lsp.engine.remote import RemoteEngine, RemoteError, RemoteUnavailable  # noqa: E402
from ghost_lsp.settings.core import Settings  # noqa: E402
from ghost_lsp.settings.filters import ALL_OFF  # noqa: E402
from ghost_lsp.types import CompletionRequest, SamplingParams  # noqa: E402
from test_serving_http import free_port  # noqa: E402

TOKEN = "llama-cpp-test-token"
N_CTX = 256
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0)
LONG = "".join(f"value_{i} = compute({i}, {i * 7})\n" for i in range(60)) + "result = "  # ~500 tokens


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port; its output goes to a log file."""

    def __init__(self, gguf: Path, log: Path, n_ctx: int = N_CTX):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1",
             "--api_key", TOKEN], stdout=self._out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                req = urllib.request.Request(self.url + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)
        self._out.close()


@pytest.fixture(scope="module")
def gguf(tiny_hf_llama, tmp_path_factory):
    """The same weights as tiny_model_dir_fp32 (both from build_tiny_hf, seed 0), as an f32 GGUF."""
    from ghost_lsp.tools.bench.peer_models import write_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_gguf(Path(tiny_hf_llama), out, "f32")
    return out


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    srv = LlamaServer(gguf, tmp_path_factory.mktemp("llama-log") / "server.log")
    yield srv
    srv.stop()


def engine(server, folder=None, **kw) -> RemoteEngine:
    return RemoteEngine(server.url, token=TOKEN, timeout_ms=5000, model_dir=folder, same_model=folder is not None, **kw)


def test_discovery_finds_llama_cpp_and_keeps_the_named_model_folder(server, tiny_model_dir_fp32):
    eng = engine(server, tiny_model_dir_fp32)
    assert eng.discover()
    assert eng.dialect == "llama.cpp" and eng.model.endswith(".gguf")  # the GGUF path is its model id
    assert eng.manifest.family == "starcoder" and eng.manifest.context_length == 256  # the folder's, kept
    bare = engine(server)
    assert bare.discover() and bare.manifest.context_length == 2048 and bare.manifest.family == "plain"


def visible(text: str) -> str:
    """A random model emits stray UTF-8 fragments: the local engine shows each as U+FFFD,
    llama.cpp's server drops it. The tokens are the same; compare what both can show."""
    return text.replace("\ufffd", "")


def test_greedy_tokens_equal_the_local_models(server, tiny_model_dir_fp32):
    """Temperature 0 on llama.cpp is the local model's greedy choice once repeat_penalty,
    top_k and min_p are sent neutral; with llama.cpp's defaults (1.1, 40, 0.05) it is not."""
    local = OnnxEngine(tiny_model_dir_fp32, reuse_kv=False, token_healing=False)
    eng = engine(server, tiny_model_dir_fp32)
    plain = engine(server, tiny_model_dir_fp32, dialect="openai")  # the OpenAI fields only
    prompts = ["def add(a, b):\n    return", "import os\n\n\nclass Stack:\n    def push(self, item):\n",
               "<fim_prefix>def count_words(text):\n    counts = {}\n<fim_suffix>\n    return counts\n<fim_middle>"]
    differs = 0
    for prompt in prompts:
        ref = local.generate(prompt, GREEDY)
        cand = eng.generate(prompt, GREEDY, deadline=time.monotonic() + 20)
        assert cand.text == visible(ref.text), prompt
        # two f32 implementations of a random model with large logits: equal to about 1 %
        assert len(cand.logprobs) == len(ref.logprobs) and cand.logprobs == pytest.approx(ref.logprobs, rel=0.02)
        differs += plain.generate(prompt, GREEDY, deadline=time.monotonic() + 20).text != visible(ref.text)
    assert differs  # llama.cpp's own defaults change the "greedy" text


def test_logprobs_only_when_asked(server, tiny_model_dir_fp32):
    eng = engine(server, tiny_model_dir_fp32)
    without = eng.generate("def add(a, b):\n", SamplingParams(max_new_tokens=8, logprobs=False),
                           deadline=time.monotonic() + 20)
    with_lp = eng.generate("def add(a, b):\n", SamplingParams(max_new_tokens=8), deadline=time.monotonic() + 20)
    assert without.text == with_lp.text and without.logprobs == [] and len(with_lp.logprobs) >= 1


def test_cancel_deadline_and_a_refused_token(server):
    eng = engine(server)
    cancel = threading.Event()
    cancel.set()
    assert eng.generate("x", SamplingParams(max_new_tokens=100), cancel=cancel).finish_reason == "cancelled"
    t0 = time.monotonic()
    cand = eng.generate("def f():\n", SamplingParams(max_new_tokens=200, temperature=1.0),
                        deadline=time.monotonic() + 0.02)
    assert cand.finish_reason in ("deadline", "length", "stop", "eos") and time.monotonic() - t0 < 2
    bad = RemoteEngine(server.url, token="wrong", timeout_ms=5000, failures_to_open=99)
    with pytest.raises(RemoteError, match="token was refused"):
        bad.generate("x", GREEDY, deadline=time.monotonic() + 10)
    assert eng.generate("x = ", GREEDY, deadline=time.monotonic() + 20).finish_reason in ("length", "stop", "eos")


def test_early_stop_closes_the_stream_and_the_server_stops(server):
    """The completer's stop rule ends the request: the engine stops reading, closes the
    connection, and llama.cpp stops decoding it (it says "disconnected") before max_tokens."""
    eng = engine(server)
    seen = []

    def stop_after_three(text):
        seen.append(text)
        return len(seen) >= 3

    before = server.output().count("disconnected")
    params = SamplingParams(max_new_tokens=200, temperature=1.0, seed=1, stop_check=stop_after_three)
    cand = eng.generate("def f():\n", params, deadline=time.monotonic() + 20)
    assert cand.finish_reason == "early_stop" and len(seen) == 3
    deadline = time.monotonic() + 5
    while server.output().count("disconnected") == before:
        assert time.monotonic() < deadline, "llama.cpp went on decoding the closed request"
        time.sleep(0.05)
    assert eng.generate("x = ", GREEDY, deadline=time.monotonic() + 20).text  # the server is free again


def test_a_long_prompt_is_cut_to_the_context_and_never_opens_the_breaker(server, tiny_model_dir_fp32):
    """llama.cpp answers a prompt over its window with HTTP 200 and an empty stream. With the
    model folder (or remote_context) the prompt is cut here, keeping its end; without either the
    request fails alone, the breaker stays closed and the estimate tightens until prompts fit."""
    eng = engine(server, tiny_model_dir_fp32)
    assert eng.count_tokens(LONG) > N_CTX
    cand = eng.generate(LONG, GREEDY, deadline=time.monotonic() + 20)
    assert cand.text and cand.finish_reason in ("length", "stop", "eos")

    blind = engine(server, failures_to_open=1, cooldown_s=60)
    with pytest.raises(RemoteError, match="without data") as err:
        blind.generate(LONG, GREEDY, deadline=time.monotonic() + 20)  # sent whole: 2,048 assumed
    assert not err.value.server_fault
    assert blind.generate("x = ", GREEDY, deadline=time.monotonic() + 20).text  # not RemoteUnavailable

    sized = engine(server, context=N_CTX, failures_to_open=1, cooldown_s=60)
    for attempt in range(6):
        try:
            assert sized.generate(LONG, GREEDY, deadline=time.monotonic() + 20).text
            break
        except RemoteUnavailable:
            raise
        except RemoteError as e:
            assert not e.server_fault  # an estimate too long for the window: this request's fault
    else:
        pytest.fail("the estimate never shrank enough to fit the window")


def test_completer_suggestion_matches_the_local_model_with_fim(server, tiny_model_dir_fp32, tmp_path):
    """The language server's pipeline over llama.cpp, with the model folder named: the FIM
    prompt is rendered here and the greedy suggestion is the local model's."""
    text = "def add(a, b):\n    return \n\n\nprint(add(1, 2))\n"
    req = CompletionRequest(uri="file:///m.py", version=1, path="/m.py", language="python", line=1, character=11)
    s = Settings(remote_url=server.url, remote_token=TOKEN, remote_model_dir=str(tiny_model_dir_fp32),
                 remote_timeout_ms=5000, remote_fallback=False, filters=ALL_OFF, debounce_ms=0, deadline_ms=20000,
                 max_new_tokens=16, context_providers=(), ngram_cache=False)  # the remote path mixes no n-grams
    remote = make_remote_engine(s, tmp_path / "no-local-model")
    got = asyncio.run(Completer(remote, s).complete(req, text))
    ref = asyncio.run(Completer(OnnxEngine(tiny_model_dir_fp32, reuse_kv=False, token_healing=False), s).complete(req, text))
    assert got is not None and ref is not None
    assert got.prompt == ref.prompt and got.prompt.startswith("<fim_prefix>")
    assert got.candidate.text == visible(ref.candidate.text)
