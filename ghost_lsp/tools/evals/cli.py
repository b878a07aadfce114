"""`ghost-lsp eval ...`: the eval commands. cli.py calls `add_eval_parsers`; an eval kept in
another module registers itself by adding its parser to the `eval` subparsers in
`add_eval_parsers` (one line each), with `func` set to its command.

Every eval that scores a model prints a table (or one JSON object with --json) on stdout,
progress on stderr, and appends one record to the history (see history.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ghost_lsp.tools.evals.common import (Progress, add_common_arguments, fail, print_metrics, settings_dict,
                                          settings_from_args, store)
from ghost_lsp.tools.evals.history import (History, Record, compare, default_history_path, format_changes,
                                     format_table, plot)


def _pipeline(folder, s):
    from ghost_lsp.tools.evals.pipeline import Pipeline

    return Pipeline(folder, s)


# -- humaneval ---------------------------------------------------------------------------------


def run_humaneval(args, folder: Path, s, problems: list[dict], pipeline=None) -> tuple[Record, list]:
    """Complete and execute; returns the record and the per-problem results."""
    from ghost_lsp.tools.evals import humaneval as he
    from ghost_lsp.tools.evals.sandbox import Limits, isolation_summary

    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    own = pipeline is None
    pipeline = pipeline or _pipeline(folder, s)
    temperature = None if args.n_samples == 1 else args.temperature
    t0 = time.monotonic()
    try:
        completions = []
        bar = Progress(f"humaneval {pipeline.model_id}", len(problems) * args.n_samples, not args.json)
        for i, p in enumerate(problems):
            completions.append([he.complete_body(pipeline, p, rounds=args.rounds, temperature=temperature,
                                                 seed=None if temperature is None else args.seed + j)
                                for j in range(args.n_samples)])
            bar((i + 1) * args.n_samples)
        gen_s = time.monotonic() - t0
        results = he.execute(problems, completions, limits, args.workers,
                             Progress("executing", len(problems) * args.n_samples, not args.json))
        metrics = he.summarise(results, problems, args.n_samples)
        metrics.update(pipeline.stats.metrics())
        rec = Record(kind="humaneval", model_id=pipeline.model_id, model_dir=str(folder), metrics=metrics,
                     prompt_template=pipeline.prompt_template,
                     settings={**settings_dict(pipeline.settings), "n_samples": args.n_samples,
                               "temperature": temperature or 0.0, "rounds": args.rounds, "seed": args.seed},
                     details={"limit": args.limit, "tasks": [p["task_id"] for p in problems][:200],
                              "sandbox": {"isolation": isolation_summary(), "timeout_s": limits.timeout_s,
                                          "memory_mb": limits.memory_mb},
                              "generate_s": round(gen_s, 1), "total_s": round(time.monotonic() - t0, 1)})
    finally:
        if own:
            pipeline.close()
    return rec, results


def cmd_humaneval(args) -> int:
    from ghost_lsp.tools.evals import humaneval as he
    from ghost_lsp.tools.evals.pipeline import ModelLoadError
    from ghost_lsp.settings.core import model_dir

    try:
        problems = he.load_problems(args.limit, args.tasks.split(",") if args.tasks else None)
    except (RuntimeError, ValueError) as e:
        return fail(str(e))
    if args.solutions:  # harness check: score the reference or empty bodies, no model involved
        from ghost_lsp.tools.evals.sandbox import Limits

        bodies = [[p["canonical_solution"] if args.solutions == "canonical" else "    pass\n"] for p in problems]
        results = he.execute(problems, bodies, Limits(args.timeout, args.memory_mb), args.workers,
                             Progress(f"executing {args.solutions}", len(problems), not args.json))
        metrics = he.summarise(results, problems, 1)
        if args.json:
            print(json.dumps(metrics))
        else:
            print_metrics(f"HumanEval, {args.solutions} solutions", metrics)
        return 0
    s = settings_from_args(args)
    folder = model_dir(s)
    try:
        rec, results = run_humaneval(args, folder, s, problems)
    except ModelLoadError as e:
        return fail(str(e))
    store(args, rec)
    if args.samples_out:
        with open(args.samples_out, "w", encoding="utf-8") as f:
            for r in results:
                for c, x in zip(r.completions, r.results):
                    f.write(json.dumps({"task_id": r.task_id, "completion": c, "status": x.status,
                                        "detail": x.detail}) + "\n")
    if args.json:
        print(json.dumps(asdict(rec)))
    else:
        print_metrics(f"HumanEval: {rec.model_id} ({len(problems)} problems × {args.n_samples})", rec.metrics)
    return 0


# -- nextline ----------------------------------------------------------------------------------


def _positions(args):
    from ghost_lsp.tools.evals import nextline
    from ghost_lsp.tools.evals.sources import download_sdist, read_python_files, reserved_packages

    files, used, held_out = [], [], True
    reserved = reserved_packages()
    for name in args.package or []:
        if reserved and name.lower() not in reserved:
            print(f"ghost-lsp eval: warning: {name} is not reserved for evaluation; a model may have "
                  "trained on it", file=sys.stderr)
            held_out = False
        path = download_sdist(name)
        files += read_python_files(path)
        used.append(path.name)
    for src in args.source or []:
        files += read_python_files(src)
        used.append(str(src))
        held_out = False  # unknown provenance: the record says so
    if not files:
        raise ValueError("no Python files: give --source PATH (folder, .py, sdist) or --package NAME")
    return nextline.sample_positions(files, args.positions, seed=args.seed), used, held_out, len(files)


def run_nextline(args, folder, s, positions, pipeline=None) -> tuple[Record, list[tuple[float, float]]]:
    from dataclasses import replace

    from ghost_lsp.tools.evals import nextline

    own = pipeline is None
    pipeline = pipeline or _pipeline(folder, replace(s, multiline="never"))
    bar = Progress(f"nextline {pipeline.model_id}", len(positions), not args.json)
    done = [0]

    def complete(p: nextline.Position) -> str:
        c = pipeline.complete(p.document, p.line, p.character, path=p.path)
        done[0] += 1
        bar(done[0])
        return c.text if c is not None else ""

    try:
        res = nextline.evaluate(positions, complete, keep_samples=len(positions))
    finally:
        if own:
            pipeline.close()
    per_item = [(float(pred == p.target), nextline.edit_similarity(pred, p.target)) for p, pred in res.samples]
    metrics = {"exact_match": res.exact_match, "edit_similarity": res.edit_similarity, "positions": res.positions,
               **pipeline.stats.metrics()}
    rec = Record(kind="nextline", model_id=pipeline.model_id, model_dir=str(folder), metrics=metrics,
                 prompt_template=pipeline.prompt_template, settings=settings_dict(pipeline.settings),
                 details={"seed": args.seed, "examples": [{"path": p.path, "line": p.line + 1, "target": p.target,
                                                           "predicted": pred} for p, pred in res.samples[:10]]})
    return rec, per_item


def cmd_nextline(args) -> int:
    from ghost_lsp.tools.evals.pipeline import ModelLoadError
    from ghost_lsp.settings.core import model_dir

    try:
        positions, used, held_out, nfiles = _positions(args)
    except (ValueError, OSError) as e:
        return fail(str(e))
    s = settings_from_args(args)
    try:
        rec, _ = run_nextline(args, model_dir(s), s, positions)
    except ModelLoadError as e:
        return fail(str(e))
    rec.details.update(sources=used, files=nfiles, held_out=held_out)
    store(args, rec)
    if args.json:
        print(json.dumps(asdict(rec)))
    else:
        print_metrics(f"next line: {rec.model_id} ({len(positions)} positions in {nfiles} files)", rec.metrics)
    return 0


# -- compare -----------------------------------------------------------------------------------


def cmd_compare(args) -> int:
    """Both models on the same items in one run; paired differences (B - A) with bootstrap CIs."""
    from ghost_lsp.tools.evals import humaneval as he
    from ghost_lsp.tools.evals.pipeline import ModelLoadError
    from ghost_lsp.tools.evals.stats import paired

    s = settings_from_args(args)
    try:
        if args.suite == "humaneval":
            items = he.load_problems(args.limit)
        else:
            items, used, _, _ = _positions(args)
    except (RuntimeError, ValueError, OSError) as e:
        return fail(str(e))
    records, scores = [], []
    for folder in (args.model_a, args.model_b):
        try:
            if args.suite == "humaneval":
                rec, results = run_humaneval(args, Path(folder), s, items)
                scores.append({"pass@1": [r.correct / max(1, len(r.results)) for r in results]})
            else:
                from dataclasses import replace
                rec, per_item = run_nextline(args, Path(folder), replace(s, model=str(folder)), items)
                scores.append({"exact_match": [x[0] for x in per_item], "edit_similarity": [x[1] for x in per_item]})
        except ModelLoadError as e:
            return fail(str(e))
        records.append(rec)
    a, b = records
    table = {m: paired(scores[0][m], scores[1][m], seed=args.seed) for m in scores[0]}
    summary = Record(kind=f"compare-{args.suite}", model_id=f"{a.model_id} vs {b.model_id}",
                     model_dir=f"{args.model_a} | {args.model_b}", prompt_template=b.prompt_template,
                     settings=a.settings,
                     metrics={f"{m}_diff": p.diff for m, p in table.items()},
                     details={m: asdict(p) for m, p in table.items()})
    store(args, a, b, summary)
    if args.json:
        print(json.dumps({"a": asdict(a), "b": asdict(b), "paired": summary.details}))
        return 0
    print(f"## {args.suite}: A = {a.model_id} ({args.model_a}), B = {b.model_id} ({args.model_b})")
    print("| figure | A | B | B - A | 95 % CI | n |\n|---|---|---|---|---|---|")
    for m, p in table.items():
        print(f"| {m} | {p.mean_a:.4f} | {p.mean_b:.4f} | {p.diff:+.4f} | [{p.ci_low:+.4f}, {p.ci_high:+.4f}]"
              f"{' *' if p.significant else ''} | {p.n} |")
    for m in ("loop_rate", "nonsense_rate", "drop_rate", "latency_p50_ms", "latency_p95_ms"):
        print(f"| {m} | {a.metrics.get(m, 0):.4g} | {b.metrics.get(m, 0):.4g} | "
              f"{b.metrics.get(m, 0) - a.metrics.get(m, 0):+.4g} | | |")
    return 0


# -- history / report --------------------------------------------------------------------------


def _open_history(args) -> History:
    path = Path(args.history) if args.history else default_history_path()
    if not path.exists():
        raise ValueError(f"no eval history at {path} (run an eval first, or pass --history FILE)")
    return History(path)


def cmd_history(args) -> int:
    try:
        h = _open_history(args)
    except ValueError as e:
        return fail(str(e))
    try:
        runs = h.runs(args.kind, args.limit)
    finally:
        h.close()
    if args.json:
        print(json.dumps([asdict(r) for r in runs]))
    else:
        print(format_table(runs) if runs else "(no runs)")
    if args.plot:
        try:
            drawn = plot(runs, args.plot)
        except (RuntimeError, ValueError, OSError) as e:
            return fail(str(e))
        print(f"plotted {', '.join(drawn)} to {args.plot}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    """Compare run B (default: the latest) with run A (default: the run of B's kind before it);
    exit 1 when a figure regressed beyond the thresholds, so CI can gate on it."""
    try:
        h = _open_history(args)
    except ValueError as e:
        return fail(str(e))
    try:
        b = h.get(args.run_b) if args.run_b else (h.runs(limit=1) or [None])[-1]
        if b is None:
            return fail("the history has no runs")
        if args.run_a:
            a = h.get(args.run_a)
        else:
            before = [r for r in h.runs(b.kind) if r.id < b.id]
            if not before:
                return fail(f"run {b.id} is the first {b.kind} run: nothing to compare it with")
            a = before[-1]
    except ValueError as e:
        return fail(str(e))
    finally:
        h.close()
    if a.kind != b.kind:
        return fail(f"run {a.id} is {a.kind} and run {b.id} is {b.kind}: only runs of one kind compare")
    changes = compare(a, b, args.threshold, args.latency_threshold)
    regressed = [c.metric for c in changes if c.regressed]
    if args.json:
        print(json.dumps({"a": a.id, "b": b.id, "regressed": regressed, "changes": [asdict(c) for c in changes]}))
    else:
        print(format_changes(a, b, changes))
        print(f"\n{'REGRESSION in ' + ', '.join(regressed) if regressed else 'no regression'} "
              f"(threshold {args.threshold} absolute, latency +{args.latency_threshold:.0%})")
    return 1 if regressed else 0


# -- parsers -----------------------------------------------------------------------------------


def _humaneval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-samples", type=int, default=1, metavar="K",
                   help="completions per problem (1: greedy; more: sampled at --temperature)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--limit", type=int, metavar="N", help="the first N problems only")
    p.add_argument("--rounds", type=int, default=4, help="accept-and-continue requests per completion")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test run")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space cap per test run")
    p.add_argument("--workers", type=int, default=2, help="test runs in parallel")


def _nextline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", metavar="PATH",
                   help="held-out code: folder, .py file or sdist archive (repeatable)")
    p.add_argument("--package", action="append", metavar="NAME",
                   help="a PyPI package reserved for evaluation, fetched as an sdist (repeatable)")
    p.add_argument("--positions", type=int, default=200, help="cursor positions sampled")


def add_eval_parsers(sub) -> argparse.ArgumentParser:
    ep = sub.add_parser("eval", help="score a model through the completion pipeline; eval history",
                        description="Evaluations through the real pipeline, recorded in a history.")
    esub = ep.add_subparsers(dest="eval_cmd", required=True)

    p = esub.add_parser("humaneval", help="HumanEval pass@k, tests run sandboxed")
    add_common_arguments(p)
    _humaneval_args(p)
    p.add_argument("--tasks", metavar="IDS", help="comma-separated task ids (HumanEval/0,...)")
    p.add_argument("--samples-out", metavar="JSONL", help="write every completion and its result here")
    p.add_argument("--solutions", choices=("canonical", "empty"),
                   help="check the harness: run the reference (or `pass`) bodies instead of a model")
    p.set_defaults(func=cmd_humaneval)

    p = esub.add_parser("nextline", help="next-line exact match and edit similarity on held-out code")
    add_common_arguments(p)
    _nextline_args(p)
    p.set_defaults(func=cmd_nextline)

    p = esub.add_parser("compare", help="two models on the same items: paired differences with CIs")
    p.add_argument("model_a", metavar="DIR_A")
    p.add_argument("model_b", metavar="DIR_B")
    p.add_argument("--suite", choices=("humaneval", "nextline"), default="humaneval")
    add_common_arguments(p)
    _humaneval_args(p)
    _nextline_args(p)
    p.set_defaults(func=cmd_compare)

    p = esub.add_parser("history", help="the recorded runs as a table")
    add_common_arguments(p, model=False)
    p.add_argument("--kind", help="only runs of this kind (humaneval, nextline, ...)")
    p.add_argument("--limit", type=int, metavar="N", help="the last N runs")
    p.add_argument("--plot", metavar="PNG", help="also draw each figure over the runs")
    p.set_defaults(func=cmd_history)

    p = esub.add_parser("report", help="compare two recorded runs; exit 1 on a regression (for CI)")
    p.add_argument("run_a", type=int, nargs="?", help="baseline run id (default: the previous run of B's kind)")
    p.add_argument("run_b", type=int, nargs="?", help="run id (default: the latest)")
    p.add_argument("--threshold", type=float, default=0.02, help="largest allowed drop of a rate (absolute)")
    p.add_argument("--latency-threshold", type=float, default=0.5, help="largest allowed latency growth (relative)")
    add_common_arguments(p, model=False)
    p.set_defaults(func=cmd_report)

    import importlib

    # the evals that live in their own module: (name, help); each has add_arguments and main_args
    for name, help_ in (
        ("holes", "blank function bodies of a held-out project, fill them, run its tests"),
        ("loops", "loop rate before/after filters, early stop, ranking, penalty sweep"),
        ("ngram", "next line with the workspace n-gram cache off vs on, and speculative drafts"),
        ("keystrokes", "keystrokes saved: a simulated user types held-out lines, taking ghost text with Tab "
                       "when it is right"),
        ("learn", "`ghost-lsp learn` on held-out projects: learn on 70 %% of the files for each budget, type "
                  "the other 30 %% through the server (needs [train])"),
    ):
        mod = importlib.import_module(f"ghost_lsp.tools.evals.{name}")
        p = esub.add_parser(name, help=help_)
        mod.add_arguments(p)
        p.set_defaults(func=mod.main_args)
    return ep
