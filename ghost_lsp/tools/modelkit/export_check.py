"""The export's check against PyTorch: fp32 logits within a tolerance, quantized greedy agreement.

One model in memory at a time, so the check of a 1.5 B model fits where the export does: the
PyTorch model runs every prompt first and is freed, then the fp32 ONNX session compares its
logits and is freed, then the quantized session counts agreement. The fp32 session skips
weight prepacking (a second copy of every fp32 weight that a one-off check does not repay); the
quantized one keeps it (MatMulNBits runs its fast kernels on prepacked blocks only).
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np


def session(path: Path, prepack: bool = True):
    import onnxruntime as ort

    from ghost_lsp.engine.decoder import Decoder

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Decoder(sess, str(path))


def torch_greedy(model, ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """PyTorch greedy continuation and the logits row that chose each token (incl. the prompt's last)."""
    import torch

    seq, rows = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            out = model(torch.tensor([seq])).logits[0, -1].float().numpy()
            rows.append(out)
            seq.append(int(np.argmax(out)))
    return seq[len(ids):], rows


def onnx_teacher_forced(dec, ids: list[int], forced: list[int]) -> list[np.ndarray]:
    """ONNX logits along a given token path, through the KV cache like the engine decodes."""
    logits, past = dec.run(ids, dec.empty_past())
    rows = [logits[-1]]
    for tok in forced[:-1]:
        logits, past = dec.run([tok], past)
        rows.append(logits[-1])
    return rows


def validate(load_model, prompts_ids, fp32: Path, quant: Path | None, steps: int,
             logits_atol: float, min_agreement: float) -> dict:
    """load_model() returns the PyTorch model; the report holds its parameter count too."""
    report: dict = {"prompts": len(prompts_ids), "steps": steps, "logits_atol": logits_atol,
                    "min_agreement": min_agreement}
    model = load_model()
    report["parameters"] = sum(p.numel() for p in model.parameters())
    refs = [torch_greedy(model, ids, steps) for ids in prompts_ids]
    del model
    gc.collect()
    dec = session(fp32, prepack=False)
    max_diff = 0.0
    for ids, (tokens, ref_rows) in zip(prompts_ids, refs):
        for a, b in zip(ref_rows, onnx_teacher_forced(dec, ids, tokens)):
            diff = float(np.max(np.abs(a[: len(b)] - b)))
            # NaN (either side) fails: max() would pass it over (every comparison with NaN is False)
            max_diff = max(max_diff, diff if np.isfinite(diff) else float("inf"))
    del dec
    gc.collect()
    report["fp32_max_abs_logit_diff"] = max_diff
    report["fp32_ok"] = max_diff <= logits_atol
    if quant is not None:
        dec = session(quant)
        agree = total = 0
        for ids, (tokens, _) in zip(prompts_ids, refs):
            for row, ref in zip(onnx_teacher_forced(dec, ids, tokens), tokens):
                agree += int(np.argmax(row)) == ref
                total += 1
        del dec
        report["int8_greedy_agreement"] = agree / total if total else 1.0
        report["int8_ok"] = report["int8_greedy_agreement"] >= min_agreement
    return report
