"""Remote engine: the Engine protocol over a plain OpenAI-compatible `POST /v1/completions`.

Works against `ghost-lsp serve-model`, vLLM, TGI, the llama.cpp server and Ollama's OpenAI
endpoint alike; what it sends, in which server's dialect, is `remote_request.py`. The prompt is
rendered here, by the language server's own template (the completer does that), and sent as text.

Behaviour on a slow or dead server (every keystroke asks, so failures must be cheap):
- stdlib http.client, one keep-alive connection reused across requests; streaming (SSE), so a
  cancelled request, a passed deadline or the completer's early stop (`params.stop_check`: the
  cycle and end-of-block rules would cut every further token) closes the connection, and the
  server stops decoding that request;
- socket timeouts of min(timeout, time to the deadline): no call outlives the completer's deadline;
- retries only where the request was certainly not run: a stale keep-alive connection (retried
  at once on a fresh one) and 429/503 with Retry-After that still fits before the deadline;
  never after a timeout;
- a circuit breaker: after `failures_to_open` consecutive failures of the server (no connection,
  timeouts, 5xx, a refused token) the engine fails fast for `cooldown_s`, then lets one request
  probe the server. A request's own fault (another 4xx, an empty stream: llama.cpp's answer to a
  prompt over its context) says the server is up and does not count;
- with a `fallback` engine (the local model) any remote failure or open breaker answers locally.

The prompt is cut here, keeping its end, to the model's known context less max_tokens: `context`
(remote_context), else the smaller of /v1/models' and the model folder's, else 2,048. Token counts
use `model_dir`'s tokenizer when it is the served model (`same_model`: the user named it, or the
server reports its name), else len / 3.5 chars. The token is a bearer header, never logged.
"""

from __future__ import annotations

import http.client
import json
import dataclasses
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from ghost_lsp.engine import remote_request as rq
from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.decode import stop_check_fires
from ghost_lsp.engine.remote_request import DeadlinePassed, RemoteError, RemoteUnavailable  # noqa: F401 (re-exported)
from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.types import Candidate, SamplingParams

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = rq.CHARS_PER_TOKEN
DEFAULT_CONTEXT = 2048


