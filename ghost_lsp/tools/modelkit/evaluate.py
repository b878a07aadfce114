"""`ghost-lsp model eval RECIPE`: one table comparing every model a recipe builds.

Rows: teacher, student trained alone (baseline), distilled student — each as its PyTorch
checkpoint (validation loss) and its fp32 ONNX export (next-line accuracy and speed, through the
same prompt, engine and filters the server uses) — and the shipped int8 student.
Columns: params, validation loss (nats/token, held-out packages), next-line exact match and edit
similarity, size on disk, prefill ms and ms per decoded token (medians).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ghost_lsp.context import collect_context
from ghost_lsp.tools.evals import nextline
from ghost_lsp.completion.filters import apply_filters
from ghost_lsp.completion.prompt import build_prompt
from ghost_lsp.types import SamplingParams


def engine_completer(engine, max_new_tokens: int = 32):
    """complete(position) through context → prompt → engine (greedy) → single-line filters."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def complete(p: nextline.Position) -> str:
        # the document with the target line emptied: a FIM prompt must not see the answer in its suffix
        ctx = collect_context(p.document, p.line, p.character, path=p.path, language="python")
        prompt = build_prompt(ctx, engine.manifest, engine.count_tokens, max_new_tokens)
        cand = engine.generate(prompt.text, SamplingParams(**{**params.__dict__, "stop": prompt.stop}))
        text, _ = apply_filters(cand.text, ctx, multiline=False)
        return text

    return complete


def onnx_loss(engine, windows: np.ndarray) -> float:
    """Validation loss of an ONNX model over the same windows the trainer uses."""
    total, count = 0.0, 0
    for w in windows:
        logits, _ = engine.decoder.run(list(map(int, w[:-1])), engine.decoder.empty_past())
        logits = logits.astype(np.float64)
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
        total += float((lse - logits[np.arange(len(w) - 1), w[1:]]).sum())
        count += len(w) - 1
    return total / count


def speed(engine, prompt: str, runs: int = 5, new_tokens: int = 32) -> tuple[float, float]:
    """Median prefill ms and ms per decoded token (KV reuse off: every run prefills)."""
    pre, dec = [], []
    reuse = engine.reuse_kv
    engine.reuse_kv = False
    try:
        for _ in range(runs):
            c = engine.generate(prompt, SamplingParams(max_new_tokens=new_tokens, temperature=0.0))
            n = max(1, len(c.token_ids) - 1)
            pre.append(c.prefill_ms)
            dec.append(c.decode_ms / n)
    finally:
        engine.reuse_kv = reuse
    return statistics.median(pre), statistics.median(dec)


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def evaluate_recipe(r, positions: int = 300, out_md: str | Path | None = None) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.tools.modelkit.corpus import read_documents
    from ghost_lsp.tools.modelkit.export import export_onnx
    from ghost_lsp.tools.modelkit.train import eval_loss, fixed_windows, tokenize_split

    family = r.section("export").get("prompt_family")
    valid_docs = [(d.path, d.text) for d in read_documents(r.corpus_dir / "valid.jsonl")]
    pos = nextline.sample_positions(valid_docs, positions, seed=0)
    print(f"next-line positions: {len(pos)} from {len(valid_docs)} held-out files", file=sys.stderr)
    valid_tokens = tokenize_split(r.corpus_dir, "valid", r.tokenizer_path)
    ctx_len = int(r.section("student").get("context_length", 256))
    windows = fixed_windows(valid_tokens, ctx_len, 64)
    sample_prompt = pos[0].text[: pos[0].text.index("\n", 2000) if "\n" in pos[0].text[2000:] else 2000]
    rows = []
    fp32_dir = r.work / "eval-onnx"
    for stage in ("teacher", "baseline", "student", "ditto"):
        ckpt = r.stage_dir(stage)
        if not (ckpt / "config.json").exists():
            print(f"skip {stage}: no checkpoint at {ckpt}", file=sys.stderr)
            continue
        r.put_tokenizer(ckpt)
        model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            loss_pt = eval_loss(model, windows, bf16=False)
        out = fp32_dir / stage
        fields = {"name": f"{r.name}-{stage}", **({"family": family} if family else {})}
        export_onnx(ckpt, out, quantize=None, manifest_fields=fields)
        rows.append(_engine_row(f"{stage} (fp32 ONNX)", params, loss_pt, out, pos, sample_prompt, OnnxEngine))
    if (r.out / "manifest.json").exists():
        params = rows[-1]["params"] if rows else 0
        shipped = _engine_row("student (int8 ONNX, shipped)", params, None, r.out, pos, sample_prompt, OnnxEngine,
                              windows=windows)
        rows.append(shipped)
        # the other prompt format on the same model: the evidence for the recipe's prompt_family
        other = "starcoder" if json.loads((r.out / "manifest.json").read_text())["family"] != "starcoder" else "plain"
        rows.append(_engine_row(f"student (int8 ONNX, {other} prompt)", params, shipped["val_loss"], r.out, pos,
                                sample_prompt, OnnxEngine, family=other))
    table = format_table(rows)
    print(table)
    md = Path(out_md) if out_md else r.work / "eval.md"
    md.write_text(table + "\n")
    (r.work / "eval.json").write_text(json.dumps(rows, indent=1))
    if (r.out / "manifest.json").exists():
        # hand-written observations live beside the recipe; every figure comes from this run
        print(f"wrote {write_card_from_recorded(r)}", file=sys.stderr)
    return rows


