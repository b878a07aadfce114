"""Teacher logits cached on disk, so that a distilled student's step never runs the teacher.

The teacher reads a fixed set of training windows once (drawn by the trainer's own `Batcher`, FIM
samples included) and its k best logits at every position are stored beside them:

    <cache>/meta.json        teacher, tokenizer, window settings, k, and how many windows are done
    <cache>/inputs.npy       uint16 [windows, context + 1]   the token windows
    <cache>/topk_ids.npy     uint16 [windows, context, k]    the teacher's k best next tokens
    <cache>/topk_logits.npy  float16 [windows, context, k]   their logits
    <cache>/lse.npy          float32 [windows, context]      log-sum-exp of all logits / T

Building is resumable: windows are written in chunks and `done` in meta.json advances only after a
chunk is flushed, so a stopped build continues where it stopped. A cache made for another teacher,
tokenizer or setting is refused with the reason rather than silently mixed in. At k = 32 a window
of 1,024 tokens costs 132 KiB, so 1,000 windows (1 M tokens) take 135 MB of disk.

The log-sum-exp makes the top-k exact probabilities at the distillation temperature, and the
mass outside them one more class (step.kl_topk). Without it a first version renormalised the
teacher over its top k: at T = 2 those held only about 17 % of this teacher's mass (4 cached windows), so the student was
taught to put all of it there, and it trained far worse than alone (val loss 7.46 vs 6.26 after
100 steps).

The student then trains on these windows in a shuffled order (a new order each pass), with the
loss `step.kl_topk` plus cross-entropy on the real next token.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from ghost_lsp.tools.modelkit.checkpoint import sha256_of
from ghost_lsp.tools.modelkit.data import Batcher

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the log-sum-exp at the distillation temperature


def _load_teacher(teacher_dir: Path, device: str):
    """The teacher for inference: the compact definition when it is a Llama (faster), else its HF class."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher_dir)
    if config.model_type == "llama" and (teacher_dir / "model.safetensors").is_file():
        from ghost_lsp.tools.modelkit.compact import CompactLlama

        m = forward = CompactLlama.from_folder(teacher_dir)
    else:
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        forward = lambda ids: m(input_ids=ids).logits  # noqa: E731
    m.to(device).eval()
    return m, forward, config


def _weights_file(teacher_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (teacher_dir / name).is_file():
            return teacher_dir / name
    raise FileNotFoundError(f"{teacher_dir}: no teacher weights (model.safetensors)")


def _write_meta(out: Path, meta: dict) -> None:
    tmp = out / "meta.json.part"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "meta.json")


