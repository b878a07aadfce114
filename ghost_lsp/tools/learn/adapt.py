"""`ghost-lsp learn`: fine-tune a model folder's PyTorch checkpoint on one project's code, measure
it on the project's held-out files, and install it as the project's learned model only if it
beats what it would replace there.

The steps (each reused, not rewritten): project.py picks the files; `modelkit.train.train`
trains (init_from the checkpoint, one thread, a wall-clock budget, stoppable); the held-out loss
of the base (and of the installed learned model, when this run continues it) and of the new
weights is measured on the same windows; `modelkit.export.export_onnx` exports and validates
the new weights like any export; the folder is built beside its destination and renamed into
place, so a server never loads a half-written model (settings.core.learned_dir is where the
server looks). The checkpoint travels in the folder (`checkpoint/`), so the next `learn`
continues from it.

torch and transformers are imported inside functions (the `train` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.settings.core import project_key
from ghost_lsp.tools.learn.project import ProjectData, collect

MIN_TRAIN_TOKENS = 64
MAX_CONTEXT = 256  # training windows: short ones are cheap on a CPU and are what a completion sees
MAX_EVAL_WINDOWS = 128


class LearnError(Exception):
    """Learning could not run; the message is one line for the user. Nothing was installed."""


@dataclass
class LearnResult:
    installed: bool
    out: Path
    message: str
    summary: dict = field(default_factory=dict)


def manifest_sha256(model_dir: str | Path) -> str:
    return hashlib.sha256(Path(model_dir, "manifest.json").read_bytes()).hexdigest()


def base_checkpoint(model_dir: Path) -> Path:
    from ghost_lsp.tools.modelkit.checkpoint import source_checkpoint

    hf = source_checkpoint(model_dir)
    if hf is None:
        raise LearnError(f"{model_dir}: this model folder carries no PyTorch checkpoint (a checkpoint/ folder "
                         "named by the manifest's info.source.hf_dir); learn needs one to fine-tune")
    return hf


def _previous(out: Path, parent_sha: str) -> tuple[Manifest | None, Path | None, str]:
    """The installed learned model to continue from: (manifest, checkpoint, why not)."""
    if not (out / "manifest.json").is_file():
        return None, None, ""
    try:
        man = Manifest.load(out)
    except ValueError as e:
        return None, None, f"the installed learned model is unreadable ({e}); starting from the base"
    info = (man.info or {}).get("learn") or {}
    ck = out / "checkpoint"
    if (info.get("parent") or {}).get("manifest_sha256") != parent_sha:
        return None, None, "the installed learned model was learned from another base model; starting from the base"
    if not (ck / "config.json").is_file():
        return None, None, "the installed learned model has no checkpoint/; starting from the base"
    return man, ck, ""


def _write_corpus(data: ProjectData, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = data.root.name or "project"
    for split, files in (("train", data.train), ("valid", data.heldout)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for pf in files:
                f.write(json.dumps({"package": name, "path": pf.rel, "text": pf.text}) + "\n")


def eval_windows(tokens, context: int):
    """Non-overlapping windows of context+1 tokens over all of `tokens` (at most
    MAX_EVAL_WINDOWS, evenly spaced); one shorter window when there is less than one."""
    import numpy as np

    n = context + 1
    if len(tokens) < n:
        return np.asarray(tokens, dtype=np.int64)[None, :]
    starts = list(range(0, len(tokens) - n + 1, n))
    if len(starts) > MAX_EVAL_WINDOWS:
        starts = [starts[round(i * (len(starts) - 1) / (MAX_EVAL_WINDOWS - 1))] for i in range(MAX_EVAL_WINDOWS)]
    return np.stack([np.asarray(tokens[s:s + n], dtype=np.int64) for s in starts])


def heldout_loss(hf_dir: Path, windows) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from ghost_lsp.tools.modelkit.train import eval_loss

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    try:
        return float(eval_loss(model, windows, bf16=False))
    finally:
        del model


def _context(hf_dir: Path, train_tokens: int) -> int:
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    ctx = min(MAX_CONTEXT, int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or MAX_CONTEXT))
    return max(16, min(ctx, train_tokens - 2))


def _impl(hf_dir: Path) -> str:
    """The trainer's compact Llama (same weights, faster step) where it fits: a Llama with tied
    embeddings, as ghost-lsp trains them; else Hugging Face's model."""
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    tied = cfg.get("tie_word_embeddings", True)
    return "compact" if cfg.get("model_type") == "llama" and tied else "hf"


