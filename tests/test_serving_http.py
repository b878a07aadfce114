"""`ghost-lsp serve-model` as a real process on 127.0.0.1, driven by the official openai client."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest

from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.tools.bench.serving import free_port, server_log
from ghost_lsp.tools.bench.serving import start_model_server as start
from ghost_lsp.tools.bench.serving import stop_model_server as stop
from ghost_lsp.types import SamplingParams

TOKEN = "test-token-4f2c"


def start_model_server(model_dir, *args, token: str | None = TOKEN):
    """serve-model on one ONNX Runtime thread, with this file's token unless told otherwise."""
    return start(model_dir, "--threads", "1", *args, token=token, timeout=30.0)


@pytest.fixture(scope="module")
def server(tiny_model_dir_fp32):
    proc, url = start_model_server(tiny_model_dir_fp32, "--max-batch", "8", "--max-queue", "16",
                                   "--max-body-bytes", "20000")
    yield url
    stop(proc)
    assert TOKEN not in server_log(proc)  # the token is never logged


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=TOKEN, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def local(tiny_model_dir_fp32):
    return OnnxEngine(tiny_model_dir_fp32, reuse_kv=False)


def raw(url, path, body=None, token=TOKEN, data=None, method=None):
    req = urllib.request.Request(url + path, data=data if data is not None else
                                 (json.dumps(body).encode() if body is not None else None), method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_completion_matches_local_engine(client, local):
    prompt = "def add(a, b):\n    return"
    r = client.completions.create(model=local.model_id, prompt=prompt, max_tokens=16, temperature=0, logprobs=2)
    ref = local.generate(prompt, SamplingParams(max_new_tokens=16, temperature=0.0))
    choice = r.choices[0]
    assert choice.text == ref.text and ref.text
    assert choice.finish_reason in ("length", "stop")
    assert choice.logprobs.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    assert r.usage.prompt_tokens == ref.prompt_tokens and r.usage.completion_tokens > 0


def test_streaming_equals_non_streaming(client):
    kw = dict(model="", prompt="import os\n", max_tokens=12, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert len(chunks) > 1


def test_n_and_seed_and_suffix(client):
    r = client.completions.create(model="", prompt="x = ", max_tokens=8, temperature=1.0, n=3, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    again = client.completions.create(model="", prompt="x = ", max_tokens=8, temperature=1.0, n=3, seed=7)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]  # seeded: reproducible
    fim = client.completions.create(model="", prompt="def f(x):\n    ", suffix="\n    return y\n", max_tokens=6, temperature=0)
    assert fim.choices[0].finish_reason in ("length", "stop")


def test_models_health_metrics(server, client, local):
    ids = [m.id for m in client.models.list().data]
    assert ids == [local.model_id]
    assert raw(server, "/health", token=None)[0] == 200
    status, _, body = raw(server, "/ready", token=None)
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _, body = raw(server, "/metrics", token=None)
    text = body.decode()
    for name in ("ghost_serve_requests_total", "ghost_serve_request_seconds_bucket", "ghost_serve_queue_depth",
                 "ghost_serve_batch_size_bucket", "ghost_serve_tokens_per_second", "ghost_serve_utilisation",
                 "ghost_serve_target_utilisation 0.75"):
        assert name in text, name
    assert 'ghost_serve_requests_total{status="200"}' in text


def test_auth_and_bad_requests(server, client):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="x", prompt="a", max_tokens=2)
    status, headers, _ = raw(server, "/v1/completions", {"prompt": "a"}, token=None)
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert raw(server, "/v1/models", token=None)[0] == 401
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="", prompt="a", max_tokens=2, temperature=5)
    status, _, body = raw(server, "/v1/completions", data=b"{not json")
    assert status == 400 and "JSON" in json.loads(body)["error"]["message"]
    # over --max-body-bytes
    status, _, body = raw(server, "/v1/completions", {"prompt": "x" * 30000, "max_tokens": 1})
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    # a prompt longer than the context window
    status, _, body = raw(server, "/v1/completions", {"prompt": "a b c d " * 1500, "max_tokens": 4})
    assert status == 413 and json.loads(body)["error"]["code"] == "context_length_exceeded"
    # ...unless the client asks to keep its tail (vLLM's truncate_prompt_tokens)
    status, _, body = raw(server, "/v1/completions", {"prompt": "a b c d " * 1500, "max_tokens": 4,
                                                       "truncate_prompt_tokens": 64, "temperature": 0})
    assert status == 200, body


def test_queue_full_answers_429_fast_and_nothing_hangs(tiny_model_dir_fp32):
    proc, url = start_model_server(tiny_model_dir_fp32, "--max-batch", "2", "--max-queue", "2", token=None)
    try:
        t0 = time.perf_counter()
        status, headers, body = raw(url, "/v1/completions", {"prompt": "a", "max_tokens": 2, "n": 5}, token=None)
        assert status == 429 and headers.get("retry-after") == "1"
        assert time.perf_counter() - t0 < 0.5
        body = {"prompt": "def f():\n", "max_tokens": 120, "temperature": 1.0, "seed": 1}
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda _: raw(url, "/v1/completions", body, token=None), range(24)))
        codes = [r[0] for r in results]
        assert set(codes) <= {200, 429}, codes
        assert codes.count(429) >= 1 and codes.count(200) >= 2, codes
        assert all(r[1].get("retry-after") for r in results if r[0] == 429)
        status, _, text = raw(url, "/metrics", token=None)
        assert 'ghost_serve_rejected_total{reason="queue_full"}' in text.decode()
    finally:
        stop(proc)


def test_non_loopback_host_requires_a_token(tiny_model_dir_fp32):
    env = {k: v for k, v in os.environ.items() if k != "GHOST_LSP_SERVE_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "ghost_lsp.cli", "serve-model", "--model", str(tiny_model_dir_fp32),
                        "--host", "0.0.0.0", "--port", str(free_port())], env=env, capture_output=True, timeout=30)
    assert r.returncode == 2 and b"token" in r.stderr