def build_teacher_cache(teacher_dir: str | Path, train_tokens: np.ndarray, special: dict[str, int],
                        tokenizer_path: str | Path, out_dir: str | Path, *, windows: int, context: int,
                        k: int = 32, temperature: float = 2.0, fim_rate: float = 0.5, seed: int = 1234,
                        batch: int = 8,
                        bf16: bool = True, device: str = "cpu", progress: bool = True) -> Path:
    """Run the teacher over `windows` training windows and store its top-k logits (resumable)."""
    import torch

    teacher_dir, out = Path(teacher_dir), Path(out_dir)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    if vocab > 65535:
        raise ValueError(f"vocabulary of {vocab} tokens does not fit the cache's uint16 ids")
    want = {"format": FORMAT, "teacher": str(teacher_dir.resolve()),
            "teacher_sha256": sha256_of(_weights_file(teacher_dir)),
            "tokenizer_sha256": sha256_of(Path(tokenizer_path)), "windows": windows, "context": context,
            "k": k, "temperature": temperature, "fim_rate": fim_rate, "seed": seed}
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    done = 0
    if meta_path.is_file():
        try:
            have = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{meta_path}: corrupt teacher-cache record ({e}); delete {out} to rebuild") from None
        differs = sorted(key for key in want if key != "teacher" and have.get(key) != want[key])
        if differs:
            raise ValueError(f"{out}: a teacher cache built with other settings ({', '.join(differs)} differ); "
                             f"delete it or name another cache folder")
        done = int(have.get("done", 0))
    if done >= windows:
        return out
    mode = "r+" if done else "w+"
    inputs = np.lib.format.open_memmap(out / "inputs.npy", mode=mode, dtype=np.uint16, shape=(windows, context + 1))
    ids = np.lib.format.open_memmap(out / "topk_ids.npy", mode=mode, dtype=np.uint16, shape=(windows, context, k))
    vals = np.lib.format.open_memmap(out / "topk_logits.npy", mode=mode, dtype=np.float16,
                                     shape=(windows, context, k))
    lse = np.lib.format.open_memmap(out / "lse.npy", mode=mode, dtype=np.float32, shape=(windows, context))
    if not done:
        # the same sampler (and FIM share) as the trainer's, drawn once up front: a resumed build
        # reads these windows back instead of re-drawing them
        sampler = Batcher(train_tokens, context, special, fim_rate, seed)
        for i in range(windows):
            inputs[i] = sampler.sample()
        inputs.flush()
        _write_meta(out, {**want, "done": 0})
    model, forward, config = _load_teacher(teacher_dir, device)
    if config.vocab_size != vocab:
        raise ValueError(f"teacher {teacher_dir} has {config.vocab_size} tokens, the student's tokenizer {vocab}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=windows, initial=done, desc="teacher top-k", unit="window", file=sys.stderr, mininterval=5)
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(done, windows, batch):
            j = min(windows, i + batch)
            x = torch.from_numpy(inputs[i:j, :-1].astype(np.int64)).to(device)
            logits = forward(x).float()
            top = logits.topk(k, dim=-1)
            ids[i:j] = top.indices.to("cpu", torch.int32).numpy().astype(np.uint16)
            vals[i:j] = top.values.to("cpu").numpy().astype(np.float16)
            lse[i:j] = torch.logsumexp(logits / temperature, dim=-1).to("cpu").numpy()
            for arr in (ids, vals, lse):
                arr.flush()
            _write_meta(out, {**want, "done": j})
            if bar is not None:
                bar.update(j - i)
    if bar is not None:
        bar.close()
    return out


class CachedTeacher:
    """Batches of (windows, teacher top-k ids, teacher top-k logits) from a finished cache, in a
    shuffled order that changes every pass over the cache."""

    def __init__(self, cache_dir: str | Path, context: int, seed: int = 0):
        cache_dir = Path(cache_dir)
        try:
            meta = json.loads((cache_dir / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{cache_dir}: not a teacher cache ({e})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{cache_dir}: teacher cache format {meta.get('format')}, expected {FORMAT}")
        if int(meta.get("done", 0)) < int(meta["windows"]):
            raise ValueError(f"{cache_dir}: teacher cache incomplete ({meta.get('done', 0)} of {meta['windows']} "
                             "windows); building it again continues where it stopped")
        if int(meta["context"]) != context:
            raise ValueError(f"{cache_dir}: cached at context {meta['context']}, the student trains at {context}")
        self.meta = meta
        self.inputs = np.load(cache_dir / "inputs.npy", mmap_mode="r")
        self.ids = np.load(cache_dir / "topk_ids.npy", mmap_mode="r")
        self.vals = np.load(cache_dir / "topk_logits.npy", mmap_mode="r")
        self.lse = np.load(cache_dir / "lse.npy", mmap_mode="r")
        self.temperature = float(meta["temperature"])
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.inputs))
        self.pos = 0
        self.passes = 0

    def batch(self, size: int):
        """(inputs int64 [b, context+1], ids int64 [b, context, k], logits float32 [b, context, k],
        log-sum-exp float32 [b, context])."""
        rows = []
        while len(rows) < size:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.inputs)), 0
                self.passes += 1
            rows.append(self.order[self.pos])
            self.pos += 1
        rows = np.sort(np.asarray(rows))  # sorted reads are kinder to the memory map
        return (self.inputs[rows].astype(np.int64), self.ids[rows].astype(np.int64),
                self.vals[rows].astype(np.float32), self.lse[rows].astype(np.float32))
