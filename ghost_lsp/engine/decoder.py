"""One ONNX decoder graph run step by step: the onnxruntime session and its options, the
`past_key_values.*` inputs fed from the previous step's `present.*` outputs, preallocated
buffers bound once so a decode step copies no KV cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np

from ghost_lsp.engine.base import EngineError

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
