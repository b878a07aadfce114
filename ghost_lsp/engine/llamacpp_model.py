"""A GGUF model and one llama.cpp context, through llama-cpp-python's C API (`llama_cpp.llama_*`).

Not its `Llama` class: to keep llama.cpp quiet that class points file descriptors 1 and 2 at
/dev/null while it loads a model, which would swallow the language server's own messages on
stdout (the LSP channel) sent meanwhile from another thread; and its eval keeps the logits of a
batch's last position only. Here llama.cpp's log goes to Python logging (debug), its last error
lines name the cause when a load fails, and a batch can return every position's logits.

The context holds `n_seq` sequences (ids 0..n_seq-1, the KV slots of engine/llamacpp.py), each
in its own KV stream of `n_ctx` cells (`kv_unified` off): every slot keeps the full context, a
slot's attention sees its own cells only (its logits are bit for bit those of a one-sequence
context), and the KV memory is `n_seq` times one sequence's (`kv_bytes`). `forget(n, seq)` drops a
sequence's positions from n on, so the next `decode` continues a shared prefix; `copy` gives one
sequence another's prefix (a whole-stream copy: llama.cpp copies across streams only whole).
A unified KV cache would need as many cells to keep every slot's full context, and each slot
would attend over the cells of all (masked), its logits off by rounding from one sequence's.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import re
import threading
import weakref
from pathlib import Path

import numpy as np

from ghost_lsp.engine.base import EngineError

log = logging.getLogger(__name__)

MISSING = 'a .gguf model runs on llama.cpp, which is not installed: pip install "ghost-lsp[llama]"'
ATTR_UNUSED, ATTR_CONTROL = 1 << 1, 1 << 3  # llama_token_attr
GGML_TYPE_F32, FLASH_ATTN_DISABLED = 0, 0

_setup_lock = threading.Lock()
_log_callback = None  # the ctypes callback must outlive every call into llama.cpp
_errors: collections.deque[str] = collections.deque(maxlen=6)  # llama.cpp's last error lines


def extra_bufts_safe(lc) -> bool:
    """Whether llama.cpp's repacked/AMX weight layouts may be used: on this project's AMX
    machine a q8_0 model crashed (SIGSEGV) in any batch of more than one token with them on
    (llama-cpp-python 0.3.36, Llama class too); off, it runs. So: off where the CPU has AMX."""
    return b"AMX_INT8 = 1" not in (lc.llama_print_system_info() or b"")


def import_llama_cpp():
    """llama_cpp, its log routed to Python logging and its backend initialised (once); a missing
    package is one EngineError naming the extra."""
    global _log_callback
    try:
        import llama_cpp as lc
    except (ImportError, OSError, RuntimeError) as e:  # the package is there but its libllama is not
        raise EngineError(MISSING if isinstance(e, ImportError) else f"{MISSING} ({e})") from None
    with _setup_lock:
        if _log_callback is None:
            llama_log = logging.getLogger("ghost_lsp.llama_cpp")

            @lc.llama_log_callback
            def route(level, text, _user):
                msg = (text or b"").decode("utf-8", "replace").rstrip()
                if msg:
                    if level == 4:  # GGML_LOG_LEVEL_ERROR (ggml.h: none, debug, info, warn, error, cont)
                        _errors.append(re.sub(r"^\w+: ", "", msg))  # without the C function's name
                    llama_log.debug("%s", msg)

            _log_callback = route
            lc.llama_log_set(route, ctypes.c_void_p(0))
            lc.llama_backend_init()
    return lc


def last_errors() -> str:
    return "; ".join(e for e in dict.fromkeys(_errors) if e != "failed to load model")


class GgufModel:
    """The model, its vocabulary and a context of `n_seq` sequences of `n_ctx` positions each (the
    model's trained length capped at `max_context` when not given). `kv_f32` keeps the KV cache
    in f32 (f16 by default) and attention off flash attention: an f32 GGUF then gives an fp32
    reference's log-probs to ~1e-5, at twice the KV memory and slower attention."""

    def __init__(self, path: Path, *, n_ctx: int | None = None, max_context: int = 4096,
                 threads: int | None = None, n_batch: int = 512, kv_f32: bool = False,
                 extra_bufts: bool | None = None, n_seq: int = 1):
        lc = self.lc = import_llama_cpp()
        self.path = path
        _errors.clear()
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = extra_bufts_safe(lc) if extra_bufts is None else bool(extra_bufts)
        model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise EngineError(f"{path}: llama.cpp cannot load it ({last_errors() or 'no reason given'})")
        self.model = model
        self.vocab = lc.llama_model_get_vocab(model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(model)
        n_ctx = n_ctx or min(self.n_ctx_train or max_context, max_context)
        self.n_seq = n_seq = max(1, int(n_seq))
        cp = lc.llama_context_default_params()
        # One KV stream per sequence (not unified): llama.cpp splits n_ctx among them.
        cp.n_ctx, cp.n_seq_max, cp.kv_unified = n_ctx * n_seq, n_seq, False
        cp.n_batch = cp.n_ubatch = self.n_batch = min(n_ctx, n_batch)
        if threads:
            cp.n_threads = cp.n_threads_batch = threads
        if kv_f32:  # flash attention's CPU kernel rounds through f16 too (6e-3 in log-probs, measured)
            cp.type_k = cp.type_v = GGML_TYPE_F32
            cp.flash_attn_type = FLASH_ATTN_DISABLED
        ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            lc.llama_model_free(model)
            raise EngineError(f"{path}: llama.cpp cannot make a context of {n_seq} x {n_ctx} positions "
                              f"({last_errors() or 'out of memory?'})")
        self.ctx = ctx
        self.n_ctx = lc.llama_n_ctx_seq(ctx)  # one sequence's positions
        self.kv_bytes = self._kv_bytes(4 if kv_f32 else 2)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self._free = weakref.finalize(self, _free, lc, model, ctx, self.batch)
        self.evaluated = 0  # positions llama.cpp has run, all calls together (tests, stats)

    def close(self) -> None:
        self._free()

    def _kv_bytes(self, elt: int) -> int:
        """The KV cache's size: per layer, per position, per sequence, the K and V rows of the
        model's KV heads (llama.cpp allocates it whole at start; recurrent or sliding-window
        layers, which keep less, are not told apart)."""
        lc, m = self.lc, self.model
        arch = self.meta("general.architecture") or ""
        head = lc.llama_model_n_embd(m) // max(1, lc.llama_model_n_head(m))
        k = int(self.meta(f"{arch}.attention.key_length") or head)
        v = int(self.meta(f"{arch}.attention.value_length") or head)
        return self.n_seq * self.n_ctx * lc.llama_model_n_layer(m) * lc.llama_model_n_head_kv(m) * (k + v) * elt

    # -- metadata and vocabulary ----------------------------------------------------------

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def text(self, tok: int) -> str:
        return (self.lc.llama_vocab_get_text(self.vocab, tok) or b"").decode("utf-8", "replace")

    def attr(self, tok: int) -> int:
        return int(self.lc.llama_vocab_get_attr(self.vocab, tok))

    def piece(self, tok: int) -> bytes:
        """The bytes token `tok` stands for in text (b"" for control tokens)."""
        buf = ctypes.create_string_buffer(64)
        n = self.lc.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in it (FIM sentinels) are parsed."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = (self.lc.llama_token * cap)()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, True)
        if n < 0:
            cap = -n
            out = (self.lc.llama_token * cap)()
            n = self.lc.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, True)
        if n < 0:
            raise EngineError(f"{self.path}: llama.cpp could not tokenize {len(data)} bytes")
        return list(out[:n])

    # -- the sequences --------------------------------------------------------------------

    @property
    def _memory(self):
        return self.lc.llama_get_memory(self.ctx)

    def forget(self, n: int, seq: int = 0) -> None:
        """Drop positions n.. of sequence `seq` from the KV cache."""
        self.lc.llama_memory_seq_rm(self._memory, seq, n, -1)

    def copy(self, src: int, dst: int, n: int) -> None:
        """Make sequence `dst` positions 0..n-1 of sequence `src` (llama.cpp copies the stream's
        buffer at the next decode; a copy of part of a stream would abort the process)."""
        self.lc.llama_memory_seq_rm(self._memory, dst, -1, -1)
        self.lc.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        self.lc.llama_memory_seq_rm(self._memory, dst, n, -1)

    def clear(self) -> None:
        """Empty every sequence."""
        self.lc.llama_memory_clear(self._memory, False)

    def decode(self, ids: list[int], start: int, all_logits: bool, seq: int = 0) -> np.ndarray:
        """Run `ids` at positions start.. of sequence `seq` (after forget(start, seq)); the logits
        of every position (all_logits) or of the last, one row each (float32, n_vocab wide)."""
        if start + len(ids) > self.n_ctx:
            raise EngineError(f"{start + len(ids)} positions exceed the llama.cpp context ({self.n_ctx})")
        rows = []
        b = self.batch
        for i in range(0, len(ids), self.n_batch):
            chunk = ids[i:i + self.n_batch]
            last_chunk = i + self.n_batch >= len(ids)
            for j, tok in enumerate(chunk):
                b.token[j] = tok
                b.pos[j] = start + i + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = seq
                b.logits[j] = int(all_logits or (last_chunk and j == len(chunk) - 1))
            b.n_tokens = len(chunk)
            rc = self.lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise EngineError(f"{self.path}: llama_decode failed ({rc}{': ' + last_errors() if last_errors() else ''})")
            self.evaluated += len(chunk)
            for j in (range(len(chunk)) if all_logits else (range(len(chunk) - 1, len(chunk)) if last_chunk else ())):
                ptr = self.lc.llama_get_logits_ith(self.ctx, j)
                rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return np.stack(rows) if rows else np.zeros((0, self.n_vocab), np.float32)


def _free(lc, model, ctx, batch) -> None:
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