def _engine_row(label, params, loss, folder: Path, pos, sample_prompt, engine_cls, windows=None,
                family: str | None = None) -> dict:
    engine = engine_cls(folder)
    if family:
        engine.manifest.family = family  # prompt format only; the weights are the same
    t0 = time.monotonic()
    res = nextline.evaluate(pos, engine_completer(engine), keep_samples=8)
    elapsed = time.monotonic() - t0
    if loss is None and windows is not None:
        loss = onnx_loss(engine, windows)
    pre, dec = speed(engine, sample_prompt)
    print(f"{label}: EM {res.exact_match:.3f} ES {res.edit_similarity:.3f} in {elapsed:.0f} s", file=sys.stderr)
    return {"model": label, "params": params, "val_loss": loss, "nextline_em": res.exact_match,
            "nextline_es": res.edit_similarity, "empty_rate": res.empty_rate, "positions": res.positions,
            "size_mb": folder_size_mb(folder), "prefill_ms": pre, "ms_per_token": dec,
            "samples": [{"path": p.path, "line": p.line + 1, "target": p.target, "predicted": s}
                        for p, s in res.samples]}


def write_card_from_recorded(r) -> Path:
    """Rewrite the card from the last `model eval` figures (runs/<name>/eval.json) and the notes."""
    rows = json.loads((r.work / "eval.json").read_text())
    notes = r.path.with_suffix(".notes.md")
    return write_card(r, rows, notes.read_text() if notes.exists() else "")


