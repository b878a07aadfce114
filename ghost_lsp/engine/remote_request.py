"""What the remote engine sends: a completions body in the server's dialect, a prompt cut to the
model's known context, and what `GET /v1/models` says about the server.

Why dialects: every OpenAI-compatible server fills the sampling fields the request leaves out
with its own defaults, and names the non-OpenAI ones differently. llama.cpp's server applies
repeat_penalty 1.1, top_k 40 and min_p 0.05; vLLM applies the model's generation_config.json
(often a repetition_penalty). Then "temperature 0" is not the model's greedy choice, and the
remote text differs from the local model's. So the neutral values are sent explicitly, in the
server's names (llama.cpp `repeat_penalty`, vLLM `repetition_penalty`), and only the fields a
dialect documents: vLLM warns about unknown fields, a strict proxy may refuse them.

| dialect | detected from /v1/models | extra fields sent |
|---|---|---|
| `ghost-lsp` | owned_by "ghost-lsp" | truncate_prompt_tokens (when counts are estimates) |
| `vllm` | owned_by "vllm" | top_k -1, min_p 0, repetition_penalty 1, truncate_prompt_tokens |
| `llama.cpp` | owned_by "llamacpp" (llama-server) or "me" (llama-cpp-python), or a .gguf id | top_k 0, min_p 0, repeat_penalty 1 |
| `openai` | anything else (TGI, Ollama, proxies) | none: the OpenAI fields only |

FIM: the prompt is always rendered here, by the language server's own template (the model
folder's family), and sent as `prompt`; `suffix` and llama.cpp's `/infill` are never used. The
server-side templates differ by server (vLLM refuses `suffix`, `/infill` adds its own extra-context
format, Ollama's comes from the Modelfile), so only our own rendering gives the remote model the
tokens the local model sees, and keeps remote and local suggestions alike.
"""

from __future__ import annotations

import json
import logging
import math

from ghost_lsp.engine.base import EngineError
from ghost_lsp.types import SamplingParams

log = logging.getLogger(__name__)

DIALECTS = ("auto", "openai", "vllm", "llama.cpp", "ghost-lsp")
CHARS_PER_TOKEN = 3.5
MAX_RETRY_AFTER_S = 2.0

# Fields each dialect needs beyond OpenAI's so that temperature 0 is the model's argmax and a
# sampled candidate sees only temperature and top_p, as in the local engine.
NEUTRAL = {
    "openai": {},
    "ghost-lsp": {},  # serve-model has no top_k, min_p or repetition penalty
    # vLLM: top_k -1 = all tokens (every vLLM version; newer ones also take 0)
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    # llama.cpp: top_k <= 0 = all tokens, min_p 0 = off, repeat_penalty 1 = off
    "llama.cpp": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
}
TRUNCATES = {"vllm", "ghost-lsp"}  # honour truncate_prompt_tokens (llama.cpp ignores it)


class Retry(Exception):
    """The server is busy (429/503): ask again after `wait` seconds, if the deadline allows."""

    def __init__(self, wait: float, reason: str):
        super().__init__(reason)
        self.wait = wait


def detect_dialect(entry: dict) -> str:
    """The dialect of the server that listed `entry` in GET /v1/models."""
    owner = str(entry.get("owned_by", "")).lower()
    if owner == "ghost-lsp" or "ghost_lsp" in entry:
        return "ghost-lsp"
    if owner == "vllm":
        return "vllm"
    if owner in ("llamacpp", "llama.cpp", "me") or str(entry.get("id", "")).lower().endswith(".gguf"):
        return "llama.cpp"
    return "openai"


