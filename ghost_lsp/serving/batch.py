"""The running batch's KV caches: rows padded left (optimum graphs, position_ids) or right
(fused graphs), and the CPU's in-place variant whose preallocated buffers GroupQueryAttention
appends to (see batcher.py's opening note)."""

from __future__ import annotations

import logging

import numpy as np

from ghost_lsp.serving.sequence import Sequence

log = logging.getLogger(__name__)


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
