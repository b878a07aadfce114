"""The model server: an OpenAI-compatible completions API over the continuous batcher.

Endpoints: POST /v1/completions, GET /v1/models (bearer token when one is configured),
GET /health (process alive), GET /ready (model loaded, queue not full), GET /metrics
(Prometheus). Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Why one module over 400 lines: the endpoints, their error shape, authentication and the
model's loading share one app and its state; the batching itself is in batcher.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ghost_lsp.serving.batcher import Batcher, QueueFull
from ghost_lsp.serving.metrics import Metrics
from ghost_lsp.serving.sequence import Event, SeqParams, Sequence

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    model_dir: Path
    token: str | None = None  # None = no auth (only allowed on loopback unless insecure)
    max_batch: int = 16
    max_queue: int = 64
    batching: bool = True
    max_body_bytes: int = 1 << 20
    deadline_s: float = 30.0  # per request, queueing included
    providers: list[str] | None = None  # onnxruntime providers; None = CUDA if available, else CPU
    threads: int | None = None
    target_utilisation: float = 0.75
    max_wait_s: float | None = 0.1  # admission: expected wait for a batch slot (None = queue bound only)
    retry_after_s: int = 1
    extra: dict = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}


def _error(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _num(body: dict, key: str, default, lo, hi, kind=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise ApiError(400, f"{key} must be {'an integer' if kind is int else 'a number'}", key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", key)
    return kind(v)


class Server:
    """The long-lived state behind the routes: config, engine + batcher (loaded in a thread)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics(config.target_utilisation)
        self.batcher: Batcher | None = None
        self.engine = None
        self.load_error: str | None = None
        self._loader = threading.Thread(target=self._load, name="ghost-model-load", daemon=True)

    def _load(self) -> None:
        from ghost_lsp.engine.loading import load_local

        try:
            from ghost_lsp.engine.llamacpp import wants_llama_cpp

            if wants_llama_cpp(self.config.model_dir):  # the batcher runs ONNX decoders only
                raise ValueError(f"{self.config.model_dir}: serve-model runs ONNX model folders; serve a GGUF "
                                 "model with llama.cpp's own server (python -m llama_cpp.server --model FILE.gguf, "
                                 "the llama extra) and point remote_url at it")
            engine = load_local(self.config.model_dir, providers=self.config.providers,
                                intra_op_threads=self.config.threads, reuse_kv=False)
        except Exception as e:  # noqa: BLE001 - reported on /ready and in the log
            self.load_error = str(e)
            log.error("model not loaded: %s", e)
            return
        from ghost_lsp.completion.prompt import template_for

        self.template = template_for(engine.manifest)
        self.engine = engine
        self.batcher = Batcher(engine, max_batch=self.config.max_batch, max_queue=self.config.max_queue,
                               batching=self.config.batching, stats=self.metrics,
                               max_wait_s=self.config.max_wait_s)
        log.info("serving %s on %s (batching %s, max batch %d, queue %d)", engine.model_id, engine.provider,
                 "on" if self.config.batching else "off", self.batcher.max_batch, self.batcher.max_queue)

    # -- request helpers ------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        token = self.config.token
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "missing or invalid bearer token", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    def ready(self) -> bool:
        return self.batcher is not None

    def model_ids(self) -> set[str]:
        e = self.engine
        return {e.model_id, e.manifest.name} if e else set()


