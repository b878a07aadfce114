"""Local engine: a ghost-lsp model folder run with plain onnxruntime + tokenizers + numpy.

No torch, transformers or optimum here: the server imports this, and those cost seconds of
start-up and hundreds of MB. The decode loop prefills the prompt once, then feeds one token
per step with the previous step's `present.*` outputs as `past_key_values.*` inputs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ghost_lsp.engine.base import EngineError
from ghost_lsp.engine.decoder import Decoder, default_providers, session_options
from ghost_lsp.engine.kv_cache import KvCache
from ghost_lsp.engine.decode import Vocabulary
from ghost_lsp.engine.healing import token_bytes_table
from ghost_lsp.engine.local import LocalModel
from ghost_lsp.engine.manifest import Manifest

log = logging.getLogger(__name__)

class OnnxEngine(LocalModel):
    """The Engine protocol over a local model folder (see ghost_lsp/engine/manifest.py); the
    decode loop is LocalModel's (engine/local.py), over an onnxruntime Decoder."""

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
        ends = [self.tokenizer.token_to_id(t) for t in self.manifest.stop_tokens or ()]
        self.vocab = Vocabulary(self.token_bytes, banned, self.eos_id, healing=token_healing,
                                end_ids=[i for i in ends if i in special])  # control tokens only: text stops stay strings
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
