"""Plain values handed from one pipeline stage to the next (see ARCHITECTURE.md, "The flow").

Nothing here imports lsprotocol: the server translates LSP to and from these types,
so every later stage can be tested and reused (CLI, eval harness) without an editor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class CompletionRequest:
    """One completion request, already translated out of LSP.

    `line` and `character` are in Python code points (the server converts from the
    negotiated position encoding).
    """

    uri: str
    version: int | None
    line: int
    character: int
    language: str = "python"
    path: str = ""
    multiline: bool = True
    trigger: str = "automatic"  # "automatic" | "invoked"


@dataclass
class Snippet:
    """A piece of context from somewhere other than the cursor's own window."""

    path: str
    text: str
    score: float = 0.0
    source: str = ""  # which provider produced it


@dataclass
class Context:
    prefix: str
    suffix: str
    path: str
    language: str
    snippets: list[Snippet] = field(default_factory=list)

    @property
    def current_line_prefix(self) -> str:
        """Text of the cursor's line before the cursor."""
        return self.prefix.rsplit("\n", 1)[-1]


@dataclass
class Prompt:
    text: str
    stop: list[str] = field(default_factory=list)
    template: str = ""  # "<name>@<version>", logged with each suggestion
    fim: bool = False


@dataclass
class SamplingParams:
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Called with the text so far after each token; True stops decoding (finish_reason
    # "early_stop"). Engines that cannot call back (remote) may ignore it: the filters cut anyway.
    stop_check: Callable[[str], bool] | None = None
    # Whether the caller uses per-token log-probs (the confidence gate, the ranker). Engines that
    # pay for them (a remote llama.cpp server takes several times as long) ask only when True.
    logprobs: bool = True


@dataclass
class Candidate:
    """One generated continuation, before filtering."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # Per token: the model's own log-prob (before penalties, temperature, top-p; equal to
    # `logprobs` when greedy) and the code-point offset in `text` where the token starts
    # (0 for tokens that re-spell a healed prompt tail). Empty when the engine does not know.
    model_logprobs: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "length" | "stop" | "eos" | "cancelled" | "deadline" | "early_stop"
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    prompt_tokens: int = 0
    # Decode-loop counters from engines that have them (engine/speculative.py: model calls,
    # drafted/accepted tokens, what the n-gram cache mix changed). Empty otherwise.
    decode_info: dict = field(default_factory=dict)


@dataclass
class Completion:
    """The answer for one request: the kept suggestion and what happened to get it."""

    id: str
    text: str
    candidate: Candidate | None = None
    cut_reasons: list[str] = field(default_factory=list)
    # Further distinct suggestions, best first, for clients that show alternatives.
    alternatives: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    prompt_template: str = ""
    prompt_hash: str = ""
    model_id: str = ""
    prompt: str = ""  # the rendered prompt, for the feedback log (redacted there)
    variant: str = ""  # A/B variant that produced it ("" = no experiment)