def write_card(r, rows: list[dict], notes: str = "") -> Path:
    """Write models/<name>/README.md from the recipe's recorded figures (every one with its command)."""
    man = json.loads((r.out / "manifest.json").read_text())
    corpus = json.loads((r.corpus_dir / "corpus.json").read_text())
    summaries = {}
    for stage in ("teacher-first", "teacher", "baseline", "student", "ditto"):
        f = r.stage_dir(stage) / "train_summary.json"
        if f.exists():
            summaries[stage] = json.loads(f.read_text())
    val = man["info"].get("validation", {})
    tot = corpus["totals"]
    pk = [p for p in corpus["packages"] if p["source"] != "stdlib"]
    std = [p for p in corpus["packages"] if p["source"] == "stdlib"]
    lines = [
        f"# {r.name}", "",
        "The default model of ghost-lsp: a small Llama-style Python code model trained with fill-in-the-middle,",
        "distilled from a larger teacher, exported to ONNX and quantized to int8. Built on two CPU cores from",
        "source code on disk; no weights came from anywhere else."
        + (" The shipped weights are the student after a repetition-penalised fine-tune (DITTO, see"
           " below)." if man["info"].get("fine_tuned") else ""), "",
        f"Rebuild: `ghost-lsp model build models/recipes/{r.path.name}` (work files in `runs/{r.name}/`).", "",
        "## Format", "",
        f"- `model.onnx`: {man['architecture']} decoder with past key/values ("
        + ("the compact fused graph of `modelkit/llama_graph.py`: GroupQueryAttention with rotary, untied LM head, "
           "last-position prefill logits, KV appended in place" if man["info"].get("graph") == "fused"
           else "optimum `text-generation-with-past`")
        + f"), {man['quantization']}, {(r.out / 'model.onnx').stat().st_size / 1e6:.1f} MB",
        f"- `tokenizer.json`: byte-level BPE, {summaries.get('student', {}).get('vocab_size', '?')} tokens,"
        " with `<|endoftext|>`, `<fim_prefix>`, `<fim_middle>`, `<fim_suffix>`, `<|pad|>`",
        f"- context {man['context_length']} tokens; prompt family `{man['family']}`"
        + (" (prefix-suffix-middle FIM)" if man["family"] == "starcoder" else
           " (left-to-right; the model is FIM-trained too and the `starcoder` template works with it)"), "",
        "## Corpus", "",
        f"- Python standard library ({len(std)} top-level modules, regression tests left out) and {len(pk)} sdists:"
        f" {', '.join(p['name'] + ' ' + p['version'] + ' (' + p['licence'] + ')' for p in pk)}.",
        "- Licences read from each sdist's metadata; anything not clearly permissive is refused. Packages in"
        " `data/eval-reserved.txt` never enter the corpus.",
        "- Filters: non-UTF-8, over 200 kB, minified, generated, under 5 lines; exact and near-duplicate files"
        " (MinHash over lines, Jaccard ≥ 0.85) dropped.",
        f"- Split by package. Train: {tot['train']['files']} files, {tot['train']['chars'] / 1e6:.1f} M characters"
        + (f", {tot['train'].get('tokens', 0) / 1e6:.1f} M tokens" if tot['train'].get('tokens') else "") +
        f". Validation: {tot['valid']['files']} files, {tot['valid']['chars'] / 1e6:.1f} M characters"
        + (f", {tot['valid'].get('tokens', 0) / 1e6:.2f} M tokens" if tot['valid'].get('tokens') else "") +
        f" from {', '.join(p['name'] for p in corpus['packages'] if p['split'] == 'valid')}.",
        "- The full list with versions, licences and per-package counts: `runs/<name>/corpus/corpus.json`.", "",
        "## Training", "",
        "| run | params | steps | tokens seen | minutes | tokens/s | final val loss |", "|---|---|---|---|---|---|---|",
    ]
    for stage, s in summaries.items():
        lines.append(f"| {stage} | {s['params'] / 1e6:.2f} M | {s['steps']} | {s['tokens_seen'] / 1e6:.1f} M | "
                     f"{s.get('train_minutes', '?')} | {s.get('tokens_per_s', '?')} | {s['val_loss']:.3f} |")
    lines += [
        "",
        "Validation loss: nats/token on 64 fixed 256-token windows of the validation packages. The teacher ran"
        " twice (`teacher-first`, then `teacher` continued from its weights with a fresh schedule); `student` is"
        " distilled from the final teacher (KL at temperature 2 weighted 0.7 + cross-entropy 0.3); `baseline` is"
        " the same student trained alone for the same number of steps."
        + (" `ditto` is the student fine-tuned against repetition (modelkit/ditto.py: DITTO loss on synthetic"
           " repeats mixed with next-token loss; its tokens/s counts both batches)." if "ditto" in summaries else ""),
        "",
        "## Export and quantization", "",
        f"fp32 ONNX vs PyTorch: max |Δlogit| {val.get('fp32_max_abs_logit_diff', float('nan')):.2e} (tolerance 1e-3);"
        f" int8 greedy next-token agreement with PyTorch {val.get('int8_greedy_agreement', float('nan')):.1%}"
        " along PyTorch's greedy path (threshold 90 %). Command: `ghost-lsp model package RECIPE` (fails when"
        " either check fails).", "",
        "## Comparison", "",
        "Command: `ghost-lsp model eval models/recipes/ghost-py-small.toml --positions N`. Next-line: cursor at the"
        " start of a line inside a function body (after its indentation) in the held-out validation files; the"
        " prediction is the completion through the server's own prompt, engine and single-line filters, greedy;"
        " exact match after trimming, edit similarity = 1 − Levenshtein / longer length. Speed: the engine's"
        " default ONNX Runtime threads (1 on a 2-core machine), median of 5 runs, a ~250-token prompt,"
        " 32 new tokens.", "",
        format_table(rows), "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    shipped = next((x for x in rows if "shipped" in x["model"]), None)
    if shipped and shipped["samples"]:
        lines += ["## Samples (held-out code, shipped model, greedy, single line)", "",
                  "| file:line | written by the author | suggested |", "|---|---|---|"]
        for smp in shipped["samples"]:
            esc = lambda t: t.replace("|", "\\|") or "*(nothing)*"  # noqa: E731
            lines.append(f"| {smp['path']}:{smp['line']} | `{esc(smp['target'])}` | `{esc(smp['predicted'])}` |")
        lines.append("")
    path = r.out / "README.md"
    path.write_text("\n".join(lines))
    return path


def format_table(rows: list[dict]) -> str:
    head = "| model | params | val loss | next-line EM | edit sim | size MB | prefill ms | ms/token |\n|---|---|---|---|---|---|---|---|"
    lines = [head]
    for x in rows:
        loss = f"{x['val_loss']:.3f}" if x["val_loss"] is not None else "-"
        lines.append(f"| {x['model']} | {x['params'] / 1e6:.2f} M | {loss} | {x['nextline_em']:.3f} | "
                     f"{x['nextline_es']:.3f} | {x['size_mb']:.1f} | {x['prefill_ms']:.1f} | {x['ms_per_token']:.2f} |")
    return "\n".join(lines)