@contextlib.contextmanager
def exclusive(out: Path):
    """One `learn` at a time per destination (say, an idle run and one by hand): a lock file
    beside it, held with flock (released by the OS if the process dies). No-op without fcntl."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(out.with_name(f".{out.name}.lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LearnError(f"another `ghost-lsp learn` is writing {out}; try again when it is done") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _bar:
    """tqdm on stderr over the training budget: seconds of `minutes`, or `max_steps` steps."""

    def __init__(self, minutes: float, max_steps: int):
        from tqdm import tqdm

        self.steps, self.t0 = max_steps, time.monotonic()
        self.bar = tqdm(total=max_steps or round(minutes * 60), unit="step" if max_steps else "s", desc="learn",
                        file=sys.stderr, mininterval=1.0, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} " + ("steps" if max_steps else "s")
                        + " [{elapsed}<{remaining}]")

    def tick(self) -> None:
        done = self.bar.n + 1 if self.steps else min(self.bar.total, int(time.monotonic() - self.t0))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def install(src: Path, dest: Path) -> None:
    """Put the finished folder `src` at `dest` by renames on one filesystem: a reader sees the
    old folder or the new one, never a half-written one (at worst, for an instant, none)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def learn(root: str | Path, base_model: str | Path, out: str | Path, *, minutes: float = 3.0, max_steps: int = 0,
          exclude: tuple[str, ...] = (), lr: float = 1e-4, batch_size: int = 8, min_agreement: float = 0.9,
          progress: bool = True, stop=None, log=lambda msg: print(msg, file=sys.stderr)) -> LearnResult:
    """Learn `root`'s code into a model folder at `out` (installed only if better on the held-out
    files). Raises LearnError for what the user must fix; KeyboardInterrupt leaves `out` as it was."""
    import torch

    from ghost_lsp.tools.modelkit.data import tokenize_split
    from ghost_lsp.tools.modelkit.export import ExportValidationError, export_onnx
    from ghost_lsp.tools.modelkit.train import TrainConfig, train

    root, base_model, out = Path(root).resolve(), Path(base_model), Path(out)
    try:
        parent = Manifest.load(base_model)
    except ValueError as e:
        raise LearnError(str(e)) from None
    base_hf = base_checkpoint(base_model)
    parent_sha = manifest_sha256(base_model)
    try:
        data = collect(root, exclude)
    except NotADirectoryError as e:
        raise LearnError(str(e)) from None
    log(f"learn: {root}: {data.describe()}")
    if len(data.files) < 2:
        raise LearnError(f"{root}: too little source code to learn from and measure on (needs 2 or more source "
                         f"files; {data.describe()})")
    prev, prev_hf, why = _previous(out, parent_sha)
    if why:
        log(f"learn: {why}")
    start_hf = prev_hf or base_hf
    tokenizer_json = base_model / parent.tokenizer
    torch.set_num_threads(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        _write_corpus(data, tmp / "corpus")
        train_tokens = tokenize_split(tmp / "corpus", "train", tokenizer_json)
        held_tokens = tokenize_split(tmp / "corpus", "valid", tokenizer_json)
        if len(train_tokens) < MIN_TRAIN_TOKENS or len(held_tokens) < 2:
            raise LearnError(f"{root}: too little source code to learn from ({len(train_tokens)} training tokens, "
                             f"{len(held_tokens)} held out; {data.describe()})")
        context = _context(start_hf, len(train_tokens))
        windows = eval_windows(held_tokens, context)
        log(f"learn: {len(data.train)} files ({len(train_tokens)} tokens) to train on, {len(data.heldout)} held out "
            f"({len(held_tokens)} tokens); starting from {'the learned model' if prev else 'the base model'}")
        cfg = TrainConfig(name="learn", init_from=str(start_hf), impl=_impl(start_hf), threads=1, time_budget_min=minutes,
                          max_steps=max_steps, lr=lr, min_lr=lr / 10, warmup_steps=10, weight_decay=0.0,
                          batch_size=batch_size, context_length=context, fim_rate=0.5 if parent.fim else 0.0,
                          eval_every=10 ** 9, eval_windows=8, checkpoint_min=10.0 ** 6, seed=len(prev_runs(prev)))
        stopped = {"early": False}
        bar = _bar(minutes, max_steps) if progress else None

        def should_stop() -> bool:  # the trainer asks before each step
            if bar is not None:
                bar.tick()
            if stop is not None and stop():
                stopped["early"] = True
                return True
            return False

        try:
            with contextlib.redirect_stdout(sys.stderr):
                summary = train(cfg, tmp / "corpus", tokenizer_json, tmp / "hf", progress=False, stop=should_stop)
        finally:
            if bar is not None:
                bar.close()
        shutil.copyfile(tokenizer_json, tmp / "hf" / "tokenizer.json")
        losses = {"base": heldout_loss(base_hf, windows)}
        if prev_hf is not None:
            losses["previous"] = heldout_loss(prev_hf, windows)
        losses["after"] = heldout_loss(tmp / "hf", windows)
        run = {"steps": summary.get("steps", 0), "minutes": round((time.monotonic() - t0) / 60, 2),
               "interrupted": stopped["early"], "heldout_loss": {k: round(v, 4) for k, v in losses.items()},
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        to_beat = min(v for k, v in losses.items() if k != "after")
        which = "the learned model already installed" if losses.get("previous", float("inf")) <= losses["base"] \
            else "the base model"
        loss_line = (f"held-out loss {losses['base']:.3f} (base)"
                     + (f", {losses['previous']:.3f} (installed)" if "previous" in losses else "")
                     + f" -> {losses['after']:.3f} (adapted, {run['steps']} steps)")
        if not losses["after"] < to_beat:
            kept = "the installed learned model" if prev else "the base model"
            return LearnResult(False, out, f"kept {kept}: the adapted model does not beat {which} on this project's "
                                           f"held-out files ({loss_line}); nothing installed", {"run": run})
        info = {"learn": {
            "parent": {"name": parent.name, "model_id": parent.model_id, "manifest_sha256": parent_sha},
            "project": {"root_key": project_key(root), "files": len(data.files), "train_files": len(data.train),
                        "heldout_files": len(data.heldout), "train_tokens": int(len(train_tokens)),
                        "heldout_tokens": int(len(held_tokens)), "left_out": data.counts},
            "heldout_loss": run["heldout_loss"], "runs": prev_runs(prev) + [run],
            "config": {"lr": lr, "batch_size": batch_size, "context_length": context, "minutes": minutes}}}
        for k in ("recipe", "corpus"):
            if k in (parent.info or {}):
                info[f"parent_{k}"] = parent.info[k]
        log("learn: exporting and validating the adapted model")
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporters' tracer warnings say nothing to a user
                report = export_onnx(tmp / "hf", tmp / "model", quantize="int8" if parent.quantization != "none"
                                     else None, tokenizer_json=tokenizer_json, min_agreement=min_agreement,
                                     manifest_fields={"name": f"{parent.name}-learned", "family": parent.family,
                                                      "info": info})
        except ExportValidationError as e:
            raise LearnError(f"the adapted model failed its export check ({e}); nothing installed") from None
        shutil.move(str(tmp / "hf"), str(tmp / "model" / "checkpoint"))
        for junk in ("train_log.jsonl", "train_summary.json"):
            (tmp / "model" / "checkpoint" / junk).unlink(missing_ok=True)
        man = Manifest.load(tmp / "model")
        man.info["source"] = {**man.info.get("source", {}), "hf_dir": "checkpoint"}
        man.save(tmp / "model")
        install(tmp / "model", out)
    msg = f"installed {out} ({parent.name}-learned): {loss_line}"
    return LearnResult(True, out, msg, {"run": run, "export": {k: report.get(k) for k in (
        "fp32_max_abs_logit_diff", "int8_greedy_agreement", "model_bytes")}})


def prev_runs(prev: Manifest | None) -> list:
    return list(((prev.info or {}).get("learn") or {}).get("runs") or []) if prev is not None else []
