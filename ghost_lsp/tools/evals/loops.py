"""Loop and filter benchmark: `python -m ghost_lsp.tools.evals.loops` (or `ghost-lsp eval loops`).

On held-out code (an eval-reserved PyPI package, downloaded as an sdist, or --src DIR), at
line starts inside function bodies (evals/nextline.py positions, the target line blanked):

1. loop rate of raw greedy output (multi-line, `--max-new-tokens`) vs the same output after the
   filters, on all positions and on the positions whose raw output loops ("loop prompts");
   tokens saved by early stop (`StopCheck` in the engine loop) and whether the kept text stays
   the same;
2. next-line exact match side by side, one run, the same prompts: raw greedy, greedy + filters,
   n candidates at several temperatures + filters + ranking (and + a second-model reranker with
   --rerank-model), with the oracle (any candidate right) as the ceiling;
3. the confidence gate's thresholds: how many right and wrong first lines each would drop;
4. a sweep of temperature and frequency/presence penalty vs raw loop rate.

"Loop" here is a count-based test independent of the filters' back-to-back rules: some
substantial line appears 3+ times, or some lexical 4-gram with an identifier appears 3+ times
(see `is_loop`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ghost_lsp.context import collect_context
from ghost_lsp.tools.evals import nextline
from ghost_lsp.tools.evals.sources import read_tree
from ghost_lsp.completion.filters import FilterSettings, StopCheck, apply_filters, cycle, recurring
from ghost_lsp.completion.prompt import build_prompt
from ghost_lsp.completion.rank import ModelReranker, rank
from ghost_lsp.types import Context, SamplingParams

DEFAULT_PACKAGES = ("boltons", "toolz")
_LEX = re.compile(r"\w+|[^\w\s]")


def is_loop(text: str) -> bool:
    """Some substantial line 3+ times, or some 4-gram of lexical tokens with an identifier 3+ times.

    The benchmark's own judge of a loop, independent of the filter's rules on purpose (it
    measures them); pipeline.filter_cuts_loop asks the filter itself."""
    lines = Counter(re.sub(r"\s+", " ", l.strip()) for l in text.split("\n"))
    if any(n >= 3 and len(re.sub(r"[\W_]", "", l)) >= 3 for l, n in lines.items()):
        return True
    toks = _LEX.findall(text)
    grams = Counter(tuple(toks[i:i + 4]) for i in range(len(toks) - 3))
    return any(n >= 3 and any(re.match(r"[^\W\d]", t) for t in g) for g, n in grams.items())


def fetch_packages(names: list[str], dest: Path) -> list[tuple[str, str]]:
    """Download sdists (no deps, no wheels) with pip and return their .py files as (path, text)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    "-d", str(dest), *names], check=True, stdout=sys.stderr)
    for archive in dest.iterdir():
        out = dest / "src" / archive.name
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive) as t:
                t.extractall(out, filter="data")
        elif archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(out)
    return read_tree(dest / "src")


def _document(p: nextline.Position) -> str:
    lines = p.text.split("\n")
    lines[p.line] = lines[p.line][: p.character]
    return "\n".join(lines)


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def real_code_cuts(files, lines: int = 4) -> dict:
    """How often the cycle rules would cut the held-out code itself, in windows of `lines`
    lines: real code is no loop, so every cut here is a false positive (parallel statements)."""
    ctx = Context(prefix="", suffix="", path="held_out.py", language="python")
    windows = [w for _, text in files for src in [text.split("\n")]
               for w in ("\n".join(src[i:i + lines]) for i in range(0, max(0, len(src) - lines), lines)) if w.strip()]
    n = max(1, len(windows))
    return {"windows": len(windows),
            "recurring": sum(recurring(w, ctx)[1] is not None for w in windows) / n,
            "other_cycle_rules": sum(cycle(w, ctx, with_recurring=False)[1] is not None for w in windows) / n}


