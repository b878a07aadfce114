"""Before/after fine-tuning on one user's project, in one run (`ghost-lsp finetune-bench`).

A stand-in for a user who works on one project with ghost-lsp on:
1. The project's .py files are split by path hash into "worked on" (fine-tune) and held-out.
2. Sessions on worked-on files: at sampled lines the user types the line the author really
   wrote, one keystroke at a time; after every keystroke the real Completer suggests (as the
   server does per keystroke). When a suggestion is exactly the rest of the line the user
   accepts it (insert + the accept command); when only its first line is, they accept that
   line (a partial accept); otherwise they keep typing. The real `Tracker` labels it all and
   the real `FeedbackStore` logs it: accepted, partial, typed-anyway and rejected come from
   the same inference as in the server.
3. `ghost-lsp export` (report.load + export_rows) → `finetune` → a new int8 model folder.
4. Next-line exact match and edit similarity (evals/nextline.py, through the Completer) on
   the held-out files, parent vs fine-tuned, same positions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path


def split_files(files: list[tuple[str, str]], heldout_share: float = 0.3) -> tuple[list, list]:
    """(worked on, held out) by a hash of the path relative to the project: stable across runs."""
    ft, ho = [], []
    for path, text in files:
        h = int(hashlib.sha256(Path(path).name.encode() + path.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (ho if h < heldout_share else ft).append((path, text))
    return ft, ho


def simulate(model_dir: str | Path, positions, db: str | Path, *, max_chars: int = 60) -> dict:
    """Type each position's real line keystroke by keystroke with the model suggesting; log to `db`."""
    from ghost_lsp.tools.evals.pipeline import Pipeline
    from ghost_lsp.feedback import FeedbackStore
    from ghost_lsp.feedback.infer import SURVIVAL_S, Tracker
    from ghost_lsp.types import CompletionRequest

    now = [time.time()]
    store = FeedbackStore(db)
    tracker = Tracker(store.record_event, clock=lambda: now[0])
    pipe = Pipeline(model_dir)
    counts = {"lines": 0, "keystrokes": 0, "shown": 0, "accepted_by_user": 0, "partial_by_user": 0}
    try:
        for i, p in enumerate(positions):
            lines = p.text.split("\n")
            indent = lines[p.line][:p.character]
            target = p.target[:max_chars]
            uri = f"file:///project/{i}/{Path(p.path).name}"
            head = "\n".join(lines[:p.line])
            tail = "\n".join(lines[p.line + 1:])
            start = len(head) + 1 + len(indent)
            counts["lines"] += 1
            for k in range(len(target)):
                doc = f"{head}\n{indent}{target[:k]}\n{tail}"
                tracker.changed(uri, doc)
                now[0] += 0.12
                c = pipe.complete(doc, p.line, p.character + k, path=Path(p.path).name)
                counts["keystrokes"] += 1
                if c is None or not c.text.strip():
                    continue
                req = CompletionRequest(uri=uri, version=None, line=p.line, character=p.character + k,
                                        path=Path(p.path).name, trigger="automatic")
                store.record_shown(c, req)
                tracker.shown(uri, c.id, c.text, doc, start + k)
                counts["shown"] += 1
                rest, first = target[k:], c.text.split("\n", 1)[0]
                if c.text == rest or (first == rest and "\n" in c.text):
                    take = c.text if c.text == rest else first + "\n"
                    tracker.changed(uri, doc[:start + k] + take + doc[start + k:])  # the editor inserts it
                    if c.text == rest:
                        tracker.accept_command(c.id)
                        counts["accepted_by_user"] += 1
                    else:
                        counts["partial_by_user"] += 1
                        now[0] += 0.5  # then the user moves on to another line
                        tracker.changed(uri, "#" + doc[:start + k] + take + doc[start + k:])
                    break
            now[0] += 5.0
            tracker.tick()
        now[0] += max(SURVIVAL_S) + 1
        tracker.tick()
        tracker.flush()
    finally:
        pipe.close()
        store.flush(30)
        store.close()
    return counts


