"""Local engine on llama.cpp: a GGUF file (`--model FILE.gguf`, or a model folder whose
manifest.json says `"engine": "llama.cpp"`) run through llama-cpp-python, the optional `llama`
extra.

llama.cpp only runs the model (llamacpp_model.py); the decode loop is the ONNX engine's
(local.py), so a GGUF model gives the same Candidate (token healing, masks, sampling, stop
sequences, cancel, deadline, per-token log-probs, the n-gram mix, drafts) and its output goes
through the same filters. The manifest the prompt stage needs is read from the file: the family
(template, FIM sentinels, end and stop tokens) from the vocabulary (engine/families.py), the
context length from the model (capped: the KV cache is allocated up front).

The KV cache: llama.cpp keeps one sequence, and the next prompt reuses the longest token prefix
it shares with what is there (a user typing one more character runs one or two tokens), so one
slot, not one per document.
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


class _Sequence:
    """The llama.cpp context's one sequence, as the decode loop's decoder (run, empty_past,
    truncate_past; a "past" is a token count) and its KV cache (lookup, put, the counters of
    kv_cache.KvCache) at once. `marks` keeps logits at a few lengths, as KvEntry does."""

    def __init__(self, model: GgufModel):
        self.model = model
        self.ids: list[int] = []  # the tokens in the context now
        self.marks: dict[int, np.ndarray] = {}
        self.hits = self.misses = self.reused_tokens = self.run_tokens = 0

    @property
    def past(self) -> int:
        return len(self.ids)

    def lookup(self, ids: list[int]):
        n = common_prefix(self.ids, ids)
        return (self, n) if n else (None, 0)

    def put(self, key, ids, past, marks, base=None) -> None:
        if past == len(self.ids) and self.ids == list(ids):
            self.marks = dict(marks)

    def clear(self) -> None:
        self._cut(0)

    def stats(self) -> dict:
        total = self.reused_tokens + self.run_tokens
        return {"entries": int(bool(self.ids)), "tokens": len(self.ids), "hits": self.hits, "misses": self.misses,
                "reused_tokens": self.reused_tokens, "run_tokens": self.run_tokens,
                "token_reuse": round(self.reused_tokens / total, 4) if total else 0.0}

    def empty_past(self) -> int:
        return 0

    def truncate_past(self, past: int, length: int) -> int:
        return min(past, length)

    def _cut(self, n: int) -> None:
        self.model.forget(n)
        del self.ids[n:]
        self.marks = {m: v for m, v in self.marks.items() if m <= n}

    def run(self, ids: list[int], past: int, last_only: bool = False) -> tuple[np.ndarray, int]:
        if past > len(self.ids):
            raise EngineError(f"internal: {past} positions asked, the context holds {len(self.ids)}")
        if past < len(self.ids):
            self._cut(past)
        try:
            rows = self.model.decode(ids, past, all_logits=not last_only)
        except BaseException:
            self._cut(past)  # a half-run batch leaves positions behind
            raise
        self.ids.extend(ids)
        return rows, len(self.ids)


class LlamaCppEngine(LocalModel):
    """The Engine protocol (a LocalEngine) over a GGUF model. `intra_op_threads` as the ONNX
    engine's (llama.cpp's threads); `max_context` caps the context the KV cache is sized for;
    other ONNX options (providers, graph_optimization, kv_entries...) do not apply and are
    ignored."""

    def __init__(self, path, *, intra_op_threads: int | None = None, max_context: int = 4096,
                 token_healing: bool = True, reuse_kv: bool = True, kv_f32: bool = False,
                 extra_bufts: bool | None = None, **ignored):
        if ignored:
            log.debug("llama.cpp engine: options %s do not apply", sorted(ignored))
        file, given = locate(path)
        self.path = file
        self.model = GgufModel(file, max_context=int(given.get("context_length") or max_context),
                               threads=intra_op_threads, kv_f32=kv_f32, extra_bufts=extra_bufts)
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
        self.decoder = self.kv_cache = _Sequence(m)
        self._lock = threading.Lock()
        log.info("loaded %s from %s on llama.cpp (family %s, context %d)", self.model_id, file,
                 self.manifest.family, self.manifest.context_length)

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
