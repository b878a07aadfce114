"""`ghost-lsp eval learn`: what `ghost-lsp learn` buys on projects the model never saw.

For each held-out project, its files are split 70/30 by a hash of the path (the split `eval
keystrokes` uses, so its typed files are exactly the 30 %). `learn` runs on a copy of the 70 %
(one thread, low priority, each budget from the base model), and the model the server would then
answer with (the adapted one if learn installed it, else the base) is measured on the 30 %
through the real `ghost-lsp serve`, whose workspace is the same 70 % (the n-gram cache on for
both): keystrokes saved, shown/right, and the next line at each line's start (exact match, edit
similarity). Forgetting: the loss of the base and the adapted checkpoints on a general validation
set no project touches (the standard library's `email` and `asyncio` packages, the recipe's own
validation packages).

The base model and every adaptation run in the same process and see the same positions.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

GENERAL_VALID = ("email", "asyncio")  # stdlib packages in ghost-py-base's validation split


def general_windows(tokenizer_json: Path, context: int):
    """Windows of the general validation set (the stdlib's GENERAL_VALID packages)."""
    from tokenizers import Tokenizer

    from ghost_lsp.tools.learn.adapt import eval_windows

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids: list[int] = []
    for pkg in GENERAL_VALID:
        for f in sorted(Path(sysconfig.get_paths()["stdlib"], pkg).rglob("*.py")):
            ids += tok.encode(f.read_text(encoding="utf-8", errors="replace")).ids
    return eval_windows(ids, context)


def _config(folder: Path) -> Path:
    # the server must answer with the model named on its command line, never a learned model it
    # finds for the (temporary) workspace in the user's data directory; and a request must not
    # be cut short by the deadline, or the figures would depend on how busy the machine is
    cfg = folder / "eval-settings.json"
    cfg.write_text(json.dumps({"learned_model": False, "deadline_ms": 60000}))
    return cfg


def run_project(source: str, base: Path, minutes: list[float], *, lines: int, lr: float | None,
                general, log, **learn_options) -> dict:
    """Base and one adaptation per budget, measured on the project's 30 % (rows in that order);
    `learn_options` go to `learn` as they are (tests: max_steps, min_agreement)."""
    from ghost_lsp.tools.evals.keystrokes import run_keystrokes, split_files
    from ghost_lsp.tools.evals.sources import read_python_files
    from ghost_lsp.tools.learn.adapt import base_checkpoint, heldout_loss, learn

    files = read_python_files(source)
    under, rest = split_files(files, 0.3)
    if not under or len(rest) < 2:
        raise ValueError(f"{source}: too few files to split 70/30 ({len(files)})")
    out = {"source": str(source), "files_learned": len(rest), "files_typed": len(under),
           "chars_learned": sum(len(t) for _, t in rest), "rows": []}
    with tempfile.TemporaryDirectory(prefix="ghost-eval-learn-") as tmp:
        tmp = Path(tmp)
        project = tmp / Path(source).name
        for path, text in rest:
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(text, encoding="utf-8")
        cfg = _config(tmp)

        def measure(model: Path) -> dict:
            m = run_keystrokes(source, model=str(model), lines=lines, test_share=0.3, config=str(cfg))
            return {k: m[k] for k in ("keystrokes_saved", "shown_rate", "right_rate", "next_line_exact_match",
                                      "next_line_edit_similarity", "line_exact", "lines", "requests",
                                      "latency_p50_ms", "latency_p95_ms")}

        t = time.monotonic()
        base_row = {"minutes": 0, "installed": None, **measure(base),
                    "general_loss": round(heldout_loss(base_checkpoint(base), general), 4)}
        log(f"eval learn {project.name}: base {json.dumps(base_row)} ({time.monotonic() - t:.0f} s)")
        out["rows"].append(base_row)
        for m in minutes:
            dest = tmp / f"learned-{m:g}"
            t = time.monotonic()
            res = learn(project, base, dest, minutes=m, progress=False, log=lambda msg: None,
                        **({"lr": lr} if lr else {}), **learn_options)
            learn_s = time.monotonic() - t
            run = res.summary.get("run", {})
            row = {"minutes": m, "installed": res.installed, "steps": run.get("steps"),
                   "learn_s": round(learn_s), "heldout_loss": run.get("heldout_loss"), "message": res.message}
            if res.installed:
                row.update(measure(dest))
                row["general_loss"] = round(heldout_loss(dest / "checkpoint", general), 4)
            else:  # the server keeps the base model: the user gets the base figures
                row.update({k: v for k, v in base_row.items() if k not in ("minutes", "installed")})
            log(f"eval learn {project.name}: {m:g} min {json.dumps(row)}")
            out["rows"].append(row)
    return out


def add_arguments(p) -> None:
    p.add_argument("--source", action="append", required=True, metavar="PATH",
                   help="a held-out project: folder or sdist (repeatable)")
    p.add_argument("--model", metavar="DIR", help="the base model folder (default: the shipped model)")
    p.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10], help="learn budgets (default 2 5 10)")
    p.add_argument("--lines", type=int, default=100, help="lines typed per project and model")
    p.add_argument("--lr", type=float, default=None, help="learn's peak learning rate (default: learn's)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def main_args(args) -> int:
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.paths import SHIPPED_MODEL
    from ghost_lsp.tools.learn.adapt import MAX_CONTEXT, LearnError

    base = Path(args.model or SHIPPED_MODEL)
    try:
        general = general_windows(base / Manifest.load(base).tokenizer, MAX_CONTEXT)
        results = [run_project(s, base, args.minutes, lines=args.lines, lr=args.lr, general=general,
                               log=lambda msg: print(msg, file=sys.stderr)) for s in args.source]
    except (OSError, ValueError, LearnError) as e:
        print(f"ghost-lsp eval learn: {e}", file=sys.stderr)
        return 1
    out = {"base_model": str(base), "minutes": args.minutes, "lines": args.lines, "projects": results}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'project':<22}{'min':>5}{'inst':>6}{'saved':>8}{'shown':>7}{'right':>7}{'EM':>7}{'ES':>7}"
          f"{'loss here':>18}{'general':>9}")
    for r in results:
        for row in r["rows"]:
            hl = row.get("heldout_loss") or {}
            here = f"{hl.get('base', 0):.3f}->{hl.get('after', 0):.3f}" if hl else ""
            print(f"{Path(r['source']).name[:21]:<22}{row['minutes']:>5g}{str(row['installed'] or '-'):>6}"
                  f"{row['keystrokes_saved']:>8.3f}{row['shown_rate']:>7.3f}{(row['right_rate'] or 0):>7.3f}"
                  f"{row['next_line_exact_match']:>7.3f}{row['next_line_edit_similarity']:>7.3f}{here:>18}"
                  f"{row['general_loss']:>9.3f}")
    return 0
