"""Repetition-penalised fine-tuning (DITTO: Xu et al. 2022, "Learning to Break the Loop", arXiv 2206.02369).

Small models loop, and a loop feeds itself: the more often a line has repeated, the likelier the
model repeats it again. DITTO trains that away on synthetic repeats. A code unit (one whole line
or a small block of 2-3 lines) is taken from a training file together with the code before it,
then written out R times in a row. For each token of repeat k >= 1 whose twin (the same token at
the same place of repeat k-1) exists, with p_k the model's probability of the token there:

    L_ditto = -log(1 - |p_k - lam * stopgrad(p_{k-1})|)

so the probability of continuing a repeat is pulled to lam times what it was one repeat earlier
and can no longer grow with every copy. Each step mixes it with the ordinary next-token loss,
`loss = (1 - mix) * CE + mix * L_ditto`, so plain quality does not drop; CE covers plain corpus
windows and also the real code of each synthetic sequence (its context and first copy), which
keeps the model copying from context where code really does (a first run without that anchor
lowered the first copy's probability as much as the repeats', and next-line accuracy with it).

Units are whole lines, blocks of 2-3 lines, and spans inside a line (1-6 lexical tokens with an
identifier, repeated in place: `len(len(len(`, `the name of the name of`), the in-line loops
being most of what the shipped model's greedy output cuts.

Which model: the student. It is what ships (int8, greedy by default, the one that loops), and a
fine-tuning step on it costs a third of a teacher step with no teacher in the loop. Running DITTO
on the teacher would help the student only through another 40-minute distillation, whose KL on
plain windows never shows the student a repeated context, so the property need not transfer.

Work in text, not token ids: a byte-level BPE merges a line's newline with the next line's
indentation, so the token sequence of `unit * R` is not R copies of the unit's tokens. Twins are
found by character offset (same token id, start exactly one unit length earlier); boundary tokens
without a twin are left out of the DITTO term.

Why one module over 400 lines: the method in one place (units, sequences, the loss, the
training stage and its loop comparison), as the paper describes it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np


@dataclass
class DittoConfig:
    name: str = "ditto"
    lam: float = 0.5                 # target: p(repeat k) -> lam * p(repeat k-1); the paper's default
    mix: float = 0.5                 # weight of the DITTO term; (1 - mix) on plain next-token CE
    repeats: list[int] = field(default_factory=lambda: [2, 3, 4, 6, 8, 12])  # copies of the unit (incl. the first)
    block_lines: list[int] = field(default_factory=lambda: [1, 1, 2, 3])  # unit sizes in lines, drawn uniformly
    span_rate: float = 0.4           # share of units that are a span inside one line instead
    span_tokens: int = 6             # longest span, in lexical tokens
    max_unit_chars: int = 160        # longer units are skipped (few copies would fit the window)
    prefix_chars: int = 1200         # real code before the unit (trimmed to the window from the left)
    lr: float = 5e-4                 # a fine-tune: well below the student's 4e-3 peak
    min_lr: float = 5e-5
    warmup_steps: int = 20
    weight_decay: float = 0.1
    batch_size: int = 16             # plain windows per step (the CE term)
    ditto_batch_size: int = 16       # synthetic repeat sequences per step (the DITTO term)
    fim_rate: float = 0.5            # as the student was trained: keep FIM working
    time_budget_min: float = 25.0
    max_steps: int = 0               # >0: fixed number of steps instead of the time budget
    eval_every: int = 100
    eval_windows: int = 64
    eval_repeats: int = 64           # fixed synthetic repeat sequences from the valid split
    checkpoint_min: float = 5.0
    threads: int = 0
    bf16: bool = True
    seed: int = 4321

    @classmethod
    def from_dict(cls, d: dict) -> DittoConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ditto settings: {sorted(unknown)}")
        cfg = cls(**d)
        if not 0.0 <= cfg.mix <= 1.0:
            raise ValueError(f"ditto mix must be in [0, 1], not {cfg.mix}")
        if not 0.0 <= cfg.lam <= 1.0:
            raise ValueError(f"ditto lam must be in [0, 1], not {cfg.lam}")
        if not cfg.repeats or min(cfg.repeats) < 2:
            raise ValueError(f"ditto repeats must be counts >= 2, not {cfg.repeats}")
        if not cfg.block_lines or min(cfg.block_lines) < 1:
            raise ValueError(f"ditto block_lines must be >= 1, not {cfg.block_lines}")
        if not 0.0 <= cfg.span_rate <= 1.0 or cfg.span_tokens < 1:
            raise ValueError("ditto span_rate must be in [0, 1] and span_tokens >= 1")
        return cfg


# ---------------------------------------------------------------- synthetic repeats

_WORD = re.compile(r"[^\W\d]\w*")
_LEX = re.compile(r"\w+|[^\w\s]")


def _substantial(line: str) -> bool:
    """A line worth repeating: has an identifier and 3+ word characters (not a bracket or blank)."""
    s = line.strip()
    return bool(_WORD.search(s)) and len(re.sub(r"[\W_]", "", s)) >= 3


def code_units(text: str, block_lines: Sequence[int] = (1,), max_unit_chars: int = 160) -> list[tuple[int, int]]:
    """(start line, line count) of every candidate unit in a file: runs of `n` non-blank lines
    (n in block_lines), at least one substantial, at most max_unit_chars with newlines."""
    lines = text.split("\n")
    out = []
    for n in sorted(set(block_lines)):
        for i in range(len(lines) - n):  # the unit must end with a newline: not the last line
            block = lines[i:i + n]
            if any(not l.strip() for l in block) or not any(_substantial(l) for l in block):
                continue
            if sum(len(l) + 1 for l in block) > max_unit_chars:
                continue
            out.append((i, n))
    return out


@dataclass
class RepeatSample:
    """One synthetic sequence: token ids, and per token its repeat index (-1: context, 0: first
    copy, k: repeat k) and the index of its twin in the previous repeat (-1: none)."""

    ids: np.ndarray
    repeat: np.ndarray
    twin: np.ndarray
    unit: str
    copies: int


def line_span(line: str, rng: random.Random, max_tokens: int) -> tuple[int, int] | None:
    """(start, end) columns of a random span of 1..max_tokens lexical tokens with an identifier,
    ending where the next token starts (so its trailing space repeats with it); None if none."""
    toks = [m.start() for m in _LEX.finditer(line)]
    if len(toks) < 2:
        return None
    for _ in range(8):
        i = rng.randrange(len(toks) - 1)
        j = min(len(toks) - 1, i + rng.randint(1, max_tokens))
        if _WORD.search(line[toks[i]:toks[j]]):
            return toks[i], toks[j]
    return None


def build_repeat_sample(tokenizer, prefix: str, unit: str, copies: int, length: int) -> RepeatSample:
    """Tokenize `prefix + unit * copies` and mark repeats and twins; keep at most `length` tokens
    (context dropped from the left first, then trailing repeats)."""
    if not unit:
        raise ValueError("empty unit")
    if copies < 1:
        raise ValueError("copies must be >= 1")
    text = prefix + unit * copies
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int64)
    starts = np.asarray([s for s, _ in enc.offsets], dtype=np.int64)
    base, L = len(prefix), len(unit)
    # a token belongs to the repeat its first character is in; one that starts in the prefix is context
    repeat = np.where(starts >= base, (starts - base) // L, -1)
    twin = np.full(len(ids), -1, dtype=np.int64)
    where = {int(s): j for j, s in enumerate(starts)}
    for j in np.flatnonzero(repeat >= 1):
        k = where.get(int(starts[j]) - L)
        if k is not None and ids[k] == ids[j] and repeat[k] == repeat[j] - 1:
            twin[j] = k
    # fit the window: drop context from the left, then repeats from the right
    first_unit = int(np.argmax(repeat >= 0)) if (repeat >= 0).any() else len(ids)
    drop = min(first_unit, max(0, len(ids) - length))
    if drop:
        ids, repeat, twin = ids[drop:], repeat[drop:], twin[drop:]
        twin = np.where(twin >= 0, twin - drop, -1)
        twin[twin < 0] = -1
    ids, repeat, twin = ids[:length], repeat[:length], twin[:length]
    return RepeatSample(ids, repeat, twin, unit, copies)


class RepeatBuilder:
    """Draws synthetic repeat sequences from code documents (deterministic for a seed)."""

    def __init__(self, texts: Iterable[str], tokenizer, cfg: DittoConfig, seed: int | None = None):
        self.tok = tokenizer
        self.cfg = cfg
        self.rng = random.Random(cfg.seed if seed is None else seed)
        self.docs: list[tuple[str, list[int], list[tuple[int, int]]]] = []
        for t in texts:
            units = code_units(t, cfg.block_lines, cfg.max_unit_chars)
            if units:
                offs = [0]
                for line in t.split("\n"):
                    offs.append(offs[-1] + len(line) + 1)
                self.docs.append((t, offs, units))
        if not self.docs:
            raise ValueError("no code units found: the documents have no non-blank lines to repeat")

    def sample(self, length: int) -> RepeatSample:
        text, offs, units = self.rng.choice(self.docs)
        n = self.rng.choice(self.cfg.block_lines)
        span = self.rng.random() < self.cfg.span_rate
        sized = [u for u in units if u[1] == (1 if span else n)] or units
        start, count = self.rng.choice(sized)
        begin, end = offs[start], offs[start + count]
        if span:
            cols = line_span(text[begin:end - 1], self.rng, self.cfg.span_tokens)
            if cols:
                begin, end = begin + cols[0], begin + cols[1]
        unit = text[begin:end]
        prefix = text[max(0, begin - self.cfg.prefix_chars):begin]
        if begin > self.cfg.prefix_chars and "\n" in prefix:
            prefix = prefix[prefix.index("\n") + 1:]  # start the context at a line start
        return build_repeat_sample(self.tok, prefix, unit, self.rng.choice(self.cfg.repeats), length)

    def batch(self, size: int, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, repeat, twin) arrays of shape [size, length]; padding has repeat -2."""
        ids = np.full((size, length), pad_id, dtype=np.int64)
        rep = np.full((size, length), -2, dtype=np.int64)
        twin = np.full((size, length), -1, dtype=np.int64)
        for b in range(size):
            s = self.sample(length)
            n = len(s.ids)
            ids[b, :n], rep[b, :n], twin[b, :n] = s.ids, s.repeat, s.twin
        return ids, rep, twin


