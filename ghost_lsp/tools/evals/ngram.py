"""`ghost-lsp eval ngram`: the workspace n-gram cache and prompt-lookup drafts on held-out projects.

Each sampled next-line position (evals/nextline.py) is completed four times through the real
Completer, in one run: cache off, cache on, cache on + drafts, cache off + drafts. The cache's
project tier holds the rest of the project (its other .py files, tests included) without the
file under test; its current-document tier holds that file as the editor has it (the target line
blank). Reported: exact match and edit similarity off vs on (paired, bootstrap CI); whether drafts
changed any output (token for token against the same configuration without drafts); model calls
per suggestion (prefill + decode-loop calls), decode tokens/s and the draft acceptance rate; how
often the mix changed the model's top token.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

CONFIGS = {  # name -> (ngram_cache, drafts on)
    "off": (False, False),
    "on": (True, False),
    "on+drafts": (True, True),
    "off+drafts": (False, True),
}


def add_arguments(p) -> None:
    from ghost_lsp.tools.evals.common import add_common_arguments

    add_common_arguments(p)
    p.add_argument("--source", action="append", required=True, metavar="DIR",
                   help="a held-out project folder (repeatable; each is its own cache)")
    p.add_argument("--positions", type=int, default=100, help="positions sampled per project")
    p.add_argument("--draft-tokens", type=int, default=None, metavar="K", help="draft length (default: settings)")
    p.add_argument("--ngram-weight", type=float, default=None, metavar="W", help="largest mix weight (default: settings)")


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def run_project(pipeline, ws, source: str, count: int, seed: int, settings, progress=None) -> list[dict]:
    """Per position and configuration: prediction, tokens, timings and decode counters."""
    from ghost_lsp.tools.evals import nextline
    from ghost_lsp.tools.evals.sources import read_python_files

    everything = read_python_files(source, include_tests=True)
    positions = nextline.sample_positions(read_python_files(source), count, seed=seed)
    by_file = defaultdict(list)
    for p in positions:
        by_file[p.path].append(p)
    rows = []
    for path, items in by_file.items():
        ws.set_files([(f, t) for f, t in everything if f != path])  # the rest of the project
        for p in items:
            row = {"path": p.path, "line": p.line + 1, "target": p.target}
            for name, (cache, drafts) in CONFIGS.items():
                pipeline.completer.settings = replace(settings, ngram_cache=cache,
                                                      draft_tokens=settings.draft_tokens if drafts else 0)
                t0 = time.perf_counter()
                c = pipeline.complete(p.document, p.line, p.character, path=p.path)
                ms = (time.perf_counter() - t0) * 1000
                raw = pipeline.engine.raw[0] if pipeline.engine.raw else None
                row[name] = {
                    "pred": _first_line(c.text) if c is not None else "",
                    "tokens": list(raw.token_ids) if raw else [],
                    "decode_ms": raw.decode_ms if raw else 0.0,
                    "info": dict(raw.decode_info) if raw else {},
                    "ms": ms,
                }
            rows.append(row)
            if progress:
                progress(len(rows))
    return rows


def summarise(rows: list[dict]) -> dict:
    """Figures of one or more projects' rows (see the module docstring)."""
    from ghost_lsp.tools.evals.nextline import edit_similarity
    from ghost_lsp.tools.evals.stats import paired

    out: dict = {"positions": len(rows)}
    scores = {}
    for name in CONFIGS:
        em = [float(r[name]["pred"] == r["target"]) for r in rows]
        es = [edit_similarity(r[name]["pred"], r["target"]) for r in rows]
        scores[name] = (em, es)
        toks = sum(len(r[name]["tokens"]) for r in rows)
        dec_ms = sum(r[name]["decode_ms"] for r in rows)
        calls = [1 + r[name]["info"].get("decode_calls", 0) for r in rows if r[name]["tokens"]]
        out[name] = {
            "exact_match": sum(em) / max(1, len(em)),
            "edit_similarity": sum(es) / max(1, len(es)),
            "model_calls_per_suggestion": sum(calls) / max(1, len(calls)),
            "decode_tokens_per_s": toks / (dec_ms / 1000) if dec_ms else 0.0,
            "tokens_per_suggestion": toks / max(1, len(rows)),
        }
        drafted = sum(r[name]["info"].get("draft_tokens", 0) for r in rows)
        if drafted:
            out[name]["draft_acceptance"] = sum(r[name]["info"].get("draft_accepted", 0) for r in rows) / drafted
        steps = sum(r[name]["info"].get("ngram_steps", 0) for r in rows)
        if steps:
            out[name]["cache_changed_top_token"] = sum(r[name]["info"].get("ngram_changed", 0) for r in rows) / steps
            out[name]["cache_matched_steps"] = sum(r[name]["info"].get("ngram_matched", 0) for r in rows) / steps
    for a, b in (("off", "on"),):
        for i, metric in enumerate(("exact_match", "edit_similarity")):
            pr = paired(scores[a][i], scores[b][i])
            out[f"{metric}_{b}_minus_{a}"] = asdict(pr)
            out[f"{metric}_relative_gain"] = (pr.mean_b / pr.mean_a - 1.0) if pr.mean_a else None
    for plain, fast in (("on", "on+drafts"), ("off", "off+drafts")):
        same = sum(r[plain]["tokens"] == r[fast]["tokens"] for r in rows)
        out[f"identical_{fast}"] = same / max(1, len(rows))
        calls_p = out[plain]["model_calls_per_suggestion"]
        calls_f = out[fast]["model_calls_per_suggestion"]
        out[f"call_reduction_{fast}"] = calls_p / calls_f if calls_f else 0.0
        tps_p = out[plain]["decode_tokens_per_s"]
        out[f"decode_speedup_{fast}"] = out[fast]["decode_tokens_per_s"] / tps_p if tps_p else 0.0
    return out