def run(engine, files, *, positions: int, max_new: int, temperatures: list[float], reranker=None,
        sweep: list[tuple[float, float, float]], sweep_positions: int, seed: int = 0, log=print) -> dict:
    pos = nextline.sample_positions(files, positions, seed=seed)
    res: dict = {"positions": len(pos), "files": len(files), "real_code_cuts": real_code_cuts(files)}
    no_conf = replace(FilterSettings(), confidence=False)
    no_rec = replace(FilterSettings(), recurring=False)  # ablation: the cycle rules without `recurring`
    rows = []
    t0 = time.monotonic()
    for n, p in enumerate(pos):
        doc = _document(p)
        ctx = collect_context(doc, p.line, p.character, path=p.path, language="python")
        prompt = build_prompt(ctx, engine.manifest, engine.count_tokens, max_new)
        cands = []
        for i, t in enumerate(temperatures):
            cands.append(engine.generate(prompt.text, SamplingParams(
                max_new_tokens=max_new, temperature=t, stop=list(prompt.stop), seed=seed + i)))
        greedy = cands[0]
        stopped = engine.generate(prompt.text, SamplingParams(
            max_new_tokens=max_new, temperature=0.0, stop=list(prompt.stop), stop_check=StopCheck(ctx, True)))
        kept = [apply_filters(c.text, ctx, multiline=True, candidate=c) for c in cands]
        kept_stop = apply_filters(stopped.text, ctx, multiline=True, candidate=stopped)[0]
        kept_noconf = apply_filters(greedy.text, ctx, multiline=True, settings=no_conf, candidate=greedy)[0]
        kept_norec = apply_filters(greedy.text, ctx, multiline=True, settings=no_rec, candidate=greedy)[0]
        order = rank(cands, kept)
        order_rr = rank(cands, kept, reranker=reranker, prefix=ctx.prefix) if reranker else order
        lps = greedy.model_logprobs
        first_len = len(_first_line(kept_noconf))
        first_lps = [lp for lp, off in zip(lps, greedy.offsets) if off < max(1, first_len)]
        rows.append(dict(
            target=p.target, raw=greedy.text, raw_tokens=len(greedy.token_ids), kept=kept[0][0],
            reasons=kept[0][1], stop_tokens=len(stopped.token_ids), kept_stop=kept_stop,
            ranked=kept[order[0]][0] if order else "", reranked=kept[order_rr[0]][0] if order_rr else "",
            any_right=any(_first_line(k) == p.target for k, _ in kept),
            noconf=kept_noconf, norec=kept_norec, first_lps=first_lps))
        if (n + 1) % 25 == 0:
            log(f"  {n + 1}/{len(pos)} positions, {time.monotonic() - t0:.0f}s")
    N = max(1, len(rows))
    loops = [r for r in rows if is_loop(r["raw"])]
    L = max(1, len(loops))
    res["loop_rate_raw"] = len(loops) / N
    res["loop_rate_filtered"] = sum(is_loop(r["kept"]) for r in rows) / N
    res["loop_rate_filtered_without_recurring"] = sum(is_loop(r["norec"]) for r in rows) / N
    res["kept_chars_mean"] = sum(len(r["kept"]) for r in rows) / N
    res["kept_chars_mean_without_recurring"] = sum(len(r["norec"]) for r in rows) / N
    res["loop_prompts"] = len(loops)
    res["loop_rate_filtered_on_loop_prompts"] = sum(is_loop(r["kept"]) for r in loops) / L
    res["early_stop_kept_loops_on_loop_prompts"] = sum(is_loop(r["kept_stop"]) for r in loops) / L
    res["tokens_raw"] = sum(r["raw_tokens"] for r in rows)
    res["tokens_early_stop"] = sum(r["stop_tokens"] for r in rows)
    res["tokens_raw_loop_prompts"] = sum(r["raw_tokens"] for r in loops)
    res["tokens_early_stop_loop_prompts"] = sum(r["stop_tokens"] for r in loops)
    res["early_stop_same_kept_text"] = sum(r["kept_stop"] == r["kept"] for r in rows) / N
    res["cut_reasons"] = dict(Counter(x for r in rows for x in r["reasons"]).most_common())
    em = lambda key: sum(_first_line(r[key]) == r["target"] for r in rows) / N  # noqa: E731
    res["em_raw_greedy"] = em("raw")
    res["em_greedy_filters"] = em("kept")
    res["em_filters_no_confidence"] = em("noconf")
    res["em_filters_without_recurring"] = em("norec")
    res["em_ranked"] = em("ranked")
    if reranker is not None:
        res["em_reranked"] = em("reranked")
    res["em_oracle"] = sum(r["any_right"] for r in rows) / N
    res["empty_raw"] = sum(not _first_line(r["raw"]) for r in rows) / N
    res["empty_filters"] = sum(not _first_line(r["kept"]) for r in rows) / N
    res["empty_ranked"] = sum(not _first_line(r["ranked"]) for r in rows) / N
    # confidence thresholds: of first lines kept without the gate, right vs wrong ones it drops
    conf = []
    judged = [(r, _first_line(r["noconf"]) == r["target"]) for r in rows if r["first_lps"]]
    for mean_min in (-1.5, -2.0, -2.5, -3.0, -3.5, -4.0):
        for tok_min in (-6.0, -9.0, -12.0):
            def dropped(r):
                lps = r["first_lps"]
                return sum(lps) / len(lps) < mean_min or min(lps) < tok_min
            right = [r for r, ok in judged if ok]
            wrong = [r for r, ok in judged if not ok]
            conf.append((mean_min, tok_min, sum(map(dropped, right)) / max(1, len(right)),
                         sum(map(dropped, wrong)) / max(1, len(wrong))))
    res["confidence_table"] = conf
    # sweep
    sweep_rows = []
    sub = pos[:sweep_positions]
    for temp, fp, pp in sweep:
        n_loop = 0
        for k, p in enumerate(sub):
            doc = _document(p)
            ctx = collect_context(doc, p.line, p.character, path=p.path, language="python")
            prompt = build_prompt(ctx, engine.manifest, engine.count_tokens, max_new)
            c = engine.generate(prompt.text, SamplingParams(max_new_tokens=max_new, temperature=temp,
                                                            frequency_penalty=fp, presence_penalty=pp,
                                                            stop=list(prompt.stop), seed=seed + k))
            n_loop += is_loop(c.text)
        sweep_rows.append((temp, fp, pp, n_loop / max(1, len(sub))))
        log(f"  sweep T={temp} fp={fp} pp={pp}: {n_loop}/{len(sub)} loop")
    res["sweep"] = sweep_rows
    res["sweep_positions"] = len(sub)
    return res


