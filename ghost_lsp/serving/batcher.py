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

Per-sequence decoding (token healing, sampling, stop sequences) is the engine's own step
(engine/decode.py), in sequence.py; the padded caches are in batch.py.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.sampling import choose_tokens
from ghost_lsp.serving.batch import _Batch, _InPlaceBatch, pads_right
from ghost_lsp.serving.sequence import Sequence

log = logging.getLogger(__name__)


IN_PLACE_MAX_BYTES = 2 << 30  # the in-place batch's KV buffers at most (all slots, full context)


class QueueFull(Exception):
    """The bounded queue is full: answer 429 with Retry-After instead of queueing."""


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
