"""What the eval commands share: settings from their flags, a progress line, the history
record, the metrics table, the common arguments."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

from ghost_lsp.tools.evals.history import History, Record, default_history_path


class Progress:
    """A one-line progress bar on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, max(1, total), enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._shown = -1

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        total = total or self.total
        tenth = done * 10 // max(1, total)
        if not self.tty and tenth == self._shown and done != total:
            return
        self._shown = tenth
        bar = "#" * (done * 20 // max(1, total))
        msg = f"{self.label} [{bar:<20}] {done}/{total} {time.monotonic() - self.t0:.0f}s"
        print(("\r" + msg) if self.tty else msg, end="" if self.tty and done < total else "\n",
              file=sys.stderr, flush=True)


def fail(message: str) -> int:
    print(f"ghost-lsp eval: {message}", file=sys.stderr)
    return 1


def settings_from_args(args):
    from ghost_lsp.cli.common import base_settings

    s, warnings = base_settings(args, {"model": getattr(args, "model", None),
                                        "max_new_tokens": getattr(args, "max_new_tokens", None),
                                        "deadline_ms": getattr(args, "deadline_ms", None)})
    for w in warnings:
        print(f"ghost-lsp eval: {w}", file=sys.stderr)
    return s


def store(args, *records: Record) -> None:
    if args.no_history:
        return
    h = History(args.history or default_history_path())
    try:
        for r in records:
            h.add(r)
    finally:
        h.close()
    print(f"recorded run {', '.join(str(r.id) for r in records)} in {h.path}", file=sys.stderr)


def settings_dict(s) -> dict:
    d = asdict(s)
    d.pop("exclude", None)
    return d


def print_metrics(title: str, metrics: dict) -> None:
    print(f"## {title}")
    print("| figure | value |\n|---|---|")
    for k, v in metrics.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")


def add_common_arguments(p: argparse.ArgumentParser, model: bool = True) -> None:
    if model:
        p.add_argument("--model", metavar="DIR", help="model folder (default: as `serve`)")
        p.add_argument("--config", metavar="FILE", help="settings file, TOML or JSON (as `serve`)")
        p.add_argument("--max-new-tokens", type=int, metavar="M", help="tokens per request (default: settings)")
        p.add_argument("--deadline-ms", type=int, metavar="MS", default=60000,
                       help="per-request deadline (default 60000: an eval measures quality, not patience)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-history", action="store_true", help="do not record this run")
    p.add_argument("--history", metavar="FILE", help=f"eval history (default: $GHOST_LSP_EVAL_HISTORY or "
                                                     f"{default_history_path()})")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
