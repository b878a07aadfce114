"""`bench` sections 1 and 2: the ONNX engine against PyTorch, fp32 against int8, teacher against
student, on the same prompt ids."""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from ghost_lsp.paths import PACKAGE
from ghost_lsp.tools.bench.checkpoints import export_quiet, hf_dir_for
from ghost_lsp.tools.bench.measure import PeakRss, _median

log = logging.getLogger(__name__)


# -- 1. engines ---------------------------------------------------------------------------------


def _onnx_run(engine, ids: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """The engine's own loop over the same ids: prefill, then one token per step, greedy with
    the engine's token mask (as generate() does, minus healing and stop checks)."""
    from ghost_lsp.engine.sampling import choose_token

    dec = engine.decoder
    t0 = time.perf_counter()
    logits, past = dec.run(ids, dec.empty_past())
    logits = logits[-1]
    t1 = time.perf_counter()
    out = []
    for i in range(n_new):
        tok, _ = choose_token(logits, temperature=0.0, mask=engine.vocab.allowed)
        out.append(tok)
        if i + 1 < n_new:
            step, past = dec.run([tok], past)
            logits = step[-1]
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000 / max(1, n_new - 1), out


def _torch_run(model, ids: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """PyTorch `generate`, greedy: prefill = generate 1 token; decode = the rest per token."""
    import torch

    x = torch.tensor([ids])
    mask = torch.ones_like(x)
    kw = {"attention_mask": mask, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter()
        out = model.generate(x, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
        t2 = time.perf_counter()
    prefill = (t1 - t0) * 1000
    decode = ((t2 - t1) * 1000 - prefill) / max(1, n_new - 1)
    return prefill, decode, out[0, len(ids):].tolist()


def _prompt_ids(engine, n: int, seed: int = 0) -> list[int]:
    """n token ids of real code (the held-out text if any, else this package's source)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py")))
    ids = engine.encode(text)
    start = random.Random(seed).randrange(0, max(1, len(ids) - n))
    return ids[start:start + n]


def _compare(onnx_engine, model, ids_prefill, ids_decode, n_new, rounds) -> dict:
    rows = {"onnx": {"prefill": [], "decode": []}, "torch": {"prefill": [], "decode": []}}
    agree = None
    for r in range(rounds + 1):
        for name in ("onnx", "torch"):
            fn = _onnx_run if name == "onnx" else _torch_run
            engine = onnx_engine if name == "onnx" else model
            pf, _, _ = fn(engine, ids_prefill, 1)
            _, dec, toks = fn(engine, ids_decode, n_new)
            if r == 0:  # warm-up round, not timed
                if name == "onnx":
                    a = toks
                else:
                    agree = round(sum(x == y for x, y in zip(a, toks)) / max(1, len(toks)), 3)
                continue
            rows[name]["prefill"].append(pf)
            rows[name]["decode"].append(dec)
    out = {}
    for name, v in rows.items():
        ms = _median(v["decode"])
        out[name] = {"prefill_ms": _median(v["prefill"]), "ms_per_token": ms,
                     "tokens_per_s": round(1000 / ms, 1) if ms else None}
    out["greedy_token_agreement"] = agree
    return out


def section_engines(model_dir: Path, hf_dir: str | None, n_new: int, rounds: int, threads: int,
                    long_ctx: bool) -> list[dict]:
    from ghost_lsp.engine.loading import load_local

    rows = []
    with PeakRss() as mem_onnx:
        engine = load_local(model_dir, intra_op_threads=threads)
        ctx = engine.manifest.context_length
        _onnx_run(engine, _prompt_ids(engine, min(256, ctx)), 4)
    hf, why = hf_dir_for(model_dir, hf_dir)
    if hf is None:
        return [{"row": "engines", "skipped": why}]
    with PeakRss() as mem_torch:  # the import counts: it is what serving with PyTorch costs
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        transformers.logging.set_verbosity_error()  # "exceeded the maximum length" on a full window
        torch.set_num_threads(threads)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        _torch_run(model, _prompt_ids(engine, min(256, ctx)), 4)
    n_pf = min(256, ctx)
    n_dec = min(256, ctx - n_new)
    res = _compare(engine, model, _prompt_ids(engine, n_pf, 1), _prompt_ids(engine, n_dec, 2), n_new, rounds)
    res["onnx"]["peak_rss_mb"] = mem_onnx.mb
    res["torch"]["peak_rss_mb"] = mem_torch.mb
    rows.append(_engine_row(f"{model_dir.name} (ctx {ctx})", n_pf, n_dec, n_new, res, threads))
    if long_ctx:
        rows.append(_long_context_row(engine.tokenizer, n_new, rounds, threads))
    return rows


def _engine_row(label, n_pf, n_dec, n_new, res, threads) -> dict:
    o, t = res["onnx"], res["torch"]
    return {
        "row": "engines", "model": label, "prefill_tokens": n_pf, "decode_after_tokens": n_dec,
        "new_tokens": n_new, "threads": threads, "onnx_int8": o, "torch_fp32_generate": t,
        "greedy_token_agreement": res["greedy_token_agreement"],
        "prefill_speedup": round(t["prefill_ms"] / o["prefill_ms"], 2),
        "decode_speedup": round(t["ms_per_token"] / o["ms_per_token"], 2),
        "memory_ratio": round(t["peak_rss_mb"] / o["peak_rss_mb"], 2) if o.get("peak_rss_mb") else None,
    }


def _long_context_row(tokenizer, n_new, rounds, threads) -> dict:
    """The shipped model's context is 256 tokens: for the 1,024-token row, a random-weight
    Llama of the same shape with a 1,280 context (speed does not depend on weight values)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ghost_lsp.engine.loading import load_local

    with tempfile.TemporaryDirectory(prefix="ghost-bench-1k-") as tmp:
        hf = Path(tmp) / "hf"
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=256, intermediate_size=688,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=1280, tie_word_embeddings=True, bos_token_id=0,
                          eos_token_id=0, pad_token_id=0)
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(hf)
        tokenizer.save(str(hf / "tokenizer.json"))
        out = Path(tmp) / "onnx"
        export_quiet(hf, out, quantize="int8", min_agreement=0.0, logits_atol=1e-2,
                manifest_fields={"name": "random-5m-1k"})
        engine = load_local(out, intra_op_threads=threads)
        rng = np.random.default_rng(3)
        ids_pf = rng.integers(10, cfg.vocab_size, 1024).tolist()
        ids_dec = rng.integers(10, cfg.vocab_size, 1024).tolist()
        res = _compare(engine, model, ids_pf, ids_dec, n_new, rounds)
        res["onnx"]["peak_rss_mb"] = res["torch"]["peak_rss_mb"] = None
        params = sum(p.numel() for p in model.parameters())
    return _engine_row(f"random Llama {params / 1e6:.1f} M (ctx 1280)", 1024, 1024, n_new, res, threads)


# -- 2. quantization and distillation -------------------------------------------------------------


def _onnx_speed(folder: Path, threads: int, n_new: int, rounds: int) -> dict:
    from ghost_lsp.engine.loading import load_local

    engine = load_local(folder, intra_op_threads=threads)
    ctx = engine.manifest.context_length
    ids_pf, ids_dec = _prompt_ids(engine, min(256, ctx), 1), _prompt_ids(engine, min(256, ctx - n_new), 2)
    pf, dec = [], []
    for r in range(rounds + 1):
        p, _, _ = _onnx_run(engine, ids_pf, 1)
        _, d, _ = _onnx_run(engine, ids_dec, n_new)
        if r:
            pf.append(p)
            dec.append(d)
    size = sum(f.stat().st_size for f in folder.glob("*.onnx*"))
    ms = _median(dec)
    return {"prefill_ms": _median(pf), "ms_per_token": ms, "tokens_per_s": round(1000 / ms, 1),
            "onnx_mb": round(size / 2**20, 2)}


def _val_loss(hf: Path) -> float | None:
    try:
        s = json.loads((hf / "train_summary.json").read_text())
    except (OSError, ValueError):
        return None
    for k in ("best_val_loss", "val_loss", "final_val_loss"):
        if isinstance(s.get(k), (int, float)):
            return round(float(s[k]), 4)
    return None


def _tokenizer_for(hf: Path, model_dir: Path) -> Path:
    """The checkpoint's tokenizer.json, else the model folder's (the recipe trains one tokenizer)."""
    from ghost_lsp.engine.manifest import Manifest

    own = hf / "tokenizer.json"
    return own if own.is_file() else model_dir / Manifest.load(model_dir).tokenizer


def section_variants(model_dir: Path, hf_dir: str | None, teacher: str, student: str, threads: int,
                     n_new: int, rounds: int) -> list[dict]:
    rows = []
    hf, why = hf_dir_for(model_dir, hf_dir)
    with tempfile.TemporaryDirectory(prefix="ghost-bench-var-") as tmp:
        if hf is None:
            rows.append({"row": "quantization", "skipped": why})
        else:
            fp32 = Path(tmp) / "fp32"
            export_quiet(hf, fp32, quantize=None, tokenizer_json=_tokenizer_for(hf, model_dir),
                    manifest_fields={"name": "fp32"})
            a, b = _onnx_speed(fp32, threads, n_new, rounds), _onnx_speed(model_dir, threads, n_new, rounds)
            rows.append({"row": "quantization", "model": str(hf), "onnx_fp32": a, "onnx_int8": b,
                         "decode_speedup": round(a["ms_per_token"] / b["ms_per_token"], 2),
                         "prefill_speedup": round(a["prefill_ms"] / b["prefill_ms"], 2),
                         "size_ratio": round(a["onnx_mb"] / b["onnx_mb"], 2)})
        t, s = Path(teacher), Path(student)
        missing = [str(p) for p in (t, s) if not (p / "config.json").is_file()]
        if missing:
            rows.append({"row": "distillation", "skipped": "no HF checkpoint in " + ", ".join(missing)})
            return rows
        res = {}
        for name, p in (("teacher", t), ("student", s)):
            out = Path(tmp) / name
            try:
                export_quiet(p, out, quantize="int8", tokenizer_json=_tokenizer_for(p, model_dir),
                        manifest_fields={"name": name})
            except Exception as e:  # noqa: BLE001 - a half-written checkpoint: report, keep the other rows
                rows.append({"row": "distillation", "skipped": f"export of {p} failed: {type(e).__name__}: {e}"})
                return rows
            res[name] = _onnx_speed(out, threads, n_new, rounds)
            res[name]["val_loss"] = _val_loss(p)
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(p)
            res[name]["hidden_layers"] = f"{cfg.hidden_size}x{cfg.num_hidden_layers}"
        rows.append({"row": "distillation", "teacher_int8": res["teacher"], "student_int8": res["student"],
                     "decode_speedup": round(res["teacher"]["ms_per_token"] / res["student"]["ms_per_token"], 2),
                     "prefill_speedup": round(res["teacher"]["prefill_ms"] / res["student"]["prefill_ms"], 2)})
    return rows