def _parse(server: Server, body: dict) -> tuple[list[list[int]], SeqParams, int, bool, dict]:
    """Validate an OpenAI completions body; return (prompt ids per prompt, params, n, stream, extra)."""
    engine = server.engine
    ctx = engine.manifest.context_length
    model = body.get("model")
    if model not in (None, "") and model not in server.model_ids():
        raise ApiError(404, f"model {model!r} is not served here (serving {engine.model_id!r})", "model",
                       "model_not_found")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", "prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise ApiError(400, "suffix must be a string", "suffix")
    if body.get("echo"):
        raise ApiError(400, "echo is not supported", "echo")
    n = _num(body, "n", 1, 1, 8, int)
    best_of = body.get("best_of")
    if best_of not in (None, n):
        raise ApiError(400, "best_of other than n is not supported", "best_of")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of at most 4 strings", "stop")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _num(body, "logprobs", None, 0, 5, int)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    params = SeqParams(
        max_tokens=_num(body, "max_tokens", 16, 1, ctx, int),
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0),
        frequency_penalty=_num(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_num(body, "presence_penalty", 0.0, -2.0, 2.0),
        stop=stop, seed=seed, logprobs=logprobs)
    if params.top_p == 0.0:
        raise ApiError(400, "top_p must be above 0", "top_p")
    truncate = body.get("truncate_prompt_tokens")  # vLLM's extension: keep the last k tokens
    if truncate is not None:
        truncate = _num(body, "truncate_prompt_tokens", None, 1, ctx, int)
    if suffix is not None and not (server.template.fim and engine.manifest.fim):
        raise ApiError(400, f"{engine.model_id} has no fill-in-the-middle template; drop suffix", "suffix")
    ids_list = []
    for p in prompts:
        text = p
        if suffix is not None:
            from ghost_lsp.types import Context

            text = server.template.fill(Context(prefix=p, suffix=suffix, path="", language="python"), p, suffix)
        ids = engine.encode(text)
        if truncate is not None:
            ids = ids[-truncate:]
        if len(ids) + params.max_tokens > ctx:
            raise ApiError(413, f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                                f"context window of {ctx} tokens", "prompt", "context_length_exceeded")
        ids_list.append(ids)
    stream_opts = body.get("stream_options") or {}
    extra = {"include_usage": bool(isinstance(stream_opts, dict) and stream_opts.get("include_usage"))}
    return ids_list, params, n, stream, extra


def _logprobs_obj(ev_list: list[Event]) -> dict:
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ev in ev_list:
        out["tokens"] += ev.tokens
        out["token_logprobs"] += ev.token_logprobs
        out["top_logprobs"] += ev.top_logprobs
        out["text_offset"] += ev.text_offset
    if not out["top_logprobs"]:
        out["top_logprobs"] = None
    return out


