"""The tools' commands, as the command line (cli/tools.py) asks for them by name.

Each tool registers its own parser; heavy dependencies (torch, transformers) are imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL_HELP = "build, train and export models (needs the [train] extra)"


def add_parser(sub, name: str) -> list[str]:
    """Add command `name` to the subparsers `sub`; returns why any part is missing."""
    if name == "eval":
        from ghost_lsp.tools.evals.cli import add_eval_parsers  # other evals register there

        add_eval_parsers(sub)
    elif name == "bench":
        from ghost_lsp.tools.bench.speed import add_bench_parser  # torch only imported when it runs

        add_bench_parser(sub)
    elif name == "finetune":
        from ghost_lsp.tools.finetune import add_parser as add_finetune  # imports torch only when run

        add_finetune(sub)
    elif name == "learn":
        from ghost_lsp.tools.learn.command import add_parser as add_learn  # imports torch only when run

        add_learn(sub)
    elif name == "finetune-bench":
        from ghost_lsp.tools.bench.finetune import add_parser as add_finetune_bench

        add_finetune_bench(sub)
    elif name == "sessions":
        _add_sessions_parser(sub)
    elif name == "model":
        return _add_model_commands(sub)
    else:
        raise KeyError(name)
    return []


# -- model (training extras) ----------------------------------------------------------------


def _add_model_commands(sub) -> list[str]:
    """Let modelkit add `model ...` (it registers the `model` parser itself, export
    included); if it cannot load, offer what does. Returns why anything is missing."""
    try:
        from ghost_lsp.tools.modelkit.recipe import add_model_parsers

        add_model_parsers(sub)
        return []
    except ImportError as e:
        missing = [f"corpus/tokenizer/train ({e})"]
    mp = sub.add_parser("model", help=MODEL_HELP)
    model_sub = mp.add_subparsers(dest="model_cmd", required=True)
    try:
        from ghost_lsp.tools.modelkit.export import add_model_export_parser, cmd_model_export

        p = add_model_export_parser(model_sub)
        if isinstance(p, argparse.ArgumentParser) and p.get_default("func") is None:
            p.set_defaults(func=cmd_model_export)
    except ImportError as e:
        missing.append(f"export ({e})")
    return missing


# -- sessions -------------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace) -> int:
    from ghost_lsp.tools.evals.sources import read_tree
    from ghost_lsp.tools.evals.scripted import format_confusion, run

    if args.project:
        if not Path(args.project).is_dir():
            print(f"ghost-lsp sessions: {args.project}: not a folder", file=sys.stderr)
            return 1
        files = read_tree(args.project)
    else:
        from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

        files = [("sample.py", TINY_CORPUS)]
    try:
        result = run(files, args.per_scenario, args.seed)
    except ValueError as e:
        print(f"ghost-lsp sessions: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else format_confusion(result))
    return 0


def _add_sessions_parser(sub) -> None:
    sp = sub.add_parser("sessions", help="replay scripted editing sessions through the feedback inference "
                                         "and print meant vs inferred labels (a confusion table)")
    sp.add_argument("--project", metavar="DIR", help="take lines from this project's .py files "
                                                      "(default: the built-in sample)")
    sp.add_argument("--per-scenario", type=int, default=40, help="sessions per scenario (default 40)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=cmd_sessions)
