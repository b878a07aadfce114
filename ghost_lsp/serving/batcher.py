"""Continuous batching over one ONNX decoder: many sequences, one `session.run` per decode step.

One scheduler thread owns the ONNX session. Between decode steps it admits queued sequences
(each prefilled alone, batch 1, then merged into the running batch) and drops finished,
cancelled or expired ones, so requests join and leave without waiting for each other.

The running batch keeps one KV cache per layer shaped (batch, heads, Lmax, head_dim); row i
holds `pad[i]` dead positions, so each row computes what it would alone:
- optimum graphs: rows are left-padded; the dead positions are masked with attention_mask = 0
  and position_ids count only the real tokens;
- fused graphs (modelkit/llama_graph.py, no position_ids): rows are right-padded; the mask's
  row sum tells GroupQueryAttention each row's length, which places the new token's key/value
  right after the row's real ones and takes its rotary position from that length. On the CPU
  (_InPlaceBatch) the rows' caches live in preallocated buffers that GroupQueryAttention appends
  to in place, so a step copies no cache.
(With an fp32 model the greedy output is the same token for token; a dynamically quantized int8
model picks its activation scales over the whole batch, so its logits shift slightly with it.)

Per-sequence decoding (token healing, sampling, stop sequences) mirrors OnnxEngine._generate.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ghost_lsp.engine.decode import Generation, first_stop
from ghost_lsp.engine.healing import heal_split
from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.sampling import choose_tokens, log_softmax

log = logging.getLogger(__name__)


IN_PLACE_MAX_BYTES = 2 << 30  # the in-place batch's KV buffers at most (all slots, full context)


class QueueFull(Exception):
    """The bounded queue is full: answer 429 with Retry-After instead of queueing."""


@dataclass
class SeqParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # top alternatives per token (OpenAI `logprobs`), None = off


@dataclass
class Event:
    """What a sequence produced since its last event. `final` carries finish_reason."""

    text: str
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]
    final: bool = False
    finish_reason: str | None = None


def _holdback(text: str, stops: list[str]) -> int:
    """Chars at the end of `text` that could still become a stop sequence (not safe to send)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Sequence:
    """One completion being generated; `emit` is called from the scheduler thread."""

    def __init__(self, engine: OnnxEngine, prompt_ids: list[int], params: SeqParams, deadline: float,
                 emit: Callable[[Event], None]):
        self.params, self.deadline, self.emit = params, deadline, emit
        self.engine = engine
        self.prompt_tokens = len(prompt_ids)
        vocab = engine.vocab
        keep, healed = heal_split(prompt_ids, vocab.token_bytes) if vocab.healer else (len(prompt_ids), b"")
        self.gen = Generation(vocab, healed, params.seed)  # the decoding state (engine/decode.py)
        self.ids = prompt_ids[:keep] or ([engine.eos_id] if engine.eos_id is not None else [])
        self.max_steps = params.max_tokens + (len(prompt_ids) - keep)
        self.stops = [s for s in params.stop if s]
        self.text = ""
        self.steps = 0
        self.completion_tokens = 0
        # per generated token (healed-tail tokens included): string, log-probs
        self.tok_text: list[str] = []
        self.tok_lp: list[float] = []
        self.tok_top: list[dict[str, float]] = []
        self.sent_chars = 0
        self.sent_tokens = 0
        self.next_token: int | None = None
        self.cancelled = False
        self.done = False
        self.submitted = time.monotonic()
        self.admitted_at: float | None = None  # prefilled and running
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled = True  # read by the scheduler between steps

    def consume(self, logits: np.ndarray) -> bool:
        """Choose the next token from `logits`; return True when the sequence has finished."""
        mask = self.gen.mask()
        tok, lp = self.gen.choose(logits, mask, self.params)
        return self.take(tok, lp, logits, mask)

    def take(self, tok: int, lp: float, logits: np.ndarray, mask: np.ndarray) -> bool:
        """Record the chosen token (from `consume`, or from a batched choice for rows that are
        past token healing); return True when the sequence has finished."""
        eng, p = self.engine, self.params
        self.steps += 1
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if tok == eng.eos_id:
            return self.finish("stop")
        visible = self.gen.take(tok)
        self.tok_text.append(eng.token_bytes[tok].decode("utf-8", "replace"))
        if p.logprobs is not None:
            self.tok_lp.append(lp)
            if p.logprobs > 0:
                lps = log_softmax(np.where(mask, logits, -np.inf))
                top = np.argpartition(-lps, p.logprobs)[:p.logprobs] if p.logprobs < len(lps) else np.arange(len(lps))
                self.tok_top.append({eng.token_bytes[int(i)].decode("utf-8", "replace"): float(lps[i])
                                     for i in top[np.argsort(-lps[top])]})
        if visible:
            self.completion_tokens += 1
            self.text = self.gen.text()
            cut = first_stop(self.text, self.stops)
            if cut >= 0:
                self.text = self.text[:cut]
                return self.finish("stop")
        if self.steps >= self.max_steps:
            return self.finish("length")
        self.next_token = tok
        self._send(final=False)
        return False

    def _send(self, final: bool, reason: str | None = None) -> None:
        safe = len(self.text) if final else len(self.text) - _holdback(self.text, self.stops)
        if not final and safe <= self.sent_chars:
            return
        offsets = self.gen.offsets()
        # Tokens that start before the end of the text sent (as OnnxEngine cuts at a stop).
        n_tok = self.gen.tokens_before(self.text[:safe])
        sl = slice(self.sent_tokens, n_tok)
        has_lp = self.params.logprobs is not None
        ev = Event(text=self.text[self.sent_chars:safe], tokens=self.tok_text[sl],
                   token_logprobs=self.tok_lp[sl] if has_lp else [],
                   top_logprobs=self.tok_top[sl] if has_lp and self.params.logprobs else [],
                   text_offset=offsets[sl] if has_lp else [], final=final, finish_reason=reason)
        self.sent_chars, self.sent_tokens = max(safe, self.sent_chars), max(n_tok, self.sent_tokens)
        try:
            self.emit(ev)
        except Exception:  # a vanished listener must not stop the batch
            log.debug("event listener failed", exc_info=True)
            self.cancelled = True

    def finish(self, reason: str) -> bool:
        if not self.done:
            self.done = True
            self._send(final=True, reason=reason)
        return True