class RemoteEngine:
    def __init__(self, url: str, *, token: str | None = None, timeout_ms: int = 1000, model: str = "",
                 model_dir: str | Path | None = None, fallback=None, failures_to_open: int = 3,
                 cooldown_s: float = 5.0, dialect: str = "auto", context: int = 0, same_model: bool = False):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"remote_url {url!r}: expected http(s)://host[:port][/path]")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        base = parts.path.rstrip("/")
        self.base_path = base[:-3] if base.endswith("/v1") else base  # accept ".../v1" too
        self.url = f"{parts.scheme}://{parts.netloc}{self.base_path}"  # no token in here
        self._token = token or None
        self.timeout_s = max(0.01, timeout_ms / 1000)
        self.model = model
        self.fallback = fallback
        if dialect not in rq.DIALECTS:
            raise EngineError(f"remote_dialect {dialect!r}: expected one of {', '.join(rq.DIALECTS)}")
        self.dialect = "openai" if dialect == "auto" else dialect
        self._auto_dialect = dialect == "auto"
        self.context = max(0, int(context))
        self.same_model = same_model
        self.chars_per_token = CHARS_PER_TOKEN  # the estimate; lowered when a server finds it too long
        self.failures_to_open, self.cooldown_s = failures_to_open, cooldown_s
        self._failures = 0
        self._open_until = 0.0
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.RLock()
        self._tokenizer = None
        self._discovered = False
        self._next_discover = 0.0
        self.manifest = self._local_manifest(model_dir)
        if self.manifest is None:
            self.manifest = Manifest(name=model or "remote", family="plain", context_length=self.context or DEFAULT_CONTEXT)
        elif self.context:
            self.manifest = dataclasses.replace(self.manifest, context_length=self.context)
        self.model_id = f"remote:{model or self.manifest.name}"
        self.provider = self.url  # the Engine protocol's "what runs it"

    def __repr__(self) -> str:  # never shows the token
        return f"RemoteEngine({self.url!r}, model={self.model!r}, auth={'yes' if self._token else 'no'})"

    # -- prompt budget --------------------------------------------------------------------

    def _local_manifest(self, model_dir) -> Manifest | None:
        if not model_dir or not Path(model_dir, "manifest.json").is_file():
            return None
        try:
            manifest = Manifest.load(model_dir)
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(Path(model_dir) / manifest.tokenizer))
            return manifest
        except Exception as e:  # noqa: BLE001 - fall back to the estimate, say why
            log.warning("remote engine: local model folder %s unusable for token counts (%s); estimating", model_dir, e)
            return None

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return rq.estimate_tokens(text, self.chars_per_token)

    def discover(self, deadline: float | None = None) -> bool:
        """Ask GET /v1/models for the model name, context length, dialect and (ghost-lsp
        servers) family.

        The model folder keeps its manifest and exact tokenizer when it is the served model
        (`same_model`, or the server reports its name); another model replaces them (token
        counts become estimates). Returns whether the server answered.
        """
        if self._discovered or time.monotonic() < self._next_discover:
            return self._discovered
        try:
            with self._lock:
                limit = time.monotonic() + self.timeout_s  # within a request: within its deadline too
                status, body = self._request("GET", "/v1/models", None, min(limit, deadline or limit))
            if status != 200:
                raise RemoteError(f"HTTP {status}: {rq.error_message(body)}")
            data = json.loads(body).get("data") or [{}]
            entry = next((d for d in data if d.get("id") == self.model), data[0]) if self.model else data[0]
            info = entry.get("ghost_lsp") or {}
        except (OSError, http.client.HTTPException, ValueError, AttributeError, TypeError, RemoteError) as e:
            log.info("remote engine: %s/v1/models unavailable (%s); asking again later", self.url, e)
            self._next_discover = time.monotonic() + self.cooldown_s
            return False
        self._discovered = True
        self.model = self.model or str(entry.get("id", ""))
        if self._auto_dialect:
            self.dialect = rq.detect_dialect(entry)
        name = str(info.get("name") or self.model or "remote")
        stated = rq.context_of(entry)
        if self._tokenizer is not None and (self.same_model or name == self.manifest.name):
            ctx = self.context or min(self.manifest.context_length, stated or self.manifest.context_length)
            self.manifest = dataclasses.replace(self.manifest, context_length=ctx)
            self.model_id = f"remote:{self.model}"
            return True
        self._tokenizer = None
        self.manifest = Manifest(name=name, family=str(info.get("family", "plain")), fim=bool(info.get("fim", False)),
                                 context_length=self.context or stated or DEFAULT_CONTEXT)
        self.model_id = f"remote:{self.model or name}"
        if not (self.context or stated):
            log.warning("remote engine: %s states no context length; assuming %d tokens (set remote_context, "
                        "and remote_model_dir for exact token counts and the model's prompt template)",
                        self.url, DEFAULT_CONTEXT)
        return True

    # -- HTTP -----------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _headers(self, body: bytes | None) -> dict[str, str]:
        h = {"Accept": "application/json, text/event-stream"}
        if body is not None:
            h["Content-Type"] = "application/json"
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _send(self, method: str, path: str, body: bytes | None, deadline: float) -> http.client.HTTPResponse:
        """Send and return the response head; retries once on a stale keep-alive connection."""
        for attempt in (0, 1):
            timeout = min(self.timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlinePassed(f"{self.url}: deadline passed before the request was sent", server_fault=False)
            reused = self._conn is not None and self._conn.sock is not None
            conn = self._connection(timeout)
            try:
                conn.request(method, self.base_path + path, body=body, headers=self._headers(body))
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection; nothing was run
                raise RemoteError(f"{self.url}: connection lost ({e.__class__.__name__})") from None
            except (socket.timeout, TimeoutError):
                self._drop()
                if timeout < self.timeout_s:  # the request's deadline, shorter than the server timeout
                    raise DeadlinePassed(f"{self.url}: no answer before the deadline", server_fault=False) from None
                raise RemoteError(f"{self.url}: no answer within {timeout * 1000:.0f} ms") from None
            except OSError as e:
                self._drop()
                raise RemoteError(f"{self.url}: cannot connect ({e.strerror or e})") from None
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: bytes | None, deadline: float) -> tuple[int, bytes]:
        resp = self._send(method, path, body, deadline)
        try:
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise RemoteError(f"{self.url}: reading the answer failed ({e.__class__.__name__})") from None

    # -- the Engine protocol --------------------------------------------------------------

    def generate(self, prompt: str, params: SamplingParams, cancel: threading.Event | None = None,
                 deadline: float | None = None) -> Candidate:
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout_s * 4
        now = time.monotonic()
        if now < self._open_until:
            return self._fail(RemoteUnavailable(f"{self.url}: unavailable (circuit open after "
                                                f"{self._failures} failures)"), prompt, params, cancel, deadline)
        try:
            with self._lock:
                cand = self._generate(prompt, params, cancel, deadline)
        except DeadlinePassed:
            return Candidate(text="", finish_reason="deadline")
        except RemoteError as e:
            return self._fail(e, prompt, params, cancel, deadline)
        if self._failures:
            log.warning("remote engine: %s answers again", self.url)
        self._failures, self._open_until = 0, 0.0
        return cand

    def _fail(self, err: RemoteError, prompt, params, cancel, deadline) -> Candidate:
        if isinstance(err, RemoteUnavailable):
            pass
        elif not err.server_fault:
            self._failures = 0  # the server answered: it is up
            log.info("remote engine: %s", err)
        else:
            self._failures += 1
            if self._failures >= self.failures_to_open:
                if self._open_until <= time.monotonic():
                    log.warning("remote engine: %s; not asking for %.0f s%s", err, self.cooldown_s,
                                " (using the local model)" if self.fallback else "")
                self._open_until = time.monotonic() + self.cooldown_s
            else:
                log.info("remote engine: %s", err)
        if self.fallback is not None:
            return self.fallback.generate(prompt, params, cancel, deadline)
        raise err

    def request_body(self, prompt: str, params: SamplingParams) -> bytes:
        """The JSON body sent for `prompt`: cut to the context less max_tokens, in the dialect."""
        ctx = self.manifest.context_length
        max_tokens = min(int(params.max_new_tokens), max(1, ctx // 2))
        if max_tokens != params.max_new_tokens:
            params = dataclasses.replace(params, max_new_tokens=max_tokens)
        room = ctx - max_tokens
        fitted = rq.fit_prompt(prompt, room, self._tokenizer, self.chars_per_token)
        if len(fitted) != len(prompt):
            log.debug("remote engine: prompt cut from %d to %d chars to fit %d tokens", len(prompt), len(fitted), room)
        return rq.body(fitted, params, dialect=self.dialect, model=self.model,
                       truncate_to=room if self._tokenizer is None else None)

    def _generate(self, prompt, params, cancel, deadline) -> Candidate:
        self.discover(deadline)
        body = self.request_body(prompt, params)
        t0 = time.perf_counter()
        while True:
            try:
                return self._stream(body, params.stop_check, cancel, deadline, t0)
            except RemoteError as e:
                if self._tokenizer is None and not e.server_fault and self.chars_per_token > 1.0:
                    # an estimated prompt over the server's window (llama.cpp answers nothing):
                    # count more tokens per character from now on, so later prompts fit
                    self.chars_per_token = max(1.0, self.chars_per_token * 0.7)
                raise
            except rq.Retry as r:
                if time.monotonic() + r.wait >= deadline - 0.05:
                    raise RemoteError(f"{self.url}: {r} and no time left to retry") from None
                log.debug("remote engine: %s; retrying in %.2f s", r, r.wait)
                if cancel is not None and cancel.wait(r.wait):
                    return Candidate(text="", finish_reason="cancelled")
                if cancel is None:
                    time.sleep(r.wait)

    def _stream(self, body: bytes, stop_check, cancel, deadline, t0) -> Candidate:
        resp = self._send("POST", "/v1/completions", body, deadline)
        if resp.status != 200:
            data = resp.read(65536)
            self._drop()
            msg = rq.error_message(data)
            if resp.status in (429, 503):
                wait = rq.retry_after(resp.getheader("Retry-After"))
                raise rq.Retry(wait, f"HTTP {resp.status} ({msg})")
            if resp.status in (401, 403):  # every request will fail alike: the breaker stops asking
                raise RemoteError(f"{self.url}: HTTP {resp.status}: the token was refused ({msg})")
            raise RemoteError(f"{self.url}: HTTP {resp.status}: {msg}", server_fault=not 400 <= resp.status < 500)
        cand = Candidate(text="")
        parts: list[str] = []
        first_at = None
        reason = None
        done = False
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = "deadline"
                    break
                if self._conn is not None and self._conn.sock is not None:
                    self._conn.sock.settimeout(min(self.timeout_s, left))
                try:
                    line = resp.readline(1 << 20)
                except (socket.timeout, TimeoutError):
                    if deadline - time.monotonic() <= 0:
                        reason = "deadline"  # the request's own time ran out: not the server's fault
                        break
                    if cand.text or parts:
                        reason = "timeout"
                        break
                    raise RemoteError(f"{self.url}: no tokens within {self.timeout_s * 1000:.0f} ms") from None
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                    choice = chunk["choices"][0] if chunk.get("choices") else None
                except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                    raise RemoteError(f"{self.url}: not an OpenAI completions stream: {data[:80]!r}") from None
                if chunk.get("usage"):
                    cand.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
                if choice is None:
                    continue
                if not isinstance(choice, dict) or not isinstance(choice.get("text", ""), str):
                    raise RemoteError(f"{self.url}: malformed choice in the stream: {data[:80]!r}")
                if first_at is None:
                    first_at = time.perf_counter()
                piece = choice.get("text") or ""
                parts.append(piece)
                lp = choice.get("logprobs") or {}
                if isinstance(lp, dict):
                    cand.logprobs += [float(x) for x in lp.get("token_logprobs") or [] if x is not None]
                    cand.offsets += [int(x) for x in lp.get("text_offset") or []]
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
                elif piece and stop_check is not None and stop_check_fires(stop_check, "".join(parts)):
                    reason = "early_stop"  # every further token would be cut: stop the server
                    break
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            if not parts:
                raise RemoteError(f"{self.url}: stream broken ({e.__class__.__name__})") from None
            reason = "error"
        if not done:
            resp.close()
            self._drop()  # closing the connection tells the server to stop generating
            if reason is None:
                if not parts:  # llama.cpp's answer to a prompt over its context, among others
                    raise RemoteError(f"{self.url}: stream ended without data (a prompt over the server's "
                                      "context? set remote_context)", server_fault=False)
                reason = "error"
        else:
            resp.read()  # drain the chunked terminator so the connection can be reused
        cand.text = "".join(parts)
        if cand.offsets:
            first = cand.offsets[0]  # OpenAI counts from the prompt's start; we count from the text's
            cand.offsets = [max(0, o - first) for o in cand.offsets]
        if len(cand.offsets) != len(cand.logprobs):
            cand.offsets = []
        cand.finish_reason = {"stop": "stop", "length": "length", "eos": "eos"}.get(reason, reason or "length")
        end = time.perf_counter()
        cand.prefill_ms = ((first_at or end) - t0) * 1000
        cand.decode_ms = (end - (first_at or end)) * 1000
        return cand

