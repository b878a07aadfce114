"""Size sweep: which model size to ship, measured (`ghost-lsp model sweep RECIPE`).

Every size in the recipe's `[sweep]` section trains from scratch on the same corpus, tokenizer,
settings and token budget (the `[base]` stage's settings, each size's shape on top), then is
measured three ways: validation loss (the recipe's validation packages), loss on held-out code
(packages reserved for evaluation, never in the corpus), and the keystroke latency of its int8
ONNX export through the real server (`ghost-lsp bench --only lsp`). The table and a loss-vs-tokens
chart go to the work folder's `sweep/`.

Resumable: a size whose run finished is not trained again; one that was stopped continues from
its last saved weights with the steps it had left (each run saves every `checkpoint_min`).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "lr", "min_lr")


def sweep_sizes(r) -> list[dict]:
    """The recipe's sizes, each a full training config (the base stage's settings, the sweep's
    overrides, then the size's shape) with `max_steps` set by the shared token budget."""
    sw = r.section("sweep")
    if not sw.get("sizes"):
        raise SystemExit(f"ghost-lsp: {r.path} has no [[sweep.sizes]] to train")
    tokens = int(sw["tokens"])
    common = {k: v for k, v in sw.items() if k not in ("tokens", "sizes")}
    out = []
    for size in sw["sizes"]:
        unknown = set(size) - set(SHAPE_KEYS) - {"label"}
        if unknown or "label" not in size:
            raise SystemExit(f"ghost-lsp: a sweep size needs a label and may set {', '.join(SHAPE_KEYS)}; "
                             f"got {sorted(size)}")
        cfg = {**r.section("base"), **common, **{k: v for k, v in size.items() if k != "label"}}
        cfg.pop("time_budget_min", None)
        cfg["max_steps"] = math.ceil(tokens / (int(cfg["batch_size"]) * int(cfg["context_length"])))
        cfg["name"] = f"sweep-{size['label']}"
        out.append(cfg)
    return out


def _finished(run: Path) -> dict | None:
    path = run / "train_summary.json"
    if path.is_file():
        s = json.loads(path.read_text())
        if s.get("checkpoint") == "final":
            return s
    return None


def train_size(r, cfg: dict) -> dict:
    """Train one size to its token budget, continuing a stopped run of it; returns its summary."""
    from ghost_lsp.tools.modelkit.train import TrainConfig, train

    run = r.stage_dir(cfg["name"])
    done = _finished(run)
    if done:
        return done
    cfg = dict(cfg)
    state = run / "train_state.json"
    if state.is_file():  # stopped part-way: continue from its last save with the steps left
        steps_done = int(json.loads(state.read_text()).get("steps", 0))
        cfg["resume_from"] = str(r.keep_previous(run))
        cfg["max_steps"] = max(1, cfg["max_steps"] - steps_done)
        cfg["warmup_steps"] = min(int(cfg.get("warmup_steps", 0)), 10)
        log.info("%s: continuing after %d steps (%d left)", cfg["name"], steps_done, cfg["max_steps"])
    return train(TrainConfig.from_dict(cfg), r.corpus_dir, r.tokenizer_path, run)


def heldout_windows(sources: list[str], tokenizer_path: Path, context: int, count: int) -> np.ndarray:
    """Fixed windows of held-out code: every .py file of the sources, tokenized and joined with
    end-of-text as the corpus is, `count` windows at seeded offsets (the same for every size)."""
    from tokenizers import Tokenizer

    from ghost_lsp.tools.evals.sources import read_python_files
    from ghost_lsp.tools.modelkit.data import fixed_windows, tokenize_texts

    ids = tokenize_texts([text for src in sources for _, text in read_python_files(src)],
                         Tokenizer.from_file(str(tokenizer_path)))
    if len(ids) <= context + 1:
        raise SystemExit(f"ghost-lsp: the held-out sources hold {len(ids)} tokens, fewer than one window")
    return fixed_windows(ids, context, count)