def create_app(config: ServeConfig) -> Starlette:
    server = Server(config)

    async def completions(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            server.check_auth(request)
            if not server.ready():
                raise ApiError(503, "model is loading" if not server.load_error else server.load_error,
                               code="not_ready", headers={"Retry-After": str(config.retry_after_s)})
            body = await server.read_json(request)
            ids_list, params, n, stream, extra = _parse(server, body)
        except ApiError as e:
            server.metrics.requests.labels(str(e.status)).inc()
            if e.status in (413, 401):
                server.metrics.rejected.labels(e.code or str(e.status)).inc()
            server.metrics.refusal.observe(time.perf_counter() - t0)
            return _error(e.status, e.message, e.param, e.code, e.headers)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        deadline = time.monotonic() + config.deadline_s
        seqs: list[Sequence] = []
        groups = []
        for p_i, ids in enumerate(ids_list):
            group = []
            for j in range(n):
                idx = p_i * n + j
                sp = params if params.seed is None else SeqParams(**{**params.__dict__, "seed": params.seed + j})

                def emit(ev, idx=idx):
                    loop.call_soon_threadsafe(events.put_nowait, (idx, ev))

                seq = Sequence(server.engine, list(ids), sp, deadline, emit)
                group.append(seq)
            seqs += group
            groups.append(group)
        try:
            for group in groups:
                server.batcher.submit(group)
        except QueueFull as e:
            for s in seqs:
                s.cancel()
            server.metrics.requests.labels("429").inc()
            server.metrics.rejected.labels("queue_full").inc()
            server.metrics.refusal.observe(time.perf_counter() - t0)
            return _error(429, f"server busy: {e}; retry later", code="queue_full",
                          headers={"Retry-After": str(config.retry_after_s)})

        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model_id = server.engine.model_id
        prompt_tokens = sum(len(ids) for ids in ids_list) * n
        want_lp = params.logprobs is not None

        def usage() -> dict:
            done = sum(s.completion_tokens for s in seqs)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

        def observe(status: str) -> None:
            server.metrics.requests.labels(status).inc()
            server.metrics.latency.observe(time.perf_counter() - t0)
            for s in seqs:
                if s.first_token_at is not None:
                    server.metrics.ttft.observe(s.first_token_at - s.submitted)

        if stream:
            async def sse():
                finished = 0
                completed = False
                try:
                    while finished < len(seqs):
                        idx, ev = await events.get()
                        finished += ev.final
                        if not ev.text and not ev.final and not ev.tokens:
                            continue
                        choice = {"index": idx, "text": ev.text, "finish_reason": ev.finish_reason,
                                  "logprobs": _logprobs_obj([ev]) if want_lp else None}
                        chunk = {"id": cid, "object": "text_completion", "created": created, "model": model_id,
                                 "choices": [choice]}
                        yield f"data: {json.dumps(chunk)}\n\n"
                    if extra["include_usage"]:
                        yield f"data: {json.dumps({'id': cid, 'object': 'text_completion', 'created': created, 'model': model_id, 'choices': [], 'usage': usage()})}\n\n"
                    yield "data: [DONE]\n\n"
                    observe("200")
                    completed = True
                finally:
                    if not completed:  # the client closed the stream: cancelled, or its early stop
                        observe("499")
                    for s in seqs:  # the client went away: free the batch rows
                        s.cancel()

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        per: dict[int, list[Event]] = {i: [] for i in range(len(seqs))}
        finished = 0
        try:
            while finished < len(seqs):
                idx, ev = await events.get()
                per[idx].append(ev)
                finished += ev.final
        finally:
            for s in seqs:
                s.cancel()
        reasons = [per[i][-1].finish_reason for i in range(len(seqs))]
        if all(r == "deadline" for r in reasons) and not any(s.steps for s in seqs):
            observe("503")
            server.metrics.rejected.labels("deadline").inc()
            return _error(503, f"not served within the {config.deadline_s:g} s deadline", code="deadline",
                          headers={"Retry-After": str(config.retry_after_s)})
        if "error" in reasons:
            observe("500")
            return _error(500, "the model failed on this request (see the server log)", code="model_error")
        choices = [{"index": i, "text": "".join(e.text for e in per[i]), "finish_reason": reasons[i],
                    "logprobs": _logprobs_obj(per[i]) if want_lp else None} for i in range(len(seqs))]
        observe("200")
        return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": model_id,
                             "choices": choices, "usage": usage()})

    async def models(request: Request) -> Response:
        try:
            server.check_auth(request)
        except ApiError as e:
            return _error(e.status, e.message, e.param, e.code, e.headers)
        data = []
        if server.engine is not None:
            m = server.engine.manifest
            data.append({"id": server.engine.model_id, "object": "model", "created": 0, "owned_by": "ghost-lsp",
                         "max_model_len": m.context_length,
                         # lets ghost-lsp's remote engine render prompts for this model's family
                         "ghost_lsp": {"name": m.name, "family": m.family, "fim": m.fim,
                                       "context_length": m.context_length, "quantization": m.quantization,
                                       "eos_token": m.eos_token}})
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if server.load_error:
            return JSONResponse({"status": "error", "error": server.load_error}, status_code=503)
        if not server.ready():
            return JSONResponse({"status": "loading"}, status_code=503)
        b = server.batcher
        if b.queued() >= b.max_queue:  # take this replica out of the Service until it drains
            return JSONResponse({"status": "saturated", "queued": b.queued()}, status_code=503)
        return JSONResponse({"status": "ready", "model": server.engine.model_id, "provider": server.engine.provider,
                             "queued": b.queued(), "active": b.active()})

    async def metrics(request: Request) -> Response:
        if server.batcher is not None:
            server.metrics.refresh(server.batcher.utilisation())
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server._loader.start()
        yield
        if server.batcher is not None:
            await asyncio.to_thread(server.batcher.close)

    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.server = server
    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(token_file: str | None, env: dict[str, str]) -> str | None:
    """The bearer token: --token-file, else $GHOST_LSP_SERVE_TOKEN; None when neither is set."""
    if token_file:
        token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{token_file}: empty token file")
        return token
    token = env.get("GHOST_LSP_SERVE_TOKEN", "").strip()
    return token or None


def run(config: ServeConfig, host: str, port: int, ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level.lower(), access_log=False,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=5)
