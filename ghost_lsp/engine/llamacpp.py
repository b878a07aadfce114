"""Local engine on llama.cpp: a GGUF file (`--model FILE.gguf`, or a model folder whose
manifest.json says `"engine": "llama.cpp"`) run through llama-cpp-python, the optional `llama`
extra.

llama.cpp only runs the model (llamacpp_model.py); the decode loop is the ONNX engine's
(local.py), so a GGUF model gives the same Candidate (token healing, masks, sampling, stop
sequences, cancel, deadline, per-token log-probs, the n-gram mix, drafts) and its output goes
through the same filters. The manifest the prompt stage needs is read from the file: the family
(template, FIM sentinels, end and stop tokens) from the vocabulary (engine/families.py), the
context length from the model (capped: the KV cache is allocated up front).

The KV cache: one llama.cpp context holds `kv_entries` sequences (4, as the ONNX engine's
KvCache entries), kept as that cache keeps its entries: a slot per document (the cache key),
least recently used given up first, and a keyless prompt in the slot it shares the longest token
prefix with. A prompt runs from the prefix its slot shares with it (a user typing one more
character runs one or two tokens), so switching files, or a keyless FIM request after a
left-to-right one, finds its own prefix still there (_Slots says how a slot is picked). Each
slot has its own KV stream of the full context, allocated up front: the KV memory is kv_entries
times one sequence's (per position n_layer x n_kv_heads x (key + value head size) x 2 bytes in
f16; Qwen2.5-Coder-1.5B at 4,096 positions: 112 MiB a slot, 448 MiB for 4), logged at load and
in `kv_cache.stats()["kv_bytes"]`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.decode import Vocabulary
from ghost_lsp.engine.families import detect_family
from ghost_lsp.engine.kv_cache import common_prefix
from ghost_lsp.engine.llamacpp_model import ATTR_CONTROL, ATTR_UNUSED, GgufModel
from ghost_lsp.engine.local import LocalModel
from ghost_lsp.engine.manifest import Manifest

log = logging.getLogger(__name__)

ENGINE = "llama.cpp"  # the manifest's "engine" for a GGUF folder
# llama_ftype names of the usual files (general.file_type), for the model id
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k",
              11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s",
              17: "q5_k_m", 18: "q6_k", 32: "bf16"}
# GGUF architecture names that differ from the Hugging Face model_type family detection knows
MODEL_TYPES = {"phi2": "phi", "gptneox": "gpt_neox"}


def wants_llama_cpp(path) -> bool:
    """A .gguf file, or a model folder whose manifest names llama.cpp."""
    p = Path(path)
    if p.suffix.lower() == ".gguf" and not p.is_dir():
        return True
    try:
        return Manifest.read(p).get("engine") == ENGINE
    except ValueError:
        return False


def locate(path) -> tuple[Path, dict]:
    """(the GGUF file, the manifest fields given with it: none for a bare file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        try:
            given = Manifest.read(p)
        except ValueError as e:
            raise EngineError(str(e)) from None
        if given.get("gguf"):
            file = p / given["gguf"]
        else:
            found = sorted(p.glob("*.gguf"))
            if len(found) != 1:
                raise EngineError(f"{p}: manifest.json names no \"gguf\" file and the folder holds "
                                  f"{len(found)} .gguf files")
            file = found[0]
    else:
        file, given = p, {}
    if not file.is_file():
        raise EngineError(f"{file}: GGUF file not found")
    try:
        with open(file, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise EngineError(f"{file}: unreadable ({e.strerror})") from None
    if magic != b"GGUF":
        raise EngineError(f"{file}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    return file, given


class _Slot:
    """One llama.cpp sequence: the tokens its KV stream holds, the logits kept at a few lengths
    (as KvEntry's marks), the document (cache key) it was last put for."""

    __slots__ = ("ids", "key", "marks", "seq")

    def __init__(self, seq: int):
        self.seq, self.ids, self.marks, self.key = seq, [], {}, None

    @property
    def past(self) -> tuple[_Slot, int]:
        return self, len(self.ids)


class _Slots:
    """The context's sequences as the decode loop's decoder (run, empty_past, truncate_past; a
    "past" is (slot, token count)) and its KV cache (lookup, put, clear, the counters of
    kv_cache.KvCache) at once, kept as KvCache keeps its entries: one slot per document (`key`,
    the request's cache key, set by the engine), least recently used given up first.

    A request runs in its document's slot, else an empty one, else the least recently used; a
    keyless one in the slot sharing the longest token prefix with it (ties: the most recently
    used; a prefix of BOS tokens only is no match), else as before. When another slot shares a
    longer prefix by COPY_MIN tokens or more, its stream is copied over first (a whole KV stream:
    cheaper than re-running that many prompt tokens), so a new document starts from what an
    open one shares with it and neither loses its own."""

    COPY_MIN = 16

    def __init__(self, model: GgufModel):
        self.model = model
        self.slots = [_Slot(i) for i in range(model.n_seq)]  # least recently used first
        self.key = None  # the cache key of the request being decoded
        self.floor = 0  # a prefix this short (the BOS tokens) is no reason to pick a slot
        self.hits = self.misses = self.reused_tokens = self.run_tokens = 0

    def _touch(self, slot: _Slot) -> None:
        self.slots.remove(slot)
        self.slots.append(slot)

    def _home(self) -> _Slot:
        """The slot of the request's document, else an empty one, else the least recently used."""
        mine = [s for s in self.slots if self.key is not None and s.key == self.key]
        return (mine or [s for s in self.slots if not s.ids] or self.slots)[0]

    def lookup(self, ids: list[int]) -> tuple[_Slot | None, int]:
        """The slot to run `ids` in, and how many of its tokens they reuse ((None, 0): none)."""
        best, n = None, 0
        for s in reversed(self.slots):  # most recently used first: it wins ties
            k = common_prefix(s.ids, ids)
            if k > n:
                best, n = s, k
        if self.key is None:
            if n <= self.floor:
                return None, 0
            target, have = best, n
        else:
            target = self._home()
            have = n if target is best else common_prefix(target.ids, ids)
            if n - have >= self.COPY_MIN:
                self.model.copy(best.seq, target.seq, n)
                target.ids, have = best.ids[:n], n
                target.marks = {m: v for m, v in best.marks.items() if m <= n}
        if have == 0:
            return None, 0
        self._touch(target)
        return target, have

    def put(self, key, ids, past, marks, base=None) -> None:
        slot, n = past
        if n == len(ids) and slot.ids[:n] == list(ids):
            self._cut(slot, n)  # drafted tokens never chosen
            slot.marks, slot.key = dict(marks), key

    def clear(self) -> None:
        self.model.clear()
        for s in self.slots:
            s.ids, s.marks, s.key = [], {}, None

    def stats(self) -> dict:
        total = self.reused_tokens + self.run_tokens
        return {"entries": sum(bool(s.ids) for s in self.slots), "slots": len(self.slots),
                "tokens": sum(len(s.ids) for s in self.slots), "kv_bytes": self.model.kv_bytes,
                "hits": self.hits, "misses": self.misses,
                "reused_tokens": self.reused_tokens, "run_tokens": self.run_tokens,
                "token_reuse": round(self.reused_tokens / total, 4) if total else 0.0}

    def empty_past(self) -> tuple[_Slot, int]:
        return self._home(), 0

    def truncate_past(self, past: tuple[_Slot, int], length: int) -> tuple[_Slot, int]:
        return past[0], min(past[1], length)

    def _cut(self, slot: _Slot, n: int) -> None:
        if n < len(slot.ids):
            self.model.forget(n, slot.seq)
            del slot.ids[n:]
            slot.marks = {m: v for m, v in slot.marks.items() if m <= n}

    def run(self, ids: list[int], past: tuple[_Slot, int], last_only: bool = False) -> tuple[np.ndarray, tuple]:
        slot, n = past
        if n > len(slot.ids):
            raise EngineError(f"internal: {n} positions asked, the slot holds {len(slot.ids)}")
        self._cut(slot, n)
        self._touch(slot)
        try:
            rows = self.model.decode(ids, n, all_logits=not last_only, seq=slot.seq)
        except BaseException:
            self.model.forget(n, slot.seq)  # a half-run batch leaves positions behind
            raise
        slot.ids.extend(ids)
        return rows, slot.past


class LlamaCppEngine(LocalModel):
    """The Engine protocol (a LocalEngine) over a GGUF model. `intra_op_threads`, `reuse_kv` and
    `kv_entries` as the ONNX engine's (llama.cpp's threads; the KV slots, one sequence without
    reuse); `max_context` caps each slot's context; other ONNX options (providers,
    graph_optimization, kv_max_bytes: the KV cache is allocated whole at start) do not apply and
    are ignored."""

    def __init__(self, path, *, intra_op_threads: int | None = None, max_context: int = 4096,
                 token_healing: bool = True, reuse_kv: bool = True, kv_entries: int = 4, kv_f32: bool = False,
                 extra_bufts: bool | None = None, **ignored):
        if ignored:
            log.debug("llama.cpp engine: options %s do not apply", sorted(ignored))
        file, given = locate(path)
        self.path = file
        reuse_kv = reuse_kv and kv_entries > 0
        self.model = GgufModel(file, max_context=int(given.get("context_length") or max_context),
                               threads=intra_op_threads, kv_f32=kv_f32, extra_bufts=extra_bufts,
                               n_seq=kv_entries if reuse_kv else 1)
        m = self.model
        texts = [m.text(i) for i in range(m.n_vocab)]
        attrs = [m.attr(i) for i in range(m.n_vocab)]
        self.manifest = self._manifest(texts, given)
        self.model_id = self.manifest.model_id
        self.provider = ENGINE
        ids = {t: i for i, t in enumerate(texts)}
        lc = m.lc
        eos = ids.get(self.manifest.eos_token)
        if eos is None:
            eos = lc.llama_vocab_eos(m.vocab)
            eos = eos if 0 <= eos < m.n_vocab else None
        self.eos_id = eos
        # Control and unused tokens (FIM markers, pad, BOS) are never generated; they spell no text.
        self.token_bytes = [b"" if a & (ATTR_CONTROL | ATTR_UNUSED) else m.piece(i) for i, a in enumerate(attrs)]
        banned = np.array([bool(a & (ATTR_CONTROL | ATTR_UNUSED)) for a in attrs], dtype=bool)
        ends = [ids.get(t) for t in self.manifest.stop_tokens or ()]
        self.vocab = Vocabulary(self.token_bytes, banned, self.eos_id, healing=token_healing,
                                end_ids=[i for i in ends if i is not None and banned[i]])  # control tokens only
        fim = self.manifest
        self._fim_ids = (ids.get(fim.fim_suffix), ids.get(fim.fim_middle)) if fim.fim else (None, None)
        bos = lc.llama_vocab_bos(m.vocab)
        self.bos_ids = [bos] if lc.llama_vocab_get_add_bos(m.vocab) and 0 <= bos < m.n_vocab else []
        self.reuse_kv = reuse_kv
        self.decoder = self.kv_cache = _Slots(m)
        self.kv_cache.floor = len(self.bos_ids)
        self._lock = threading.Lock()
        log.info("loaded %s from %s on llama.cpp (family %s, context %d, %d KV slots: %.0f MiB)", self.model_id,
                 file, self.manifest.family, self.manifest.context_length, m.n_seq, m.kv_bytes / (1 << 20))

    def _generate(self, prompt, params, cancel, deadline, cache_key=None, adapt=None):
        self.kv_cache.key = cache_key  # the slot lookup and empty_past pick is this document's
        try:
            return super()._generate(prompt, params, cancel, deadline, cache_key, adapt)
        finally:
            self.kv_cache.key = None

    def _manifest(self, texts: list[str], given: dict) -> Manifest:
        """What the GGUF says (family from its vocabulary), then what the folder's manifest gives."""
        m = self.model
        arch = m.meta("general.architecture") or ""
        eos = m.lc.llama_vocab_eos(m.vocab)
        det = detect_family(dict.fromkeys(texts), MODEL_TYPES.get(arch, arch),
                            config_eos=texts[eos] if 0 <= eos < len(texts) else None)
        ftype = m.meta("general.file_type")
        quant = FILE_TYPES.get(int(ftype), f"ftype{ftype}") if ftype and ftype.isdigit() else "gguf"
        found = Manifest(name=m.meta("general.name") or self.path.stem, family=det.family.name, architecture=arch,
                         context_length=m.n_ctx, onnx="", tokenizer="", quantization=quant, fim=det.fim,
                         eos_token=det.eos_token, stop_tokens=det.stop_tokens, engine=ENGINE, gguf=self.path.name,
                         info={"family_reason": det.reason, "n_ctx_train": m.n_ctx_train})
        if det.fim:
            found.fim_prefix, found.fim_suffix, found.fim_middle = det.fim_prefix, det.fim_suffix, det.fim_middle
        for k, v in given.items():
            if k in Manifest.__dataclass_fields__ and k not in ("format", "engine", "gguf", "onnx", "tokenizer"):
                setattr(found, k, v)
        found.context_length = min(int(found.context_length), m.n_ctx)
        return found

    # -- tokens ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids if 0 <= i < len(self.token_bytes)).decode("utf-8", "replace")

    def close(self) -> None:
        self.model.close()
