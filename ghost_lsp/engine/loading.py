"""The one way to get an engine: the local ONNX model of a folder, a GGUF model on llama.cpp (a
.gguf file, or a folder whose manifest says `"engine": "llama.cpp"`), or a remote model server
when the settings name one (with the local model as its fall-back and token counter).

The language server, `ghost-lsp complete`, the model server, the evals and the benchmarks all
load here; onnxruntime (or llama_cpp) is imported only when a local model is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ghost_lsp.engine.base import Engine, EngineError
from ghost_lsp.engine.remote import RemoteEngine

log = logging.getLogger(__name__)


def is_local_model(path) -> bool:
    """A model folder (manifest.json) or a .gguf file: something load_local can try."""
    return path is not None and (Path(path, "manifest.json").is_file()
                                 or (Path(path).suffix.lower() == ".gguf" and Path(path).is_file()))


def load_local(model_dir, **options):
    """The local engine of a model folder or .gguf file (`options` as OnnxEngine's: providers,
    intra_op_threads, reuse_kv, ...; the llama.cpp engine takes those that apply). EngineError
    says why it cannot load."""
    try:
        from ghost_lsp.engine.llamacpp import LlamaCppEngine, wants_llama_cpp

        if wants_llama_cpp(model_dir):
            return LlamaCppEngine(model_dir, **options)
        from ghost_lsp.engine.onnx import OnnxEngine

        return OnnxEngine(model_dir, **options)
    except EngineError:
        raise
    except (ImportError, OSError, ValueError) as e:
        raise EngineError(str(e)) from e


def load_engine(model_dir, settings=None, **options) -> Engine:
    """The engine the settings ask for: remote when `remote_url` is set, else the local model."""
    if settings is not None and settings.remote_url:
        return make_remote_engine(settings, model_dir)
    if settings is not None:
        options.setdefault("kv_entries", settings.kv_slots)
    return load_local(model_dir, **options)


def make_remote_engine(settings, model_dir) -> RemoteEngine:
    """The language server's remote engine from its settings; the local model (if loadable)
    becomes the fall-back, and the token counter and template unless `remote_model_dir` names
    the served model's folder."""
    token = settings.remote_token or os.environ.get("GHOST_LSP_REMOTE_TOKEN", "")
    fallback = None
    has_local = is_local_model(model_dir)
    if settings.remote_fallback and has_local:
        try:
            fallback = load_local(model_dir, kv_entries=settings.kv_slots)
        except EngineError as e:
            log.warning("remote engine: no local fall-back (%s)", e)
    served = getattr(settings, "remote_model_dir", "")
    if served and not Path(served, "manifest.json").is_file():
        log.warning("remote_model_dir %s has no manifest.json; token counts will be estimates", served)
    engine = RemoteEngine(settings.remote_url, token=token or None, timeout_ms=settings.remote_timeout_ms,
                          model=settings.remote_model, model_dir=served or (model_dir if has_local else None),
                          fallback=fallback, dialect=settings.remote_dialect, context=settings.remote_context,
                          same_model=bool(served))
    engine.discover()
    log.info("remote engine %r: model %s (%s dialect), context %d, template %s, fall-back %s", engine,
             engine.model_id, engine.dialect, engine.manifest.context_length, engine.manifest.family,
             fallback.model_id if fallback else "none")
    return engine