def _print(title: str, m: dict) -> None:
    print(f"## {title} ({m['positions']} positions)")
    print("| figure | " + " | ".join(CONFIGS) + " |\n|---|" + "---|" * len(CONFIGS))
    for key in ("exact_match", "edit_similarity", "model_calls_per_suggestion", "decode_tokens_per_s",
                "tokens_per_suggestion", "draft_acceptance", "cache_changed_top_token", "cache_matched_steps"):
        vals = [m[c].get(key) for c in CONFIGS]
        print(f"| {key} | " + " | ".join("" if v is None else f"{v:.4g}" for v in vals) + " |")
    for metric in ("exact_match", "edit_similarity"):
        p = m[f"{metric}_on_minus_off"]
        rel = m[f"{metric}_relative_gain"]
        print(f"- {metric}: on - off = {p['diff']:+.4f} [95 % CI {p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"
              + (f", relative {rel:+.1%}" if rel is not None else ""))
    for fast in ("on+drafts", "off+drafts"):
        print(f"- {fast}: identical outputs {m[f'identical_{fast}']:.1%}, "
              f"{m[f'call_reduction_{fast}']:.2f}x fewer model calls, "
              f"decode tokens/s x{m[f'decode_speedup_{fast}']:.2f}")


def main_args(args) -> int:
    from ghost_lsp.engine.ngram_index import WorkspaceNgrams
    from ghost_lsp.tools.evals.common import Progress, fail, settings_from_args, settings_dict, store
    from ghost_lsp.tools.evals.history import Record
    from ghost_lsp.tools.evals.pipeline import ModelLoadError, Pipeline, load_engine
    from ghost_lsp.settings.core import model_dir

    s = settings_from_args(args)
    if args.draft_tokens is not None:
        s = replace(s, draft_tokens=max(0, args.draft_tokens))
    if args.ngram_weight is not None:
        s = replace(s, ngram_weight=min(1.0, max(0.0, args.ngram_weight)))
    if s.draft_tokens == 0:
        s = replace(s, draft_tokens=8)  # the drafts columns need drafts
    folder = model_dir(s)
    for src in args.source:
        if not Path(src).is_dir():
            return fail(f"{src}: not a folder")
    try:
        engine = load_engine(folder)
    except ModelLoadError as e:
        return fail(str(e))
    pipeline = Pipeline(folder, replace(s, multiline="never", forward_cache=False), engine=engine)
    settings = pipeline.settings
    ws = WorkspaceNgrams(engine.encode, len(engine.token_bytes), max_tokens=s.ngram_max_tokens)
    ws.pinned = True
    pipeline.completer.ngrams = ws
    per_project, all_rows = {}, []
    try:
        for src in args.source:
            bar = Progress(f"ngram {Path(src).name}", args.positions, not args.json)
            rows = run_project(pipeline, ws, src, args.positions, args.seed, settings, bar)
            per_project[Path(src).name] = summarise(rows)
            all_rows += rows
    finally:
        pipeline.close()
    total = summarise(all_rows)
    rec = Record(kind="ngram", model_id=engine.model_id, model_dir=str(folder),
                 metrics={"exact_match_off": total["off"]["exact_match"], "exact_match_on": total["on"]["exact_match"],
                          "edit_similarity_off": total["off"]["edit_similarity"],
                          "edit_similarity_on": total["on"]["edit_similarity"],
                          "identical_with_drafts": total["identical_on+drafts"],
                          "call_reduction": total["call_reduction_on+drafts"],
                          "draft_acceptance": total["on+drafts"].get("draft_acceptance", 0.0),
                          "positions": total["positions"]},
                 prompt_template=pipeline.prompt_template, settings=settings_dict(settings),
                 details={"sources": args.source, "seed": args.seed, "projects": per_project, "all": total})
    store(args, rec)
    if args.json:
        print(json.dumps({"projects": per_project, "all": total}))
        return 0
    for name, m in per_project.items():
        _print(f"{name}: {engine.model_id}", m)
        print()
    _print(f"all projects: {engine.model_id}", total)
    print(f"(settings: ngram_weight {settings.ngram_weight}, draft_tokens {settings.draft_tokens}, "
          f"max_new_tokens {settings.max_new_tokens}; cache excludes the file under test)", file=sys.stderr)
    return 0