def pads_right(decoder) -> bool:
    """Rows of this graph are right-padded: it takes no position_ids, and its attention reads
    each row's length from the mask (the fused export: logits_to_keep marks it)."""
    return "position_ids" not in decoder.extra and "attention_mask" in decoder.extra and decoder.can_keep_last


class _Batch:
    """The running rows and their padded KV cache (left- or right-padded, per the graph)."""

    def __init__(self, decoder):
        self.dec = decoder
        self.right = pads_right(decoder)
        self.rows: list[Sequence] = []
        self.pad: list[int] = []
        self.cache: dict[str, np.ndarray] = {}
        self.length = 0  # Lmax

    def _pad(self, arr: np.ndarray, axis: int, n: int) -> np.ndarray:
        if n == 0:
            return arr
        widths = [(0, 0)] * arr.ndim
        widths[axis] = (0, n) if self.right else (n, 0)
        return np.pad(arr, widths)

    def join(self, seq: Sequence, cache: dict[str, np.ndarray]) -> None:
        n = self.dec.past_length(cache)
        if not self.rows:
            self.rows, self.pad, self.cache, self.length = [seq], [0], dict(cache), n
            return
        if n > self.length:
            grow = n - self.length
            self.cache = {k: self._pad(v, self.dec.past[k][2], grow) for k, v in self.cache.items()}
            self.pad = [p + grow for p in self.pad]
            self.length = n
        extra = self.length - n
        self.cache = {k: np.concatenate([v, self._pad(cache[k], self.dec.past[k][2], extra)], axis=0)
                      for k, v in self.cache.items()}
        self.rows.append(seq)
        self.pad.append(extra)

    def row_length(self, i: int) -> int:
        return self.length - self.pad[i]

    def keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.pad = [self.pad[i] for i in keep]
        if not self.rows:
            self.cache, self.length = {}, 0
            return
        idx = np.asarray(keep)
        trim = min(self.pad)  # columns dead in every remaining row
        out = {}
        for k, v in self.cache.items():
            v = v[idx]
            if trim:
                sl = [slice(None)] * v.ndim
                sl[self.dec.past[k][2]] = slice(0, self.length - trim) if self.right else slice(trim, None)
                v = v[tuple(sl)]
            out[k] = np.ascontiguousarray(v)
        self.cache = out
        self.pad = [p - trim for p in self.pad]
        self.length -= trim

    def step(self) -> np.ndarray:
        """One decode step for every row; returns logits (rows, vocab)."""
        dec, b = self.dec, len(self.rows)
        feed = {"input_ids": np.asarray([[r.next_token] for r in self.rows], dtype=dec.input_ids_type)}
        if "attention_mask" in dec.extra:
            mask = np.ones((b, self.length + 1), dtype=dec.extra["attention_mask"])
            for i, p in enumerate(self.pad):
                if p:  # the row's dead positions: after its real ones, or before them
                    mask[i, slice(self.length + 1 - p, None) if self.right else slice(0, p)] = 0
            feed["attention_mask"] = mask
        if "position_ids" in dec.extra:
            feed["position_ids"] = np.asarray([[self.length - p] for p in self.pad], dtype=dec.extra["position_ids"])
        elif any(self.pad) and not self.right:
            raise RuntimeError("padded batches need a graph with position_ids")
        if dec.can_keep_last:
            feed["logits_to_keep"] = np.array([1], dtype=np.int64)
        feed.update(self.cache)
        outs = dec.session.run(dec.output_names, feed)
        self.cache = {dec.present_to_past[n]: a for n, a in zip(dec.output_names[1:], outs[1:])}
        self.length += 1
        return outs[0][:, -1, :]