# ---------------------------------------------------------------- loss


def token_probs(logits, ids):
    """p(ids[t] | ids[<t]) for t >= 1 from logits [B, T, V] (position t-1 predicts token t);
    index 0 is filled with 0 so the result lines up with `ids` ([B, T])."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros_like(logp[:, :1]), logp.exp()], 1)


def ditto_loss(logits, ids, repeat, twin, lam: float):
    """Mean over tokens of repeat >= 1 that have a twin of -log(1 - |p_k - lam * sg(p_{k-1})|).

    Returns (loss, stats) where stats has the mean p_k, mean p_{k-1} and the token count."""
    import torch

    p = token_probs(logits, ids)
    mask = (repeat >= 1) & (twin >= 1)  # twin 0 has no prediction (nothing before it)
    if not mask.any():
        zero = logits.sum() * 0.0
        return zero, {"tokens": 0, "p_repeat": float("nan"), "p_prev": float("nan")}
    prev = p.detach().gather(1, twin.clamp(min=0))
    diff = (p - lam * prev).abs()
    per_tok = -torch.log((1.0 - diff).clamp(min=1e-5))
    loss = per_tok[mask].mean()
    return loss, {"tokens": int(mask.sum()), "p_repeat": float(p.detach()[mask].mean()),
                  "p_prev": float(prev[mask].mean())}


def repeat_stats(model, batch: tuple[np.ndarray, np.ndarray, np.ndarray], bf16: bool = False) -> dict:
    """How much the model likes repeating: mean probability of the repeated tokens per repeat
    index (1, 2, 3+), of their twins in the first copy, and their ratio (1.0 = no growth)."""
    import torch

    ids, rep, twin = (torch.from_numpy(a) for a in batch)
    was = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        p = token_probs(model(input_ids=ids).logits, ids).float()
    if was:
        model.train()
    out = {}
    # p of each token in the first copy, carried forward along its chain of twins; a chain is
    # linked when every link has a twin back to a first-copy token that has a prediction
    first = p.clone()
    linked = torch.zeros_like(rep, dtype=torch.bool)
    T = ids.shape[1]
    for t in range(T):
        src = twin[:, t].clamp(min=0)
        ok = (rep[:, t] >= 1) & (twin[:, t] >= 1) & (
            (rep.gather(1, src[:, None])[:, 0] == 0) | linked.gather(1, src[:, None])[:, 0])
        linked[:, t] = ok
        first[:, t] = torch.where(ok, first.gather(1, src[:, None])[:, 0], first[:, t])
    chain = linked
    # only chains that reach back to the first copy with a prediction (twin index >= 1)
    for name, sel in (("1", rep == 1), ("2", rep == 2), ("3+", rep >= 3), ("all", rep >= 1)):
        m = chain & sel
        if m.any():
            out[f"p_repeat_{name}"] = float(p[m].mean())
            out[f"p_first_{name}"] = float(first[m].mean())
    m = chain
    out["repeat_over_first"] = float(p[m].mean() / first[m].mean()) if m.any() else float("nan")
    out["p_first_copy"] = float(p[(rep == 0) & (torch.arange(T)[None] >= 1)].mean())
    return out


# ---------------------------------------------------------------- training


def train_ditto(cfg: DittoConfig, init_from: str | Path, corpus_dir: str | Path, tokenizer_path: str | Path,
                out_dir: str | Path, progress: bool = True, log=None) -> dict:
    """Fine-tune the checkpoint at init_from with the DITTO + CE mix; save to out_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    from ghost_lsp.tools.modelkit.corpus import read_documents
    from ghost_lsp.tools.modelkit.train import Batcher, eval_loss, fixed_windows, prepare_run, tokenize_split

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out, tok, sp = prepare_run(cfg, out_dir, tokenizer_path)
    model = AutoModelForCausalLM.from_pretrained(str(init_from), dtype=torch.float32)
    ctx = int(model.config.max_position_embeddings)
    train_tokens = tokenize_split(corpus_dir, "train", tokenizer_path)
    valid_tokens = tokenize_split(corpus_dir, "valid", tokenizer_path)
    plain = Batcher(train_tokens, ctx, sp, cfg.fim_rate, cfg.seed)
    windows = fixed_windows(valid_tokens, ctx, cfg.eval_windows)
    corpus_dir = Path(corpus_dir)
    reps = RepeatBuilder((d.text for d in read_documents(corpus_dir / "train.jsonl")), tok, cfg)
    val_reps = RepeatBuilder((d.text for d in read_documents(corpus_dir / "valid.jsonl")), tok, cfg, seed=0)
    val_batch = val_reps.batch(cfg.eval_repeats, ctx, sp["pad"])
    log(f"ditto: {len(reps.docs)} training files with units; lam {cfg.lam}, mix {cfg.mix}")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    before = {"val_loss": eval_loss(model, windows, cfg.bf16), **repeat_stats(model, val_batch, cfg.bf16)}
    log(f"before: {json.dumps({k: round(v, 4) for k, v in before.items()})}")
    t0 = time.monotonic()
    budget_s = cfg.time_budget_min * 60

    def frac(step: int) -> float:
        return step / cfg.max_steps if cfg.max_steps else (time.monotonic() - t0) / budget_s

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac(step))))

    summary: dict = {"config": asdict(cfg), "init_from": str(init_from),
                     "params": sum(p.numel() for p in model.parameters()), "before": before}

    def save(tag: str):
        model.save_pretrained(out)
        for f in Path(tokenizer_path).parent.iterdir():
            if f.is_file() and f.name.startswith("tokenizer"):
                (out / f.name).write_bytes(f.read_bytes())
        summary["checkpoint"] = tag
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))

    step, tokens_seen, last_ckpt = 0, 0, t0
    model.train()
    with open(out / "train_log.jsonl", "a", encoding="utf-8") as log_f:
        while frac(step) < 1.0:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            x = torch.from_numpy(plain.batch(cfg.batch_size))
            ids, rep, twin = (torch.from_numpy(a) for a in reps.batch(cfg.ditto_batch_size, ctx, sp["pad"]))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(input_ids=x[:, :-1]).logits.float()
                ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                d_logits = model(input_ids=ids).logits.float()
                d_loss, st = ditto_loss(d_logits, ids, rep, twin, cfg.lam)
                # the real code of the synthetic sequences (context and first copy) is trained as usual
                real = (rep[:, 1:] == -1) | (rep[:, 1:] == 0)
                ce_real = torch.nn.functional.cross_entropy(d_logits[:, :-1][real], ids[:, 1:][real])
                loss = (1 - cfg.mix) * 0.5 * (ce + ce_real) + cfg.mix * d_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            tokens_seen += x[:, :-1].numel() + ids.numel()
            if step % cfg.eval_every == 0:
                rec = {"step": step, "elapsed_s": round(time.monotonic() - t0, 1), "train_ce": round(ce.item(), 4),
                       "ditto": round(d_loss.item(), 4), "p_repeat": round(st["p_repeat"], 4),
                       "val_loss": round(eval_loss(model, windows, cfg.bf16), 4), "lr": lr_at(step),
                       **{k: round(v, 4) for k, v in repeat_stats(model, val_batch, cfg.bf16).items()}}
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                if progress:
                    log(f"step {step}: ce {rec['train_ce']} ditto {rec['ditto']} val {rec['val_loss']} "
                        f"repeat/first {rec['repeat_over_first']}")
            if time.monotonic() - last_ckpt > cfg.checkpoint_min * 60:
                summary.update(steps=step, tokens_seen=tokens_seen)
                save(f"step {step}")
                last_ckpt = time.monotonic()
    after = {"val_loss": eval_loss(model, windows, cfg.bf16), **repeat_stats(model, val_batch, cfg.bf16)}
    log(f"after: {json.dumps({k: round(v, 4) for k, v in after.items()})}")
    summary.update(steps=step, tokens_seen=tokens_seen, val_loss=after["val_loss"], after=after,
                   train_minutes=round((time.monotonic() - t0) / 60, 2),
                   tokens_per_s=round(tokens_seen / max(1e-9, time.monotonic() - t0)))
    save("final")
    return summary