def context_of(entry: dict) -> int | None:
    """The context length a /v1/models entry states, if any (ghost-lsp's, vLLM's, llama-server's)."""
    info = entry.get("ghost_lsp") if isinstance(entry.get("ghost_lsp"), dict) else {}
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for v in (info.get("context_length"), entry.get("max_model_len"), meta.get("n_ctx")):
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def body(prompt: str, params: SamplingParams, *, dialect: str, model: str = "",
         truncate_to: int | None = None) -> bytes:
    """The JSON body of one streamed POST /v1/completions."""
    b: dict = {"prompt": prompt, "max_tokens": int(params.max_new_tokens),
               "temperature": float(params.temperature), "top_p": float(params.top_p), "stream": True}
    if params.logprobs:
        b["logprobs"] = 0  # the chosen token's log-prob only (costly on llama.cpp: asked only when used)
    if model:
        b["model"] = model
    if params.frequency_penalty:
        b["frequency_penalty"] = float(params.frequency_penalty)
    if params.presence_penalty:
        b["presence_penalty"] = float(params.presence_penalty)
    stops = [s for s in params.stop if s][:4]  # the OpenAI API takes at most 4
    if stops:
        b["stop"] = stops
    if params.seed is not None:
        b["seed"] = int(params.seed)
    b.update(NEUTRAL.get(dialect, {}))
    if truncate_to and dialect in TRUNCATES:
        b["truncate_prompt_tokens"] = int(truncate_to)
    return json.dumps(b).encode("utf-8")


def estimate_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    return math.ceil(len(text) / chars_per_token)


def fit_prompt(prompt: str, room: int, tokenizer=None, chars_per_token: float = CHARS_PER_TOKEN) -> str:
    """`prompt` cut to at most `room` tokens, keeping its end (nearest the cursor).

    With the model's tokenizer the count is exact and a run of special tokens at the start
    (BOS, <fim_prefix>: the template's head) is kept; without one, len / chars_per_token estimates it.
    """
    if room <= 0:
        return ""
    if tokenizer is None:
        keep = int(room * chars_per_token)
        return prompt if len(prompt) <= keep else prompt[len(prompt) - keep:]
    enc = tokenizer.encode(prompt, add_special_tokens=False)
    ids, offsets = enc.ids, enc.offsets
    if len(ids) <= room:
        return prompt
    special = _special_ids(tokenizer)
    lead = 0
    while lead < min(len(ids), 4) and ids[lead] in special:
        lead += 1
    head = offsets[lead - 1][1] if lead else 0
    tail = max(1, room - lead)
    for _ in range(4):  # BPE may merge differently across the cut: count again
        cut = prompt[:head] + prompt[max(offsets[len(ids) - tail][0], head):]
        over = len(tokenizer.encode(cut, add_special_tokens=False).ids) - room
        if over <= 0 or tail <= 1:
            return cut
        tail = max(1, tail - over)
    return cut


def _special_ids(tokenizer) -> set[int]:
    try:
        return {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    except AttributeError:  # older tokenizers
        return set()


def error_message(data: bytes) -> str:
    """The message of an OpenAI-style error body (or its first 200 bytes)."""
    try:
        err = json.loads(data)
        msg = err.get("error") if isinstance(err, dict) else None
        if isinstance(msg, dict):
            return str(msg.get("message", ""))[:200]
        if isinstance(msg, str):
            return msg[:200]
    except ValueError:
        pass
    return data[:200].decode("utf-8", "replace")


def retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header, within [0.05, MAX_RETRY_AFTER_S]."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.05, float(value))) if value else 0.25
    except ValueError:
        return 0.25


# -- errors (raised by remote.py; here so that module stays one screen shorter) --------------

class RemoteError(EngineError):
    """The remote server failed this request (the message says how; never the token).

    `server_fault`: the server is down or broken (counts towards the circuit breaker); False
    when the server is up and refused or could not do this one request."""

    def __init__(self, message: str, *, server_fault: bool = True):
        super().__init__(message)
        self.server_fault = server_fault


class RemoteUnavailable(RemoteError):
    """The circuit breaker is open: the server failed repeatedly; not asked for a while."""


class DeadlinePassed(RemoteError):
    """This request's deadline passed before any answer: an empty suggestion, not a fault."""