def measure_size(r, cfg: dict, windows: np.ndarray | None, latency: bool) -> dict:
    """Held-out loss, the int8 export and its keystroke latency through the server, for one trained
    size; each result is kept in the run folder (`sweep_measure.json`) and not measured twice."""
    from ghost_lsp.tools.modelkit.compact import CompactLlama
    from ghost_lsp.tools.modelkit.train import eval_loss

    run = r.stage_dir(cfg["name"])
    path = run / "sweep_measure.json"
    m = json.loads(path.read_text()) if path.is_file() else {}
    if windows is not None and "heldout_loss" not in m:
        model = CompactLlama.from_folder(run)
        m["heldout_loss"] = round(eval_loss(model, windows, bf16=True), 4)
        m["heldout_windows"] = int(len(windows))
        path.write_text(json.dumps(m, indent=1) + "\n")
    model_dir = run / "onnx"
    if latency and "lsp" not in m:
        if not (model_dir / "manifest.json").is_file():
            from ghost_lsp.tools.modelkit.export import export_onnx

            r.put_tokenizer(run)
            e = r.section("export")
            # agreement is recorded, not required: a short run's near-tied logits flip under int8
            rep = export_onnx(run, model_dir, quantize=e.get("quantize", "int8"), graph=e.get("graph", "fused"),
                              min_agreement=0.0, manifest_fields={"name": cfg["name"], "family": "plain"})
            m["int8_agreement"] = rep.get("int8_greedy_agreement")
        out = run / "bench-lsp.json"
        cmd = [sys.executable, "-m", "ghost_lsp.cli", "bench", "--only", "lsp", "--model", str(model_dir), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"ghost-lsp: the replay of {cfg['name']} failed: {proc.stderr.strip()[-400:]}")
        row = next(x for x in json.loads(out.read_text())["results"] if x.get("row") == "lsp")
        m["lsp"] = {k: row.get(k) for k in ("all_responses_p50_ms", "all_responses_p95_ms", "answered_p50_ms",
                                            "answered_p95_ms", "keystrokes", "server_stage_ms_p50")}
        m["lsp_command"] = " ".join(["ghost-lsp"] + cmd[3:])
        path.write_text(json.dumps(m, indent=1) + "\n")
    return m


def run_sweep(r, only: list[str] | None = None, heldout: list[str] | None = None, heldout_windows_n: int = 48,
              latency: bool = True, train_only: bool = False) -> dict:
    """Train (or continue) every size, measure each, write sweep/sweep.json and sweep/loss.png."""
    from ghost_lsp.tools.modelkit.plots import plot_runs

    sizes = [c for c in sweep_sizes(r) if not only or c["name"].removeprefix("sweep-") in only]
    if only and len(sizes) != len(only):
        raise SystemExit(f"ghost-lsp: unknown sweep size in {only}; the recipe has "
                         f"{[c['name'].removeprefix('sweep-') for c in sweep_sizes(r)]}")
    for cfg in sizes:
        train_size(r, cfg)
    if train_only:
        return {}
    windows = None
    if heldout:
        windows = heldout_windows(heldout, r.tokenizer_path, int(sizes[0]["context_length"]), heldout_windows_n)
    rows = []
    for cfg in sizes:
        s = _finished(r.stage_dir(cfg["name"])) or {}
        m = measure_size(r, cfg, windows, latency)
        # a size that was stopped and continued: its figures count every part of it
        minutes = sum(run.get("minutes", 0) for run in s.get("runs", [])) or s.get("train_minutes") or 0
        tokens = s.get("cumulative_tokens", s.get("tokens_seen"))
        rows.append({"size": cfg["name"].removeprefix("sweep-"), "params": s.get("params"),
                     "shape": {k: cfg[k] for k in SHAPE_KEYS if k in cfg},
                     "steps": s.get("cumulative_steps", s.get("steps")), "tokens": tokens, "parts": len(s.get("runs", [])),
                     "minutes": round(minutes, 2), "tokens_per_s": round(tokens / (minutes * 60)) if minutes else None,
                     "val_loss": round(s.get("val_loss", float("nan")), 4), **m})
    out = r.work / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    report = {"tokens_per_size": int(r.section("sweep")["tokens"]), "heldout": list(heldout or []), "sizes": rows}
    (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_runs({f"{x['size']} ({(x['params'] or 0) / 1e6:.1f} M)": r.stage_dir(f"sweep-{x['size']}") for x in rows},
              out / "loss.png", title=f"{r.name}: sizes on one token budget")
    return report