def run(project: str | Path, model_dir: str | Path, work: str | Path, *, sessions: int = 150, positions: int = 150,
        steps: int = 150, minutes: float = 5.0, prompt_weight: float = 0.1, seed: int = 0,
        checkpoint: str | None = None) -> dict:
    from ghost_lsp.tools.evals.nextline import sample_positions
    from ghost_lsp.tools.evals.sources import read_tree
    from ghost_lsp.tools.finetune import default_config, finetune, nextline
    from ghost_lsp.feedback.report import export_rows, load, stats

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    files = read_tree(project)
    ft_files, ho_files = split_files(files)
    if not ft_files or not ho_files:
        raise ValueError(f"{project}: too few .py files to split into worked-on and held-out")
    t0 = time.monotonic()
    db = work / "feedback.db"
    db.unlink(missing_ok=True)
    sim = simulate(model_dir, sample_positions(ft_files, sessions, seed=seed), db)
    rows = load(db)
    labelled = stats(rows)["overall"]
    records = export_rows(rows, ("accepted", "partially_accepted", "typed_anyway", "rejected"))
    export = work / "export.jsonl"
    export.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    t_sim = time.monotonic() - t0
    out = work / "model-ft"
    cfg = default_config(max_steps=steps, time_budget_min=minutes, seed=seed)
    ft = finetune(export, model_dir, out, checkpoint=checkpoint, cfg=cfg, prompt_weight=prompt_weight,
                  keep_hf=False)
    held = sample_positions(ho_files, positions, seed=seed + 1)
    before, after = nextline(model_dir, held), nextline(out, held)
    return {
        "project": str(project), "model": str(model_dir), "files": {"worked_on": len(ft_files), "held_out": len(ho_files)},
        "simulation": {**sim, "seconds": round(t_sim, 1),
                       "labels": {k: labelled[k] for k in ("shown", "accepted", "partially_accepted",
                                                           "typed_anyway", "rejected", "unlabelled")},
                       "acceptance_rate": labelled["acceptance_rate"]},
        "export": {"records": len(records), "path": str(export)},
        "finetune": {k: ft[k] for k in ("steps", "seconds", "train_examples", "valid_examples",
                                        "rejected_examples", "before", "after", "export", "prompt_weight")},
        "nextline_heldout": {"before": before, "after": after},
        "out_dir": str(out),
    }


def format_result(r: dict) -> str:
    s, f, n = r["simulation"], r["finetune"], r["nextline_heldout"]
    lab = s["labels"]
    lines = [
        f"project {r['project']}: {r['files']['worked_on']} files worked on, {r['files']['held_out']} held out",
        f"sessions: {s['lines']} lines typed, {s['keystrokes']} keystrokes, {lab['shown']} suggestions shown; "
        f"inferred: accepted {lab['accepted']}, partial {lab['partially_accepted']}, typed-anyway {lab['typed_anyway']}, "
        f"rejected {lab['rejected']} ({s['seconds']} s)",
        f"export: {r['export']['records']} records; fine-tune: {f['steps']} steps in {f['seconds']} s on "
        f"{f['train_examples']} examples (prompt weight {f['prompt_weight']}); target loss "
        f"{f['before']['valid_target_loss']:.3f} -> {f['after']['valid_target_loss']:.3f}; rejected log-prob "
        f"{f['before']['rejected_logprob']:.3f} -> {f['after']['rejected_logprob']:.3f}; int8 agreement "
        f"{f['export']['int8_greedy_agreement']}",
        "",
        f"| held-out next line ({n['before']['positions']} positions) | exact match | edit similarity | empty |",
        "|---|---|---|---|",
    ]
    for k in ("before", "after"):
        m = n[k]
        lines.append(f"| {k} fine-tune | {m['exact_match']:.3f} | {m['edit_similarity']:.3f} | {m['empty_rate']:.3f} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("finetune-bench", help="simulate a user's sessions on a project, fine-tune on the log, and "
                                              "compare next-line accuracy on held-out files before/after")
    p.add_argument("--project", required=True, metavar="DIR")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--work", required=True, metavar="DIR", help="feedback.db, export.jsonl and model-ft/ go here")
    p.add_argument("--checkpoint", metavar="HF_DIR", help="default: the model manifest's source checkpoint")
    p.add_argument("--sessions", type=int, default=150, help="lines the simulated user types (default 150)")
    p.add_argument("--positions", type=int, default=150, help="held-out next-line positions (default 150)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--prompt-weight", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        r = run(args.project, args.model, args.work, sessions=args.sessions, positions=args.positions,
                steps=args.steps, minutes=args.minutes, prompt_weight=args.prompt_weight, seed=args.seed,
                checkpoint=args.checkpoint)
    except ImportError as e:
        print(f"ghost-lsp finetune-bench needs the train extra: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one clear line
        print(f"ghost-lsp finetune-bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1), encoding="utf-8")
    print(format_result(r))
    return 0