class _InPlaceBatch:
    """The running rows of a fused graph on the CPU, their caches in one preallocated buffer per
    layer, (slots, kv_heads, capacity, head_dim), that past and present share through IO binding.

    GroupQueryAttention appends each row's new key/value at that row's own length (the mask's
    row sum), in place, so a step copies no cache (the padded batch's graph copies all of it
    into a new present every step). Rows sit in slots 0..B-1, so the first B slots are one
    contiguous block to bind; a row joins by copying its prefill cache into slot B and rows
    leave by moving the ones after them down. The attention mask keeps its full width, ones up
    to each row's length, so its shape changes only when B does.
    """

    def __init__(self, decoder, slots: int, capacity: int):
        self.dec = decoder
        cap = capacity  # positions a row may reach (≤ the graph's rotary tables)
        self.slots = slots
        self.bufs: dict[str, np.ndarray] = {}
        for name, (shape, dtype, axis) in decoder.past.items():
            full = list(shape)
            full[0], full[axis] = slots, cap
            self.bufs[name] = np.zeros(full, dtype=dtype)
        self.axis = {name: axis for name, (_, _, axis) in decoder.past.items()}
        self.mask = np.zeros((slots, cap), dtype=decoder.extra["attention_mask"])
        self.ids = np.zeros((slots, 1), dtype=decoder.input_ids_type)
        self.logits = np.zeros((slots, 1, decoder.vocab_size), dtype=np.float32)
        self.keep_one = np.ones(1, dtype=np.int64)
        self.lens = np.zeros(slots, dtype=np.int64)  # each row's cached positions
        self.rows: list[Sequence] = []
        self._binding = None
        self._bound = -1  # the row count the binding's shapes are for

    def row_length(self, i: int) -> int:
        return int(self.lens[i])

    def _slot(self, name: str, slot: int, n: int) -> tuple:
        index = [slice(None)] * self.bufs[name].ndim
        index[0], index[self.axis[name]] = slot, slice(0, n)
        return tuple(index)

    def join(self, seq: Sequence, cache) -> None:
        b = len(self.rows)
        if b >= self.slots:
            raise RuntimeError(f"no free batch slot ({self.slots})")
        n = self.dec.past_length(cache)
        for name, buf in self.bufs.items():
            buf[self._slot(name, b, n)] = cache[name][0]
        self.mask[b] = 0
        self.mask[b, :n] = 1
        self.lens[b] = n
        self.rows = self.rows + [seq]  # a new list: other threads read a snapshot of it

    def keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        for j, i in enumerate(keep):  # keep is increasing, so slot j is free or already moved
            if i != j:
                n = int(self.lens[i])
                for name, buf in self.bufs.items():
                    buf[self._slot(name, j, n)] = buf[self._slot(name, i, n)]
                self.mask[j] = self.mask[i]
                self.lens[j] = n
        self.rows = [self.rows[i] for i in keep]

    def _bind(self, b: int) -> None:
        dec = self.dec
        binding = self._binding = dec.session.io_binding()
        for present, name in dec.present_to_past.items():
            buf = self.bufs[name]
            shape = [b] + list(buf.shape[1:])
            binding.bind_input(name, "cpu", 0, buf.dtype, shape, buf.ctypes.data)
            binding.bind_output(present, "cpu", 0, buf.dtype, shape, buf.ctypes.data)
        binding.bind_input("input_ids", "cpu", 0, self.ids.dtype, [b, 1], self.ids.ctypes.data)
        binding.bind_input("attention_mask", "cpu", 0, self.mask.dtype, [b, self.mask.shape[1]],
                           self.mask.ctypes.data)
        binding.bind_input("logits_to_keep", "cpu", 0, np.int64, [1], self.keep_one.ctypes.data)
        binding.bind_output(dec.logits_name, "cpu", 0, np.float32, [b, 1, self.logits.shape[2]],
                            self.logits.ctypes.data)
        self._bound = b

    def step(self) -> np.ndarray:
        """One decode step for every row; returns logits (rows, vocab)."""
        b = len(self.rows)
        if b != self._bound:
            self._bind(b)
        self.ids[:b, 0] = [r.next_token for r in self.rows]
        self.mask[np.arange(b), self.lens[:b]] = 1  # the position the new token takes
        self.dec.session.run_with_iobinding(self._binding)
        self.lens[:b] += 1
        return self.logits[:b, 0, :].copy()


