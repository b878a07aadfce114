"""The completion pipeline as the evals drive it: the server's Completer on a real engine.

Every eval completes through `Completer.complete` (context → prompt → engine → filters →
rank), so it measures what an editor would be shown. `RecordingEngine` wraps the engine to
(a) give each request its own sampling temperature and seed (the Completer's first
candidate is greedy by design; pass@k needs independent samples) and (b) keep the raw
candidates, so loop and drop rates can be counted even when nothing is shown.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ghost_lsp.completion.completer import Completer
from ghost_lsp.completion.filters import repeated_lines, repeated_span
from ghost_lsp.engine.base import LocalEngine
from ghost_lsp.settings.core import Settings
from ghost_lsp.types import Candidate, Completion, CompletionRequest, Context, SamplingParams


class ModelLoadError(RuntimeError):
    """A model folder that cannot be used; the message names it."""


def load_engine(folder: str | Path):
    from ghost_lsp.engine.base import EngineError
    from ghost_lsp.engine.loading import load_local

    try:
        return load_local(folder)
    except EngineError as e:
        raise ModelLoadError(f"cannot load the model from {folder}: {e}") from None


class RecordingEngine:
    """Delegates to an engine; overrides temperature/seed when asked and keeps raw candidates."""

    def __init__(self, engine):
        self._engine = engine
        self.temperature: float | None = None  # None: keep the Completer's choice
        self.seed: int | None = None
        self.raw: list[Candidate] = []
        # isinstance(self, LocalEngine) answers as for the wrapped engine: a runtime protocol looks
        # at the instance itself (Python 3.12 no longer asks __getattr__), so bind its members here.
        if isinstance(engine, LocalEngine):
            for name in ("model_id", "manifest", "provider", "token_bytes", "encode", "token_logprobs"):
                setattr(self, name, getattr(engine, name))

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, prompt: str, params: SamplingParams, *args, **kwargs) -> Candidate:
        if self.temperature is not None:
            params = replace(params, temperature=self.temperature, seed=self.seed)
        cand = self._engine.generate(prompt, params, *args, **kwargs)
        self.raw.append(cand)
        return cand


def eval_settings(base: Settings | None = None, **overrides) -> Settings:
    """The user's settings with what an offline eval must not have: no debounce, no feedback."""
    return replace(base or Settings(), debounce_ms=0, feedback=False, **overrides)


def filter_cuts_loop(text: str) -> bool:
    """Would the loop filter cut this raw candidate? (the same rules the pipeline runs; the loop
    benchmark's judge, loops.is_loop, is deliberately independent of them)"""
    ctx = Context(prefix="", suffix="", path="", language="python")
    return any(rule(text, ctx)[1] == "cycle" for rule in (repeated_span, repeated_lines))


# The "nonsense" signals: rules that drop text because it is unlikely (the model's own
# log-probs) or malformed (adds syntax errors, unbalances brackets). Other drops (empty,
# already typed, a loop cut down to nothing) are counted per reason but are not nonsense.
NONSENSE_REASONS = ("low_confidence", "syntax", "bracket_balance")


def drop_reason(reasons: list[str]) -> str:
    """The rule that emptied a dropped candidate: its last named cut. The filter appends
    'empty' after the cut that left nothing (unless that cut is itself a drop signal)."""
    return next((r for r in reversed(reasons) if r != "empty"), "empty")


@dataclass
class Stats:
    """Per-request counters every eval reports."""

    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    loops: int = 0      # a raw candidate the loop filter cut
    dropped: int = 0    # the model produced text but nothing was left to show
    empty: int = 0      # no suggestion at all
    # Dropped requests by the rule that emptied the first (greedy) candidate.
    drops: Counter = field(default_factory=Counter)

    def metrics(self) -> dict:
        """Rates per request. nonsense_rate: dropped by the confidence, syntax or bracket rules
        (the model's output was unlikely or malformed); drop_rate: dropped for any reason,
        with drop_<reason>_rate per rule."""
        n = max(1, self.requests)
        lat = sorted(self.latencies_ms)
        nonsense = sum(self.drops[r] for r in NONSENSE_REASONS)
        out = {"loop_rate": self.loops / n, "nonsense_rate": nonsense / n, "drop_rate": self.dropped / n,
               "empty_rate": self.empty / n,
               "latency_p50_ms": percentile(lat, 50), "latency_p95_ms": percentile(lat, 95),
               "requests": self.requests}
        out.update({f"drop_{r}_rate": c / n for r, c in sorted(self.drops.items())})
        return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile; 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]) if 0 < q < 100 \
        else float(max(values) if q >= 100 else min(values))


class Pipeline:
    """One model folder behind a Completer, for many requests in a row."""

    def __init__(self, model: str | Path, settings: Settings | None = None, engine=None):
        self.engine = RecordingEngine(engine if engine is not None else load_engine(model))
        self.settings = eval_settings(settings)
        self.completer = Completer(self.engine, self.settings, None)
        self.stats = Stats()
        self.templates: set[str] = set()  # the ids completions report
        try:
            from ghost_lsp.completion.prompt import template_for

            self.template_id = template_for(self.engine.manifest).id  # known even if nothing is shown
        except Exception:  # noqa: BLE001 - a bad template shows up as failed requests, not here
            self.template_id = ""
        self._loop = asyncio.new_event_loop()

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def prompt_template(self) -> str:
        return ",".join(sorted(self.templates)) or self.template_id

    def close(self) -> None:
        self.completer.close()
        self._loop.close()

    def complete(self, text: str, line: int, character: int, *, path: str = "eval.py",
                 temperature: float | None = None, seed: int | None = None) -> Completion | None:
        """One request at (line, character) of `text`, counted in `self.stats`."""
        self.engine.temperature, self.engine.seed = temperature, seed
        self.engine.raw = []
        req = CompletionRequest(uri=f"file:///eval/{path}", version=None, line=line, character=character,
                                path=path, trigger="invoked")
        t0 = time.perf_counter()
        completion = self._loop.run_until_complete(self.completer.complete(req, text))
        self.stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
        self.stats.requests += 1
        raw = [c.text for c in self.engine.raw]
        if any(filter_cuts_loop(t) for t in raw):
            self.stats.loops += 1
        if completion is None:
            self.stats.empty += 1
            if any(t.strip() for t in raw):
                self.stats.dropped += 1
                kept = self.completer.last_kept
                self.stats.drops[drop_reason(kept[0][1]) if kept else "no_candidate"] += 1
        else:
            self.templates.add(completion.prompt_template)
        return completion
