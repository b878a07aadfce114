"""`ghost-lsp stats` and `ghost-lsp export`: read the feedback file, print or write."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ghost_lsp.feedback.report import LABELS, POSITIVE, export_rows, format_stats, load, parse_since, stats


def _db(args) -> Path:
    from ghost_lsp.settings.core import default_db_path

    return Path(args.db).expanduser() if args.db else default_db_path()


def _rows(args):
    try:
        return load(_db(args), parse_since(args.since))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"ghost-lsp: {e}", file=sys.stderr)
        return None
    except Exception as e:  # sqlite3.DatabaseError and friends: a clear line, not a traceback
        print(f"ghost-lsp: cannot read {_db(args)}: {e}", file=sys.stderr)
        return None


def cmd_stats(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if rows is None:
        return 1
    result = stats(rows)
    if getattr(args, "plot", None):
        from ghost_lsp.feedback.report import plot

        try:
            result["over_time"] = plot(rows, args.plot)
        except (RuntimeError, ValueError, OSError) as e:
            print(f"ghost-lsp: --plot: {e}", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_stats(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in LABELS]
    if bad:
        print(f"ghost-lsp: --kinds: unknown {', '.join(bad)} (choose from {', '.join(LABELS)})", file=sys.stderr)
        return 2
    rows = _rows(args)
    if rows is None:
        return 1
    records = export_rows(rows, kinds)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, out)  # a reader never sees half a file
    except OSError as e:
        print(f"ghost-lsp: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(records)} records to {out}", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    db_help = "feedback database (default: $XDG_DATA_HOME/ghost-lsp/feedback.db)"
    since_help = "only suggestions since: 7d, 12h, 30m, 2026-01-31, or Unix seconds"
    sp = sub.add_parser("stats", help="acceptance, typed-anyway, survival, latency per model / template / A/B variant")
    sp.add_argument("--db", metavar="PATH", help=db_help)
    sp.add_argument("--since", metavar="WHEN", help=since_help)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--plot", metavar="FILE.png",
                    help="also draw acceptance, typed-anyway, loop-cut and latency over time per A/B variant "
                         "(needs matplotlib: the eval extra)")
    sp.set_defaults(func=cmd_stats)

    ep = sub.add_parser("export", help="write a JSONL fine-tuning set (prompt, completion, label, final text)")
    ep.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
    ep.add_argument("--db", metavar="PATH", help=db_help)
    ep.add_argument("--since", metavar="WHEN", help=since_help)
    ep.add_argument("--kinds", default=",".join(POSITIVE), metavar="K,K",
                    help=f"labels to export (default {','.join(POSITIVE)}; also: rejected)")
    ep.set_defaults(func=cmd_export)