class Stats:
    """Hooks the metrics layer fills in; all no-ops by default."""

    def batch(self, size: int, seconds: float, tokens: int) -> None: ...
    def prefill(self, tokens: int, seconds: float) -> None: ...
    def queue(self, depth: int, active: int) -> None: ...


class Batcher:
    """Owns the engine and the scheduler thread. `submit` is thread-safe."""

    def __init__(self, engine: OnnxEngine, *, max_batch: int = 16, max_queue: int = 64,
                 batching: bool = True, stats: Stats | None = None, window_s: float = 10.0,
                 max_wait_s: float | None = None):
        self.engine = engine
        self.max_batch = max(1, max_batch) if batching else 1
        if self.max_batch > 1 and "position_ids" not in engine.decoder.extra and not pads_right(engine.decoder):
            # Rows of different lengths are padded, which needs per-row positions: from
            # position_ids (left padding) or from the mask's row sums (fused graphs).
            log.warning("this model graph takes neither position_ids nor per-row lengths: batching "
                        "is off (export it with --graph fused or optimum to batch)")
            self.max_batch = 1
        self.max_queue = max(1, max_queue)
        # Admission by expected queueing time: a request that would wait longer than this for a
        # batch slot is refused at once (429) rather than queued, so admitted requests keep the
        # latency of a full batch. None = bounded only by max_queue.
        self.max_wait_s = max_wait_s
        self._service_s = 0.0  # moving average of a sequence's time in the batch (admitted → done)
        self.batching = batching
        self.stats = stats or Stats()
        self.context_length = engine.manifest.context_length
        self._pending: collections.deque[list[Sequence]] = collections.deque()
        self._cv = threading.Condition()
        dec = engine.decoder
        # A fused graph on the CPU keeps the batch's caches in place (n ≤ 8 sequences of one
        # request share a prompt, so there are at least 8 slots even without batching), in
        # buffers sized for every slot at the full context: unless that is over IN_PLACE_MAX_BYTES
        # (a large model with a long context), then rows are padded per step as for optimum graphs.
        slots, cap = max(self.max_batch, 8), min(dec.kv_capacity, self.context_length)
        need = slots * cap * sum(int(np.prod([d for i, d in enumerate(shape) if i not in (0, axis)]))
                                 * np.dtype(dtype).itemsize for shape, dtype, axis in dec.past.values())
        if pads_right(dec) and cap > 0 and need <= IN_PLACE_MAX_BYTES:
            self._batch = _InPlaceBatch(dec, slots, cap)
            self.context_length = cap
        else:
            if pads_right(dec) and cap > 0:
                log.warning("in-place batch buffers would take %.1f GB; rows are padded per step instead",
                            need / 1e9)
            self._batch = _Batch(dec)
        self._stop = False
        self._busy: collections.deque[tuple[float, float]] = collections.deque()  # (end, seconds)
        self._window = window_s
        self._thread = threading.Thread(target=self._loop, name="ghost-batcher", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------

    def queued(self) -> int:
        with self._cv:
            return sum(len(g) for g in self._pending)

    def active(self) -> int:
        return len(self._batch.rows)

    def submit(self, group: list[Sequence]) -> None:
        """Queue sequences that share a prompt (n > 1 prefills once). Raises QueueFull."""
        with self._cv:
            if self._stop:
                raise QueueFull("server is shutting down")
            queued = sum(len(g) for g in self._pending)
            if queued + len(group) > self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} sequences waiting)")
            wait = self.expected_wait(queued + len(group))
            if self.max_wait_s is not None and wait > self.max_wait_s:
                raise QueueFull(f"expected wait {wait * 1000:.0f} ms for a batch slot is over the "
                                f"{self.max_wait_s * 1000:.0f} ms limit")
            self._pending.append(group)
            self._cv.notify()

    def expected_wait(self, waiting: int) -> float:
        """Seconds the last of `waiting` queued sequences would wait for a batch slot.

        Slots free as running rows finish: a row admitted t seconds ago is expected to finish
        in (mean service time - t); the k-th sequence beyond the free slots takes the k-th
        slot to free up (a full service time later for each further round). 0 before any
        sequence finished (then only max_queue bounds the queue).
        """
        beyond = waiting - (self.max_batch - len(self._batch.rows))
        if beyond <= 0 or self._service_s == 0.0:
            return 0.0
        now = time.monotonic()
        rows = list(self._batch.rows)  # a snapshot: the scheduler thread changes the list
        left = sorted(max(0.0, self._service_s - (now - (s.admitted_at or now))) for s in rows)
        if not left:  # nothing running yet: the queue is admitted a batch at a time
            return -(-beyond // self.max_batch) * self._service_s
        rounds, k = divmod(beyond - 1, len(left))
        return left[k] + rounds * self._service_s

    def utilisation(self) -> float:
        """Share of the last `window_s` seconds the model was running (0..1)."""
        now = time.monotonic()
        while self._busy and self._busy[0][0] < now - self._window:
            self._busy.popleft()
        return min(1.0, sum(s for _, s in self._busy) / self._window)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)

    # -- scheduler thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._pending and not self._batch.rows:
                    self._cv.wait(timeout=1.0)
                if self._stop:
                    break
            try:
                self._admit()
                self._decode()
            except Exception:  # noqa: BLE001 - a failed run fails its rows, not the server
                log.exception("batch step failed; failing %d sequences", len(self._batch.rows))
                for seq in self._batch.rows:
                    seq.finish("error")
                self._batch.keep([])
            self.stats.queue(self.queued(), len(self._batch.rows))
        for seq in self._batch.rows:
            seq.finish("cancelled")
        for group in self._pending:
            for seq in group:
                seq.finish("cancelled")

    def _take(self) -> list[Sequence] | None:
        with self._cv:
            if not self._pending:
                return None
            if len(self._batch.rows) + len(self._pending[0]) > self.max_batch and self._batch.rows:
                return None
            return self._pending.popleft()

    def _admit(self) -> None:
        while (group := self._take()) is not None:
            now = time.monotonic()
            live = [s for s in group if not s.cancelled]
            for s in live:
                if now >= s.deadline:
                    s.finish("deadline")
            live = [s for s in live if not s.done]
            if not live:
                continue
            t0 = time.perf_counter()
            for s in live:
                s.admitted_at = time.monotonic()
            try:
                logits, cache = self.engine.decoder.run(live[0].ids, self.engine.decoder.empty_past(), last_only=True)
            except Exception:  # noqa: BLE001 - e.g. an input the graph rejects
                log.exception("prefill failed")
                for s in live:
                    s.finish("error")
                continue
            dt = time.perf_counter() - t0
            self._busy.append((time.monotonic(), dt))
            self.stats.prefill(len(live[0].ids), dt)
            for s in live:
                if s.max_steps <= 0:
                    s.finish("length")
                elif not s.consume(logits[-1]):
                    self._batch.join(s, cache)

    def _choose_and_take(self, rows: list[Sequence], logits: np.ndarray) -> list[bool]:
        """Next token of every row: rows past token healing share the engine's mask and are
        chosen in one batched numpy call (the same tokens as one by one: see choose_tokens);
        rows still re-spelling a healed prompt tail have their own mask and go one by one."""
        plain = [i for i, s in enumerate(rows) if not s.gen.remaining]
        if len(plain) < 2:  # nothing to batch
            return [s.consume(logits[i]) for i, s in enumerate(rows)]
        done = [False] * len(rows)
        seqs = [rows[i] for i in plain]
        ps = [s.params for s in seqs]
        fp = np.array([p.frequency_penalty for p in ps])
        pp = np.array([p.presence_penalty for p in ps])
        counts = np.stack([s.gen.counts for s in seqs]) if fp.any() or pp.any() else None
        toks, lps = choose_tokens(logits[plain], temperatures=np.array([p.temperature for p in ps]),
                                  top_ps=np.array([p.top_p for p in ps]), counts=counts,
                                  frequency_penalties=fp, presence_penalties=pp, mask=self.engine.vocab.allowed,
                                  rngs=[s.gen.rng for s in seqs])
        for j, i in enumerate(plain):
            done[i] = rows[i].take(int(toks[j]), float(lps[j]), logits[i], self.engine.vocab.allowed)
        for i, s in enumerate(rows):
            if s.gen.remaining:  # still healing: its own mask
                done[i] = s.consume(logits[i])
        return done

    def _decode(self) -> None:
        b = self._batch
        now = time.monotonic()
        keep = []
        for i, s in enumerate(b.rows):
            if s.cancelled:
                s.done = True
            elif now >= s.deadline:
                s.finish("deadline")
            elif b.row_length(i) + 1 > self.context_length:
                s.finish("length")  # context window full
            if not s.done:
                keep.append(i)
        b.keep(keep)
        if not b.rows:
            return
        t0 = time.perf_counter()
        logits = b.step()
        dt = time.perf_counter() - t0
        self._busy.append((time.monotonic(), dt))
        self.stats.batch(len(b.rows), dt, len(b.rows))
        done = self._choose_and_take(b.rows, logits)
        keep = [i for i, s in enumerate(b.rows) if not done[i]]
        if len(keep) < len(b.rows):
            now, kept = time.monotonic(), set(keep)
            for i, s in enumerate(b.rows):
                if i not in kept and s.admitted_at is not None:
                    d = now - s.admitted_at
                    self._service_s = d if self._service_s == 0.0 else 0.8 * self._service_s + 0.2 * d
        b.keep(keep)