def stage_ditto(r) -> dict:
    """Recipe stage: fine-tune the recipe's `[ditto] init_from` stage (default the student) into
    runs/<name>/ditto with the `[ditto]` settings."""
    cfg = r.section("ditto")
    init = r.stage_dir(cfg.pop("init_from", "student"))
    if not (init / "config.json").exists():
        raise SystemExit(f"ghost-lsp: no checkpoint to fine-tune at {init}")
    cfg.setdefault("name", "ditto")
    return train_ditto(DittoConfig.from_dict(cfg), init, r.corpus_dir, r.tokenizer_path, r.stage_dir("ditto"))


# ---------------------------------------------------------------- before/after measurement

MODES = (("greedy", 0.0), ("sampled", 0.6))  # sampled = the server's default candidate temperature/top-p


def _line_loop(text: str) -> bool:
    """Some substantial line (3+ word characters) appears 3+ times."""
    from collections import Counter

    lines = Counter(re.sub(r"\s+", " ", l.strip()) for l in text.split("\n"))
    return any(n >= 3 and len(re.sub(r"[\W_]", "", l)) >= 3 for l, n in lines.items())


def measure_model(engine, positions, *, max_new: int = 48, windows: dict[str, np.ndarray] | None = None,
                  log=None) -> dict:
    """Loop and quality figures of one model folder on fixed positions, greedy and sampled.

    Per mode, on the same prompts the server would build (multi-line, all filters on):
    `cycle_cut` share of suggestions the cycle filter cut; `loop_raw` share of raw outputs that
    loop by evals/loops.py's count test (a line or identifier 4-gram 3+ times), `line_loop_raw`
    only the line half of it; next-line exact match / edit similarity (evals/nextline.py scoring
    of the first line after the single-line filters, no confidence gate, as `model eval` scores it);
    `kept_chars` mean kept suggestion length after the
    filters over all positions (empty = 0) and `kept_chars_nonempty` over the kept ones.
    """
    from ghost_lsp.context import collect_context
    from ghost_lsp.tools.evals import nextline
    from ghost_lsp.tools.evals.loops import is_loop
    from ghost_lsp.completion.filters import apply_filters
    from ghost_lsp.completion.prompt import build_prompt
    from ghost_lsp.types import SamplingParams

    out: dict = {}
    t0 = time.monotonic()
    rows = {m: [] for m, _ in MODES}
    for n, p in enumerate(positions):
        ctx = collect_context(p.document, p.line, p.character, path=p.path, language="python")
        prompt = build_prompt(ctx, engine.manifest, engine.count_tokens, max_new)
        for mode, temp in MODES:
            c = engine.generate(prompt.text, SamplingParams(max_new_tokens=max_new, temperature=temp, top_p=0.95,
                                                            stop=list(prompt.stop), seed=n))
            kept, reasons = apply_filters(c.text, ctx, multiline=True, candidate=c)
            # next line as `model eval` scores it (modelkit/evaluate.engine_completer): single-line
            # filters without the confidence gate, so a right but unsure line still counts
            line, _ = apply_filters(c.text, ctx, multiline=False)
            rows[mode].append({"raw": c.text, "kept": kept, "reasons": reasons, "line": line})
        if log and (n + 1) % 100 == 0:
            log(f"  {n + 1}/{len(positions)} positions, {time.monotonic() - t0:.0f} s")
    N = max(1, len(positions))
    for mode, _ in MODES:
        rs = rows[mode]
        preds = {id(p): r["line"] for p, r in zip(positions, rs)}
        nl = nextline.evaluate(positions, lambda p, preds=preds: preds[id(p)])
        kept = [len(r["kept"]) for r in rs]
        out[mode] = {
            "cycle_cut": sum("cycle" in r["reasons"] for r in rs) / N,
            "loop_raw": sum(is_loop(r["raw"]) for r in rs) / N,
            "line_loop_raw": sum(_line_loop(r["raw"]) for r in rs) / N,
            "loop_kept": sum(is_loop(r["kept"]) for r in rs) / N,
            "nextline_em": nl.exact_match, "nextline_es": nl.edit_similarity, "nextline_empty": nl.empty_rate,
            "kept_chars": sum(kept) / N,
            "kept_chars_nonempty": sum(kept) / max(1, sum(k > 0 for k in kept)),
            "kept_empty": sum(k == 0 for k in kept) / N,
            "raw_chars": sum(len(r["raw"]) for r in rs) / N,
        }
    if windows:
        from ghost_lsp.tools.modelkit.evaluate import onnx_loss

        out["val_loss"] = {name: onnx_loss(engine, w) for name, w in windows.items()}
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def compare(models: dict[str, str | Path], src_dirs: list[str | Path], *, positions: int = 300,
            max_new: int = 48, corpus_dir: str | Path | None = None, seed: int = 0, log=None) -> dict:
    """Measure several model folders side by side on the same held-out positions and windows."""
    from tokenizers import Tokenizer

    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.tools.evals import nextline
    from ghost_lsp.tools.evals.sources import read_tree
    from ghost_lsp.tools.modelkit.train import fixed_windows

    files = [f for d in src_dirs for f in read_tree(Path(d))]
    if not files:
        raise SystemExit(f"ghost-lsp: no .py files under {', '.join(map(str, src_dirs))}")
    pos = nextline.sample_positions(files, positions, seed=seed)
    first = next(iter(models.values()))
    tok = Tokenizer.from_file(str(Path(first) / "tokenizer.json"))
    ctx = json.loads((Path(first) / "manifest.json").read_text())["context_length"]
    eos = tok.token_to_id("<|endoftext|>")
    held = np.concatenate([np.asarray(e.ids + [eos], dtype=np.uint16)
                           for e in tok.encode_batch([t for _, t in files])])
    windows = {"heldout": fixed_windows(held, ctx, 64)}
    if corpus_dir:
        from ghost_lsp.tools.modelkit.train import tokenize_split

        windows["corpus_valid"] = fixed_windows(tokenize_split(corpus_dir, "valid", Path(first) / "tokenizer.json"),
                                                ctx, 64)
    res = {"positions": len(pos), "files": len(files), "src": [str(d) for d in src_dirs], "max_new_tokens": max_new,
           "modes": dict(MODES), "models": {}}
    for label, folder in models.items():
        if log:
            log(f"{label}: {folder}")
        res["models"][label] = {"folder": str(folder),
                                **measure_model(load_local(folder), pos, max_new=max_new, windows=windows, log=log)}
    return res