def format_report(r: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    out = [f"positions: {r['positions']} (from {r['files']} files)", "",
           "| loop rate | raw greedy | after filters |", "|---|---|---|",
           f"| all positions | {pct(r['loop_rate_raw'])} | {pct(r['loop_rate_filtered'])} "
           f"(without the recurring rule: {pct(r['loop_rate_filtered_without_recurring'])}) |",
           f"| loop prompts ({r['loop_prompts']}) | 100 % | {pct(r['loop_rate_filtered_on_loop_prompts'])} "
           f"(early stop + filters: {pct(r['early_stop_kept_loops_on_loop_prompts'])}) |", ""]
    saved = 1 - r["tokens_early_stop"] / max(1, r["tokens_raw"])
    saved_l = 1 - r["tokens_early_stop_loop_prompts"] / max(1, r["tokens_raw_loop_prompts"])
    out += [f"early stop: {r['tokens_raw']} → {r['tokens_early_stop']} generated tokens ({pct(saved)} saved); "
            f"on loop prompts {r['tokens_raw_loop_prompts']} → {r['tokens_early_stop_loop_prompts']} "
            f"({pct(saved_l)} saved); kept text unchanged on {pct(r['early_stop_same_kept_text'])}",
            f"mean kept suggestion: {r['kept_chars_mean']:.1f} chars (without the recurring rule "
            f"{r['kept_chars_mean_without_recurring']:.1f})",
            f"cycle rules on the held-out code itself ({r['real_code_cuts']['windows']} windows of 4 lines): "
            f"the recurring rule cuts {pct(r['real_code_cuts']['recurring'])}, the other cycle rules "
            f"{pct(r['real_code_cuts']['other_cycle_rules'])}", "",
            "| next-line | exact match | empty |", "|---|---|---|",
            f"| raw greedy | {pct(r['em_raw_greedy'])} | {pct(r['empty_raw'])} |",
            f"| greedy + filters (no confidence gate) | {pct(r['em_filters_no_confidence'])} | |",
            f"| greedy + filters (no recurring rule) | {pct(r['em_filters_without_recurring'])} | |",
            f"| greedy + filters | {pct(r['em_greedy_filters'])} | {pct(r['empty_filters'])} |",
            f"| candidates + filters + ranking | {pct(r['em_ranked'])} | {pct(r['empty_ranked'])} |"]
    if "em_reranked" in r:
        out.append(f"| candidates + filters + second-model ranking | {pct(r['em_reranked'])} | |")
    out += [f"| oracle (any candidate right) | {pct(r['em_oracle'])} | |", "",
            "cut reasons (greedy): " + ", ".join(f"{k} {v}" for k, v in r["cut_reasons"].items()), "",
            "| confidence gate: mean < | or token < | right first lines dropped | wrong ones dropped |",
            "|---|---|---|---|"]
    out += [f"| {a} | {b} | {pct(c)} | {pct(d)} |" for a, b, c, d in r["confidence_table"]]
    out += ["", f"| temperature | frequency_penalty | presence_penalty | raw loop rate ({r['sweep_positions']} positions) |",
            "|---|---|---|---|"]
    out += [f"| {t} | {f} | {p} | {pct(x)} |" for t, f, p, x in r["sweep"]]
    return "\n".join(out)


DEFAULT_SWEEP = [(0.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.5), (0.0, 0.0, 1.0),
                 (0.2, 0.0, 0.0), (0.6, 0.0, 0.0), (1.0, 0.0, 0.0), (0.6, 0.5, 0.5)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="model folder (default: the shipped model)")
    p.add_argument("--src", metavar="DIR", help="held-out .py files (default: download --packages)")
    p.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                   help="eval-reserved PyPI packages to download as held-out code (comma-separated)")
    p.add_argument("--positions", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperatures", default="0,0.2,0.6", help="candidate temperatures, first greedy")
    p.add_argument("--rerank-model", metavar="DIR", help="second model folder for the reranker arm")
    p.add_argument("--sweep-positions", type=int, default=100)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def main_args(args: argparse.Namespace) -> int:
    import json

    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.settings.core import Settings, model_dir

    folder = Path(args.model) if args.model else model_dir(Settings())
    engine = load_local(folder)
    reranker = ModelReranker(load_local(args.rerank_model)) if args.rerank_model else None
    with tempfile.TemporaryDirectory(prefix="ghost-loops-") as tmp:
        if args.src:
            files = read_tree(Path(args.src))
        else:
            files = fetch_packages([n.strip() for n in args.packages.split(",") if n.strip()], Path(tmp))
    if not files:
        print("ghost-lsp eval loops: no .py files found", file=sys.stderr)
        return 1
    temps = [float(t) for t in args.temperatures.split(",")]
    r = run(engine, files, positions=args.positions, max_new=args.max_new_tokens, temperatures=temps,
            reranker=reranker, sweep=[] if args.no_sweep else DEFAULT_SWEEP,
            sweep_positions=args.sweep_positions, log=lambda m: print(m, file=sys.stderr, flush=True))
    r["model"] = engine.model_id
    r["temperatures"] = temps
    if args.json:
        print(json.dumps(r))
    else:
        print(f"model {engine.model_id} ({folder}), candidates at T={temps}, max {args.max_new_tokens} new tokens")
        print(format_report(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ghost_lsp.tools.evals.loops", description=__doc__.split("\n")[0])
    add_arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
