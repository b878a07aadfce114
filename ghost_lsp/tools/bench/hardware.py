"""`bench` sections 5 and 6: memory bandwidth and the bytes a decode step reads (the best
ms/token), and the cost of top-p sampling per token."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np

from ghost_lsp.paths import PACKAGE

log = logging.getLogger(__name__)


# -- 5. memory bandwidth ----------------------------------------------------------------------------


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best of a few large numpy copies: bytes read + written per second (GB/s)."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def bytes_per_token(model_dir: Path, kv_positions: int) -> dict:
    """What one decode step must read at least: every weight once (the embedding is read in
    full by the tied LM head) plus the KV cache at `kv_positions`."""
    import onnx
    from onnx import numpy_helper

    from ghost_lsp.engine.manifest import Manifest

    m = Manifest.load(model_dir)
    model = onnx.load(str(model_dir / m.onnx))
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    kv = 0
    for inp in model.graph.input:
        if inp.name.startswith("past"):
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            per_pos = int(np.prod([d for d in dims if d > 0]))
            kv += per_pos * kv_positions * 4  # float32 cache
    return {"weight_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv}


def section_bandwidth(model_dir: Path, measured_ms_per_token: float | None, n_new: int) -> dict:
    from ghost_lsp.engine.manifest import Manifest

    ctx = Manifest.load(model_dir).context_length
    bw = copy_bandwidth_gbs()
    b = bytes_per_token(model_dir, max(1, ctx - n_new // 2))
    best = b["total_bytes"] / (bw * 1e9) * 1000
    return {"row": "bandwidth", "copy_gb_s": round(bw, 2), **b, "best_ms_per_token": round(best, 4),
            "measured_ms_per_token": measured_ms_per_token,
            "times_the_limit": round(measured_ms_per_token / best, 1) if measured_ms_per_token else None}


def section_sampling(model_dir: Path, rounds: int) -> dict:
    """Top-p sampling cost per token: the partial-sort nucleus vs a full sort of the vocabulary,
    on the model's own next-token distributions (held-out-like code, temperature 0.8)."""
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.engine.sampling import log_softmax, top_p_filter, top_p_filter_sorted

    engine = load_local(model_dir)
    text = (PACKAGE / "completion" / "filters" / "cycles.py").read_text(encoding="utf-8")
    ids = engine.encode(text)[: engine.manifest.context_length]
    logits, _ = engine.decoder.run(ids, engine.decoder.empty_past())
    dists = [np.exp(log_softmax(row / 0.8)) for row in logits]
    row = {"row": "sampling", "positions": len(dists), "vocab": int(logits.shape[-1])}
    for top_p in (0.95, 0.9):
        times = {"partial": [], "full_sort": []}
        for _ in range(rounds):  # alternate, so both see the same machine
            for name, fn in (("partial", top_p_filter), ("full_sort", top_p_filter_sorted)):
                t = time.perf_counter()
                for d in dists:
                    fn(d, top_p)
                times[name].append((time.perf_counter() - t) / len(dists) * 1000)
        assert all(np.array_equal(top_p_filter(d, top_p) > 0, top_p_filter_sorted(d, top_p) > 0) for d in dists)
        med = {k: statistics.median(v) for k, v in times.items()}
        row[f"top_p_{top_p}"] = {"partial_ms": round(med["partial"], 4), "full_sort_ms": round(med["full_sort"], 4),
                                 "speedup": round(med["full_sort"] / med["partial"], 2)}
    return row
