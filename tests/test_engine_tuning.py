"""Engine session tuning: the thread rule, session options, and execution-provider choice
(the CUDA path is checked for selection only: this machine has no GPU)."""

import onnxruntime as ort
import pytest

from ghost_lsp.engine import decoder as eng
from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.base import EngineError


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4), (None, 1)])
def test_thread_rule(monkeypatch, cores, threads):
    monkeypatch.setattr(eng.os, "cpu_count", lambda: cores)
    assert eng.default_threads() == threads


def test_session_options():
    o = eng.session_options(3, "extended")
    assert o.intra_op_num_threads == 3 and o.inter_op_num_threads == 1
    assert o.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert o.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert eng.session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(EngineError, match="graph_optimization"):
        eng.session_options(1, "max")


def test_cuda_is_chosen_when_the_build_has_it(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert eng.default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert eng.default_providers() == ["CPUExecutionProvider"]


def test_engine_uses_the_options(tiny_model_dir):
    e = OnnxEngine(tiny_model_dir, intra_op_threads=1, graph_optimization="basic", kv_entries=2)
    assert e.provider == "CPUExecutionProvider" and e.kv_cache.max_entries == 2
    assert OnnxEngine(tiny_model_dir, reuse_kv=False).kv_cache.max_entries == 0