def format_comparison(res: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %"
    labels = list(res["models"])
    out = [(f"{res['positions']} positions in {res['files']} held-out files; multi-line, max "
            f"{res['max_new_tokens']} new tokens; sampled = T 0.6, top-p 0.95, seed = position index"), "",
           "| figure | mode | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    rows = [("cycle filter cuts", "cycle_cut", pct), ("raw loops (line or 4-gram 3+ times)", "loop_raw", pct),
            ("raw: a line 3+ times", "line_loop_raw", pct), ("loops left after filters", "loop_kept", pct),
            ("next-line exact match", "nextline_em", lambda x: f"{x:.3f}"),
            ("next-line edit similarity", "nextline_es", lambda x: f"{x:.3f}"),
            ("kept chars (all positions)", "kept_chars", lambda x: f"{x:.1f}"),
            ("kept chars (non-empty)", "kept_chars_nonempty", lambda x: f"{x:.1f}"),
            ("kept empty", "kept_empty", pct)]
    for name, key, fmt in rows:
        for mode in res["modes"]:
            out.append(f"| {name} | {mode} | " + " | ".join(fmt(res["models"][m][mode][key]) for m in labels) + " |")
    for w in res["models"][labels[0]].get("val_loss", {}):
        out.append(f"| val loss ({w}, int8 ONNX) | - | "
                   + " | ".join(f"{res['models'][m]['val_loss'][w]:.3f}" for m in labels) + " |")
    return "\n".join(out)


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """`ghost-lsp model compare-loops LABEL=DIR ... --src DIR`: side-by-side loop/quality table."""
    p = subparsers.add_parser("compare-loops", help="loop rate, next-line accuracy, kept length and validation "
                                                    "loss of model folders side by side (e.g. before/after ditto)")
    p.add_argument("models", nargs="+", metavar="LABEL=DIR", help="model folders to compare, e.g. before=DIR")
    p.add_argument("--src", action="append", required=True, help="held-out source folder (repeatable)")
    p.add_argument("--corpus", help="corpus folder: also report loss on its valid split")
    p.add_argument("--positions", type=int, default=300)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    models = {}
    for spec in args.models:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            print(f"ghost-lsp: expected LABEL=DIR, got {spec!r}", file=sys.stderr)
            return 2
        if not (Path(folder) / "manifest.json").is_file():
            print(f"ghost-lsp: {folder} is not a model folder (no manifest.json)", file=sys.stderr)
            return 2
        models[label] = folder
    res = compare(models, args.src, positions=args.positions, max_new=args.max_new_tokens, corpus_dir=args.corpus,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(format_comparison(res))
    return 0
