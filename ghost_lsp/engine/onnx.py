"""Local engine: a ghost-lsp model folder run with plain onnxruntime + tokenizers + numpy.

No torch, transformers or optimum here: the server imports this, and those cost seconds of
start-up and hundreds of MB. The decode loop prefills the prompt once, then feeds one token
per step with the previous step's `present.*` outputs as `past_key_values.*` inputs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.decode import Generation, Vocabulary, first_stop
from ghost_lsp.engine.healing import heal_prompt, token_bytes_table
from ghost_lsp.engine.sampling import log_softmax, token_logprob
from ghost_lsp.engine.speculative import Adapt, DecodeHooks
from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.types import Candidate, SamplingParams

log = logging.getLogger(__name__)

_NP_TYPES = {
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
    "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
}


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_OPT_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def default_threads() -> int:
    """Intra-op threads: one on machines of up to 2 cores, else half the cores (at most 4).

    Measured (ghost-lsp bench, 5 M int8 model, 2 cores shared with other work): 2 threads
    decoded 2.7x slower than 1 and prefilled 1.9x slower; a one-token decode step is a few
    hundred small ops, where waking a second thread costs more than it saves.
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(4, cores // 2)


def session_options(threads: int | None = None, graph_optimization: str = "all"):
    import onnxruntime as ort

    if graph_optimization not in _OPT_LEVELS:
        raise EngineError(f"graph_optimization must be one of {sorted(_OPT_LEVELS)}, got {graph_optimization!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization])
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    # Spinning threads burn the core the editor needs between keystrokes, and measured no
    # faster here (1.58 vs 2.03 ms/token with 2 threads, spinning off vs on).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class BufferViews(Mapping):
    """A cache held in a Decoder's in-place KV buffers: name -> a view of its first `length`
    positions, made when first read. A decode step that only hands the cache back to the next
    step then builds none of the 2 × layers views (~5 µs a step on the shipped model)."""

    __slots__ = ("bufs", "length", "_lead", "_views")

    def __init__(self, bufs: dict[str, np.ndarray], length: int, lead: dict[str, tuple]):
        self.bufs, self.length, self._lead, self._views = bufs, length, lead, {}

    def __getitem__(self, name: str) -> np.ndarray:
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = self.bufs[name][self._lead[name] + (slice(0, self.length),)]
        return view

    def __iter__(self):
        return iter(self.bufs)

    def __len__(self) -> int:
        return len(self.bufs)


class Decoder:
    """One ONNX decoder-with-past session; builds whatever inputs the graph declares.

    Optimum's exports differ by architecture and version (GPT-2 has sometimes lacked
    attention_mask/position_ids; KV layouts differ), so shapes and dtypes come from the
    session's input metadata instead of assumptions. Not thread-safe; the engine locks.
    """

    def __init__(self, session, source: str = "model.onnx"):
        self.session = session
        self.past: dict[str, tuple[tuple, type, int]] = {}  # name -> (zero-length shape, dtype, seq axis)
        self.extra: dict[str, type] = {}
        self.input_ids_type = np.int64
        self.can_keep_last = False
        for inp in session.get_inputs():
            dtype = _NP_TYPES.get(inp.type)
            if dtype is None:
                raise EngineError(f"{source}: input {inp.name} has unsupported type {inp.type}")
            if inp.name == "input_ids":
                self.input_ids_type = dtype
            elif inp.name in ("attention_mask", "position_ids"):
                self.extra[inp.name] = dtype
            elif inp.name == "logits_to_keep":
                # Fused exports (modelkit/llama_graph.py): the LM head can run on the last
                # position only, which is most of a prefill's cost.
                self.can_keep_last = True
            elif inp.name.startswith("past"):
                shape, seq_axis = [], None
                for axis, dim in enumerate(inp.shape):
                    if isinstance(dim, int) and dim > 0:
                        shape.append(dim)
                    elif axis == 0:
                        shape.append(1)  # batch
                    else:
                        shape.append(0)  # past sequence length: empty cache on the first step
                        seq_axis = axis
                if seq_axis is None:
                    raise EngineError(f"{source}: cannot find the sequence axis of {inp.name} {inp.shape}")
                self.past[inp.name] = (tuple(shape), dtype, seq_axis)
            else:
                raise EngineError(f"{source}: unsupported model input {inp.name!r} "
                                  "(expected input_ids, attention_mask, position_ids, past_key_values.*)")
        if not self.past:
            raise EngineError(f"{source}: the graph has no past_key_values inputs; export it with "
                              "task text-generation-with-past (ghost-lsp model export does)")
        names = [o.name for o in session.get_outputs()]
        self.logits_name = "logits" if "logits" in names else names[0]
        self.present_to_past = {}
        for name in names:
            if name.startswith("present"):
                past_name = "past_key_values" + name[len("present"):]
                if past_name in self.past:
                    self.present_to_past[name] = past_name
        missing = set(self.past) - set(self.present_to_past.values())
        if missing:
            raise EngineError(f"{source}: no present.* output for {sorted(missing)}")
        self.output_names = [self.logits_name] + list(self.present_to_past)
        shape = next(o.shape for o in session.get_outputs() if o.name == self.logits_name)
        self.vocab_size = shape[-1] if isinstance(shape[-1], int) else None
        # Fused exports declare how many positions a KV buffer shared by past and present may
        # hold: the cache then lives in preallocated buffers appended to in place (no copy of
        # the whole cache per step; measured 25 % faster decode on a 20 M model). CPU only: the
        # buffers are host memory.
        meta = session.get_modelmeta().custom_metadata_map or {}
        try:
            capacity = int(meta.get("ghost_lsp.kv_capacity", 0))
        except ValueError:
            capacity = 0
        on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
        self.kv_capacity = capacity if capacity > 0 and on_cpu and self.can_keep_last else 0
        self._bufs: dict[str, np.ndarray] | None = None
        self._buf_len = 0
        self._binding = None  # IO binding of the current buffers (past and present bound once)
        self._ones = np.ones((1, max(1, self.kv_capacity)), dtype=self.extra.get("attention_mask", np.int64))
        self._logits_row = np.empty((1, 1, self.vocab_size or 1), dtype=np.float32)
        # Inputs of a one-token step live in buffers bound by address once per binding: a step
        # then writes the token id into place instead of wrapping new arrays (~25 µs a step).
        self._one_id = np.zeros((1, 1), dtype=self.input_ids_type)
        self._keep_one = np.ones(1, dtype=np.int64)
        # The step's attention mask spans the whole buffer, ones up to the cache's length: the
        # fused graph reads each row's length from the mask's sum, so a fixed shape gives the
        # same logits (tested) and ONNX Runtime reuses its plans instead of meeting a new shape
        # every step (0.231-0.254 -> 0.207-0.209 ms a step on the shipped model).
        self._step_mask = np.zeros((1, max(1, self.kv_capacity)), dtype=self.extra.get("attention_mask", np.int64))
        self._step_mask_len = 0
        self._fast_bound = False
        self._lead = {name: (slice(None),) * axis for name, (_, _, axis) in self.past.items()}

    def empty_past(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(shape, dtype=dt) for n, (shape, dt, _) in self.past.items()}

    def past_length(self, past: Mapping[str, np.ndarray]) -> int:
        if isinstance(past, BufferViews):
            return past.length
        if not past:
            return 0
        name, (_, _, axis) = next(iter(self.past.items()))
        return past[name].shape[axis]

    def truncate_past(self, past: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
        """Keep the first `length` positions of a cache (for reuse across prompts)."""
        out = {}
        for n, arr in past.items():
            index = [slice(None)] * arr.ndim
            index[self.past[n][2]] = slice(0, length)
            out[n] = np.ascontiguousarray(arr[tuple(index)])
        return out

    def run(self, ids: list[int], past: dict[str, np.ndarray], last_only: bool = False
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Feed `ids` after `past`; return logits for every fed position (n, vocab) and the new cache.

        last_only: the caller reads only the last row; graphs that can skip the others return
        (1, vocab), the rest still (n, vocab).
        """
        if self.kv_capacity:
            return self._run_in_place(ids, past, last_only)
        past_len = self.past_length(past)
        n = len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=self.input_ids_type)}
        if "attention_mask" in self.extra:
            feed["attention_mask"] = np.ones((1, past_len + n), dtype=self.extra["attention_mask"])
        if "position_ids" in self.extra:
            feed["position_ids"] = np.arange(past_len, past_len + n, dtype=self.extra["position_ids"])[None, :]
        if self.can_keep_last:
            feed["logits_to_keep"] = np.array([1 if last_only else 0], dtype=np.int64)
        feed.update(past)
        outs = self.session.run(self.output_names, feed)
        present = {self.present_to_past[name]: arr for name, arr in zip(self.output_names[1:], outs[1:])}
        return outs[0][0], present

    def _run_in_place(self, ids, past, last_only):
        """run() with the cache in buffers of kv_capacity positions that past and present share.

        The returned cache is views of those buffers. They are appended to in place only when
        `past` is the latest cache this decoder returned; any other past (a stored or truncated
        cache, an empty one) is copied into fresh buffers, so memory behind views handed out
        earlier (e.g. kept by the KV cache) is never overwritten.
        """
        past_len = self.past_length(past)
        total = past_len + len(ids)
        if total > self.kv_capacity:
            raise EngineError(f"{total} positions exceed the model's KV capacity ({self.kv_capacity})")
        bufs = self._bufs
        if isinstance(past, BufferViews):  # views of our own buffers: the latest cache, or not
            fresh = past.bufs is not bufs or past_len != self._buf_len
        else:
            first = next(iter(self.past))
            fresh = bufs is None or past_len != self._buf_len or past[first].base is not bufs[first]
        if fresh:
            bufs = {}
            for name, (_, dtype, axis) in self.past.items():
                shape = list(past[name].shape)
                shape[axis] = self.kv_capacity
                bufs[name] = np.empty(shape, dtype=dtype)
                if past_len:
                    index = [slice(None)] * len(shape)
                    index[axis] = slice(0, past_len)
                    bufs[name][tuple(index)] = past[name]
            self._bufs = bufs
            binding = self.session.io_binding()
            binding.bind_output(self.logits_name, "cpu")  # first: get_outputs()[0] below
            for present_name, name in self.present_to_past.items():
                buf = bufs[name]
                binding.bind_input(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
                binding.bind_output(present_name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
            self._binding = binding
            self._fast_bound = False
        binding = self._binding
        if len(ids) == 1 and self.vocab_size and "position_ids" not in self.extra:
            return self._step_in_place(binding, ids[0], total, bufs)
        self._fast_bound = False
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=self.input_ids_type))
        if "attention_mask" in self.extra:
            binding.bind_cpu_input("attention_mask", self._ones[:, :total])
        if "position_ids" in self.extra:
            binding.bind_cpu_input("position_ids", np.arange(past_len, total, dtype=self.extra["position_ids"])[None, :])
        binding.bind_cpu_input("logits_to_keep", np.array([1 if last_only else 0], dtype=np.int64))
        if (last_only or len(ids) == 1) and self.vocab_size:
            # One row: straight into a reused array (get_outputs() would wrap every output).
            out = self._logits_row
            binding.bind_output(self.logits_name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            self.session.run_with_iobinding(binding)
            logits = out[0].copy()
        else:
            binding.bind_output(self.logits_name, "cpu")
            self.session.run_with_iobinding(binding)
            logits = binding.get_outputs()[0].numpy()[0]
        self._buf_len = total
        return logits, BufferViews(bufs, total, self._lead)

    def _step_in_place(self, binding, token: int, total: int, bufs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoded token on the in-place buffers: the token id, the attention mask,
        logits_to_keep and the logits row are bound by address once and rewritten in place."""
        mask = self._step_mask
        if not self._fast_bound:
            binding.bind_input("input_ids", "cpu", 0, self._one_id.dtype, [1, 1], self._one_id.ctypes.data)
            binding.bind_input("logits_to_keep", "cpu", 0, np.int64, [1], self._keep_one.ctypes.data)
            if "attention_mask" in self.extra:
                binding.bind_input("attention_mask", "cpu", 0, mask.dtype, list(mask.shape), mask.ctypes.data)
            out = self._logits_row
            binding.bind_output(self.logits_name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            self._fast_bound = True
        self._one_id[0, 0] = token
        if total == self._step_mask_len + 1:
            mask[0, total - 1] = 1
        else:  # another cache length than the last step's
            mask[0, :total] = 1
            mask[0, total:] = 0
        self._step_mask_len = total
        self.session.run_with_iobinding(binding)
        self._buf_len = total
        return self._logits_row[0].copy(), BufferViews(bufs, total, self._lead)


class _KvEntry:
    """The cache of one token sequence: its past key/values and the logits at marked lengths."""

    __slots__ = ("ids", "key", "marks", "nbytes", "past")

    def __init__(self, key, ids: list[int], past: dict[str, np.ndarray], marks: dict[int, np.ndarray]):
        self.key, self.ids, self.past, self.marks = key, ids, past, marks
        self.nbytes = sum(a.nbytes for a in past.values()) + sum(m.nbytes for m in marks.values())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KvCache:
    """Past key/values of the last few token sequences, least recently used evicted first.

    One entry per key (the engine's callers key by document), so typing in one file does not
    evict another file's cache; a lookup may still use any entry, since a shared prefix is a
    shared prefix whichever document it came from. Bounded by entry count and bytes.
    """

    def __init__(self, max_entries: int = 4, max_bytes: int = 64 << 20):
        self.max_entries = max(0, int(max_entries))
        self.max_bytes = max(0, int(max_bytes))
        self._entries: list[_KvEntry] = []  # least recently used first
        self.hits = self.misses = 0
        self.reused_tokens = self.run_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, ids: list[int]) -> tuple[_KvEntry | None, int]:
        """The entry sharing the longest token prefix with `ids`, and that prefix length."""
        best, best_n = None, 0
        for e in self._entries:
            n = common_prefix(e.ids, ids)
            if n > best_n:
                best, best_n = e, n
        if best is not None:
            self._entries.remove(best)
            self._entries.append(best)
        return best, best_n

    def put(self, key, ids: list[int], past: dict[str, np.ndarray], marks: dict[int, np.ndarray],
            base: _KvEntry | None = None) -> None:
        """Store a sequence's cache; it replaces the entry of the same key, or (keyless) the
        entry it was computed from, which it extends or supersedes."""
        if self.max_entries == 0:
            return
        entry = _KvEntry(key, list(ids), past, marks)
        if entry.nbytes > self.max_bytes:
            return
        self._entries = [e for e in self._entries
                         if not ((key is not None and e.key == key) or (key is None and e is base))]
        self._entries.append(entry)
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._entries.pop(0)

    def stats(self) -> dict:
        total = self.reused_tokens + self.run_tokens
        return {"entries": len(self._entries), "bytes": self.nbytes, "hits": self.hits,
                "misses": self.misses, "reused_tokens": self.reused_tokens,
                "run_tokens": self.run_tokens,
                "token_reuse": round(self.reused_tokens / total, 4) if total else 0.0}


class OnnxEngine:
    """The Engine protocol over a local model folder (see ghost_lsp/engine/manifest.py).

    One generate() at a time: calls are serialised by a lock (the server runs them on an
    executor thread; two concurrent sessions would only fight over the same cores).
    """

    def __init__(self, model_dir: str | Path, providers: list[str] | None = None, *,
                 intra_op_threads: int | None = None, token_healing: bool = True,
                 reuse_kv: bool = True, kv_entries: int = 4, kv_max_bytes: int = 64 << 20,
                 graph_optimization: str = "all"):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(model_dir)
        if not self.path.is_dir():
            raise EngineError(f"{self.path}: model folder not found")
        try:
            self.manifest = Manifest.load(self.path)
        except ValueError as e:
            raise EngineError(str(e)) from None
        self.model_id = self.manifest.model_id
        onnx_path = self.path / self.manifest.onnx
        tok_path = self.path / self.manifest.tokenizer
        if not onnx_path.is_file():
            raise EngineError(f"{onnx_path}: ONNX model file missing")
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception subclasses
            raise EngineError(f"{tok_path}: unreadable tokenizer: {e}") from None

        opts = session_options(intra_op_threads, graph_optimization)
        opts.log_severity_level = 3  # ORT's own warnings would go to stderr unformatted
        providers = providers or default_providers()
        try:
            session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types per failure
            raise EngineError(f"{onnx_path}: cannot load ONNX model: {e}") from None
        self.provider = session.get_providers()[0]
        self.decoder = Decoder(session, str(onnx_path))
        log.info("loaded %s from %s on %s (%d intra-op threads)", self.model_id, self.path,
                 self.provider, opts.intra_op_num_threads)

        size = self.decoder.vocab_size or self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.token_bytes, special = token_bytes_table(self.tokenizer, size)
        self.token_bytes = self.token_bytes[:size]
        self.eos_id = self.tokenizer.token_to_id(self.manifest.eos_token)
        # Control tokens (FIM markers, pad) must never be generated; ids past the tokenizer's
        # vocabulary (padded embedding rows) are not text at all.
        banned = np.zeros(size, dtype=bool)
        banned[[i for i in special if i < size]] = True
        banned[self.tokenizer.get_vocab_size(with_added_tokens=True):] = True
        self.vocab = Vocabulary(self.token_bytes, banned, self.eos_id, healing=token_healing)
        # FIM prompts are healed at the cursor (before <fim_suffix>), not at <fim_middle>
        self._fim_ids = ((self.tokenizer.token_to_id(self.manifest.fim_suffix),
                          self.tokenizer.token_to_id(self.manifest.fim_middle)) if self.manifest.fim else (None, None))
        self.reuse_kv = reuse_kv
        self.kv_cache = KvCache(kv_entries if reuse_kv else 0, kv_max_bytes)
        self._lock = threading.Lock()

    # -- tokens ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # -- generation -----------------------------------------------------------------------

    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray], _KvEntry | None, int]:
        """Run the prompt, reusing the cached KV of the longest shared token prefix (cut at
        the first differing token). Returns (last logits, cache, the entry used, tokens reused).

        A prompt that ends where a cached entry kept logits (an identical prompt, e.g. the next
        candidate) runs nothing: dynamic int8 picks activation scales per call, so re-running
        even one token would shift the logits and break seeded repeats.
        """
        cache = self.kv_cache
        base, common = cache.lookup(ids) if self.reuse_kv else (None, 0)
        if base is not None and common == len(ids) and common in base.marks:
            cache.hits += 1
            cache.reused_tokens += common
            past = base.past if len(base.ids) == common else self.decoder.truncate_past(base.past, common)
            return base.marks[common], past, base, common
        common = min(common, len(ids) - 1)  # at least one token must run to get logits
        if common > 0:
            cache.hits += 1
            logits, present = self.decoder.run(ids[common:], self.decoder.truncate_past(base.past, common),
                                               last_only=True)
        else:
            cache.misses += 1
            logits, present = self.decoder.run(ids, self.decoder.empty_past(), last_only=True)
        cache.reused_tokens += common
        cache.run_tokens += len(ids) - common
        return logits[-1], present, base, common

    def generate(self, prompt: str, params: SamplingParams, cancel: threading.Event | None = None,
                 deadline: float | None = None, *, cache_key: str | None = None,
                 adapt: Adapt | None = None) -> Candidate:
        """Generate one continuation (see Engine.generate).

        The prompt's last token(s) are re-chosen by the model (token healing); the returned
        text starts right after the prompt. `token_ids`/`logprobs` are every generated token,
        so the first ones may re-spell the healed prompt tail. `cache_key` (e.g. the document)
        names the KV-cache slot this call's prompt + generated tokens are kept in. `adapt`
        (engine/speculative.py) mixes in the workspace n-gram cache and turns on drafts.
        """
        with self._lock:
            return self._generate(prompt, params, cancel, deadline, cache_key, adapt)

    def _generate(self, prompt, params, cancel, deadline, cache_key=None, adapt=None) -> Candidate:
        t0 = time.perf_counter()
        ctx = self.manifest.context_length
        max_new = max(0, int(params.max_new_tokens))
        ids = self.encode(prompt)
        budget = max(1, ctx - max_new)
        if len(ids) > budget:
            ids = ids[-budget:]  # safety net: the prompt stage should have budgeted already
        prompt_ids, healed = heal_prompt(ids, self.token_bytes, self._fim_ids) if self.vocab.healer else (ids, b"")
        if not prompt_ids:
            if self.eos_id is None:
                return Candidate(text="", finish_reason="length")
            prompt_ids = [self.eos_id]  # an empty prompt starts like a new document
        cand = Candidate(text="", prompt_tokens=len(ids))
        if max_new == 0:
            return cand

        logits, past, base, reused = self._prefill(prompt_ids)
        t1 = time.perf_counter()
        cand.prefill_ms = (t1 - t0) * 1000
        log.debug("kv cache: reused %d of %d prompt tokens", reused, len(prompt_ids))
        # Logits kept with the cache: the prompt end (the next candidate starts there) and,
        # below, the end of what was fed (a user typing the suggestion lands there).
        marks = {m: v for m, v in base.marks.items() if m <= reused} if base is not None else {}
        marks[len(prompt_ids)] = logits
        fed = list(prompt_ids)
        hooks = DecodeHooks(self.decoder, past, fed, adapt, ctx)  # n-gram mix and drafts

        gen = Generation(self.vocab, healed, params.seed)
        stops = [s for s in params.stop if s]
        # Re-spelling the healed tail costs steps the caller did not budget for.
        max_steps = max_new + (len(ids) - len(prompt_ids))  # room to re-spell the healed tail
        text, reason = "", "length"
        step_s = 0.0  # moving average of one decode step: stop before a step would pass the deadline
        for step in range(max_steps):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if deadline is not None and time.monotonic() + step_s >= deadline:
                reason = "deadline"
                break
            mask = gen.mask()
            scores = hooks.scores(logits, mask)
            tok, lp = gen.choose(scores, mask, params)
            if tok == self.eos_id:
                reason = "eos"
                break
            cand.token_ids.append(tok)
            cand.logprobs.append(lp)
            if params.temperature > 0.0:  # the ranker wants the model's own view, not the sampler's
                model_lp = token_logprob(np.where(mask, scores, -np.inf), tok)
            else:
                model_lp = lp
            cand.model_logprobs.append(model_lp)
            if gen.take(tok):
                text = gen.text()
                cut = first_stop(text, stops)
                if cut >= 0:
                    text = text[:cut]
                    # Drop tokens that begin inside or after the stop sequence.
                    n_keep = gen.tokens_before(text)
                    del cand.token_ids[n_keep:], cand.logprobs[n_keep:], cand.model_logprobs[n_keep:]
                    reason = "stop"
                    break
                if params.stop_check is not None and self._stop_check(params.stop_check, text):
                    reason = "early_stop"
                    break
            if step + 1 >= max_steps:
                break
            if len(fed) + 1 > ctx:
                break  # context window full
            ts = time.perf_counter()
            logits = hooks.step(tok, max_steps - step - 2)
            fed.append(tok)
            dt = time.perf_counter() - ts
            step_s = dt if step_s == 0.0 else 0.7 * step_s + 0.3 * dt
        past = hooks.finish()
        cand.decode_info = hooks.info()
        if self.reuse_kv:
            marks[len(fed)] = logits
            keep_marks = dict(sorted(marks.items())[-4:])
            self.kv_cache.put(cache_key, fed, past, keep_marks, base=base)
        cand.text = text
        cand.offsets = gen.offsets(len(cand.token_ids))
        cand.finish_reason = reason
        cand.decode_ms = (time.perf_counter() - t1) * 1000
        return cand

    @staticmethod
    def _stop_check(check, text: str) -> bool:
        try:
            return bool(check(text))
        except Exception:  # noqa: BLE001 - a broken hook must not kill the generation
            log.exception("stop_check failed; ignored")
            return False

    def token_logprobs(self, prompt: str, continuation: str | list[int]) -> list[float]:
        """Log-prob of each token of `continuation` (text or token ids) given `prompt`.

        One forward pass over the full model distribution (no masks, no healing): a score,
        not a sampling trace.
        """
        with self._lock:
            p = self.encode(prompt)
            c = list(continuation) if not isinstance(continuation, str) else self.encode(continuation)
            if not c:
                return []
            if not p:
                p = [self.eos_id] if self.eos_id is not None else []
            ids = (p + c)[-self.manifest.context_length:]
            n_prompt = len(ids) - len(c)
            if n_prompt < 1:
                raise EngineError("continuation does not fit the context window with a prompt")
            logits, _ = self.decoder.run(ids, self.decoder.empty_past())
            lp = log_softmax(logits[n_prompt - 1:-1])
            return [float(lp[i, t]) for i, t in enumerate(c)]
