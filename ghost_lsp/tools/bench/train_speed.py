"""`bench` section `train`: how much of the CPU the training step uses.

Side by side in one run: the bf16 matmul peak (2048² × 2048², the best of a few), and one
training step (`modelkit.step.train_step`: forward, backward, clip, fused AdamW) of the model
folder's architecture at the recipe's batch (8 × its context), for the compact definition
compiled and eager and Hugging Face's Llama eager, at each thread count. Reported per row:
tokens/s (median step), GFLOP/s at 6·N per token, and that as a share of the peak at the same
thread count. The weights are random (speed does not depend on them); needs the [train] extra.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _model(config: dict, impl: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ghost_lsp.tools.modelkit.compact import CompactLlama

    hf_config = LlamaConfig.from_dict(config)
    if impl == "hf":
        m = LlamaForCausalLM(hf_config)
        return m, lambda ids: m(input_ids=ids).logits
    m = CompactLlama.from_hf_config(hf_config)
    if impl == "compact+compile":
        import torch

        return m, torch.compile(m)
    return m, m


def step_speed(config: dict, impl: str, threads: int, batch: int, context: int, steps: int = 6,
               warmup: int = 3) -> dict:
    """Median seconds of a full training step (bf16 autocast), the one modelkit.train runs."""
    import torch

    from ghost_lsp.tools.modelkit.step import train_step

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, forward = _model(config, impl)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    vocab = config["vocab_size"]
    x = torch.randint(0, vocab, (batch, context + 1))
    inp, tgt = x[:, :-1], x[:, 1:]
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        train_step(model, forward, opt, inp, tgt, bf16=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    n_params = sum(p.numel() for p in model.parameters())
    s = statistics.median(times)
    tok_s = batch * context / s
    return {"impl": impl, "threads": threads, "params": n_params, "step_s": round(s, 3),
            "tokens_per_s": round(tok_s), "gflops": round(6 * n_params * tok_s / 1e9, 1), "steps": steps}


def section_train(folder: Path, batch: int = 8, threads_list=(1, 2),
                  impls=("compact+compile", "compact", "hf")) -> list[dict]:
    from ghost_lsp.tools.modelkit.checkpoint import source_checkpoint

    hf = source_checkpoint(folder)
    if hf is None or not (hf / "config.json").is_file():
        return [{"row": "train", "skipped": f"{folder}: no PyTorch checkpoint (manifest info.source.hf_dir)"}]
    config = json.loads((hf / "config.json").read_text())
    context = int(config["max_position_embeddings"])  # what the recipe trains at
    rows = []
    for threads in threads_list:
        peak = matmul_peak_gflops(threads)
        for impl in impls:
            r = step_speed(config, impl, threads, batch, context)
            rows.append({"row": "train", **r, "batch": f"{batch}x{context}", "peak_gflops": round(peak, 1),
                         "share_of_peak": round(r["gflops"] / peak, 3)})
    return rows
