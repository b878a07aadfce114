"""The prepared GPU run: train a larger model on one CUDA device with the same training code.

Two steps, so the GPU machine needs nothing but this repository and one small folder:

    python -m ghost_lsp.tools.modelkit.gpu pack models/recipes/ghost-py-base.toml runs/gpu-pack
        # here, on the CPU machine: the tokenizer and a random sample of the tokenized corpus
        # (24 M training tokens as uint16 = 48 MB, 1 M validation tokens), under 60 MB in all
    python -m ghost_lsp.tools.modelkit.gpu run runs/gpu-pack OUT --minutes 8
        # there: the recipe's [gpu] section (a bigger model, larger batch, bf16, compiled) through
        # modelkit.train.train(device="cuda"); writes OUT/ as a Hugging Face folder in bf16 plus
        # the pre-decay weights and train state, so `model train --resume` continues it on CPU

The weights written stay under 60 MB (bf16, the recipe's [gpu] model is sized for it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_GPU = {
    # ~15 M parameters: 30 MB in bf16 for the final and the pre-decay weights each
    "hidden_size": 384, "num_layers": 8, "num_heads": 6, "num_kv_heads": 6, "intermediate_size": 1024,
    "context_length": 1024, "batch_size": 64, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup_steps": 200,
    "impl": "compact", "schedule": "wsd", "decay_frac": 0.15, "compile": True, "device": "cuda",
    "eval_every": 200, "eval_windows": 64, "checkpoint_min": 3, "time_budget_min": 8,
}
MAX_PACK_BYTES = 60 * 1024 * 1024


def pack(recipe_path: str, out: str, train_tokens: int = 24_000_000, valid_tokens: int = 1_000_000,
         seed: int = 0) -> dict:
    """Write the GPU run's inputs: tokenizer, token samples (random 64 k-token chunks), recipe."""
    from ghost_lsp.tools.modelkit.recipe import Recipe

    r = Recipe(recipe_path)
    out_p = Path(out)
    (out_p / "corpus").mkdir(parents=True, exist_ok=True)
    shutil.copytree(r.tokenizer_path.parent, out_p / "tokenizer", dirs_exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_tokens), ("valid", valid_tokens)):
        src = np.load(r.corpus_dir / f"tokens_{split}.npy", mmap_mode="r")
        chunk = 65_536
        if len(src) <= n:
            sample = np.asarray(src)
        else:
            starts = np.sort(rng.choice(len(src) // chunk, size=max(1, n // chunk), replace=False)) * chunk
            sample = np.concatenate([np.asarray(src[s:s + chunk]) for s in starts])
        np.save(out_p / "corpus" / f"tokens_{split}.npy", sample.astype(np.uint16))
    cfg = {**DEFAULT_GPU, **r.section("gpu")}
    (out_p / "gpu.json").write_text(json.dumps({"recipe": r.name, "train": cfg}, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out_p.rglob("*") if f.is_file())
    if size > MAX_PACK_BYTES:
        raise SystemExit(f"ghost-lsp: the pack is {size / 2**20:.0f} MiB, over 60 MiB: lower --train-tokens")
    return {"out": str(out_p), "bytes": size}


def run(pack_dir: str, out: str, minutes: float | None = None, device: str | None = None) -> dict:
    """Train from a pack (on CUDA by default); rewrite the final weights in bf16."""
    import torch
    from safetensors.torch import load_file

    from ghost_lsp.tools.modelkit.train import TrainConfig, save_weights, train

    p = Path(pack_dir)
    spec = json.loads((p / "gpu.json").read_text())
    cfg = dict(spec["train"])
    if minutes:
        cfg["time_budget_min"] = minutes
    if device:
        cfg["device"] = device
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("ghost-lsp: no CUDA device here (pass --device cpu to try the run on CPU)")
    if cfg["device"].startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    # the token samples count as already tokenized: newer than the tokenizer they came from
    now = time.time()
    for f in (p / "corpus").glob("tokens_*.npy"):
        import os

        os.utime(f, (now, now))
    t0 = time.time()
    summary = train(TrainConfig.from_dict({"name": "gpu", **cfg}), p / "corpus", p / "tokenizer" / "tokenizer.json",
                    out, progress=sys.stderr.isatty())
    state = load_file(str(Path(out) / "model.safetensors"))
    save_weights(state, Path(out) / "model.safetensors")  # fp32 → bf16: half the bytes
    for f in (p / "tokenizer").iterdir():
        shutil.copyfile(f, Path(out) / f.name)
    summary["wall_minutes"] = round((time.time() - t0) / 60, 2)
    summary["device_name"] = torch.cuda.get_device_name() if cfg["device"].startswith("cuda") else "cpu"
    (Path(out) / "gpu_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ghost_lsp.tools.modelkit.gpu", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="write the run's inputs (under 60 MB)")
    a.add_argument("recipe")
    a.add_argument("out")
    a.add_argument("--train-tokens", type=int, default=24_000_000)
    b = sub.add_parser("run", help="train from a pack on the GPU")
    b.add_argument("pack")
    b.add_argument("out")
    b.add_argument("--minutes", type=float)
    b.add_argument("--device", help="cuda (default) or cpu")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        print(json.dumps(pack(args.recipe, args.out, args.train_tokens)))
    else:
        s = run(args.pack, args.out, args.minutes, args.device)
        print(json.dumps({k: s.get(k) for k in ("params", "steps", "tokens_seen", "val_loss", "tokens_per_s",
                                               "gflops_per_s", "wall_minutes", "device_name")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
