"""What every command shares: logging to stderr, the settings layers of the command line, a
failure line, the position arguments.

Logs go to stderr (or --log-file), never stdout: for `serve` over stdio, stdout is the LSP
stream.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ghost_lsp.settings.core import Settings, default_model_dir, from_dict, load_file


def setup_logging(level: str, log_file: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.handlers.clear()
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    if log_file:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
        err.setLevel(logging.WARNING)  # problems still reach stderr
    root.addHandler(err)
    root.setLevel(logging.WARNING)  # third-party chatter stays quiet
    logging.getLogger("ghost_lsp").setLevel(level)


def base_settings(args: argparse.Namespace, overrides: dict) -> tuple[Settings, list[str]]:
    """defaults ← --config FILE ← command-line flags."""
    warnings: list[str] = []
    data: dict = {}
    if getattr(args, "config", None):
        data, warnings = load_file(args.config)
    s, more = from_dict(data)
    warnings += more
    s, more = from_dict({k: v for k, v in overrides.items() if v is not None}, s)
    return s, warnings + more


def fail(message: str) -> int:
    print(f"ghost-lsp: {message}", file=sys.stderr)
    return 1


def model_help() -> str:
    return f"model folder or .gguf file (default: $GHOST_LSP_MODEL or {default_model_dir()})"


def add_position_arguments(p: argparse.ArgumentParser, model_help: str) -> None:
    """FILE, --line, --col (1-based, as editors show them) and --model: the commands that run the
    pipeline at one position of a file (`complete`, `prompt`)."""
    p.add_argument("file", metavar="FILE")
    p.add_argument("--line", type=int, required=True, metavar="N", help="1-based line number")
    p.add_argument("--col", type=int, required=True, metavar="N", help="1-based column, in characters")
    p.add_argument("--model", metavar="PATH", help=model_help)
