"""`ghost-lsp serve`: the language server on stdio or TCP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ghost_lsp import __version__
from ghost_lsp.cli import common
from ghost_lsp.settings.core import LOG_LEVELS

log = logging.getLogger("ghost_lsp")


def add_parser(sub, model_help: str) -> argparse.ArgumentParser:
    sp = sub.add_parser("serve", help="run the language server (stdio unless --tcp)")
    sp.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio")
    sp.add_argument("--model", metavar="PATH", help=model_help)
    sp.add_argument("--db", metavar="PATH", help="feedback database (default: $XDG_DATA_HOME/ghost-lsp/feedback.db)")
    sp.add_argument("--config", metavar="FILE", help="settings file, TOML or JSON (keys as in README; optional [ghost] table)")
    sp.add_argument("--log-file", metavar="F", help="write logs here (warnings still go to stderr)")
    sp.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    sp.set_defaults(func=cmd_serve)
    return sp


def cmd_serve(args: argparse.Namespace) -> int:
    base, warnings = common.base_settings(args, {"model": args.model, "db": args.db})
    common.setup_logging(args.log_level or base.log_level, args.log_file)
    for w in warnings:
        log.warning("%s", w)

    from ghost_lsp.lsp.server import create_server

    server = create_server(base, warnings)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            print(f"ghost-lsp: --tcp expects HOST:PORT, got {args.tcp!r}", file=sys.stderr)
            return 2
        log.info("ghost-lsp %s listening on %s:%s", __version__, host, port)
        try:
            server.start_tcp(host, int(port))
        finally:
            _close(server)
        return 0
    # Keep the LSP stream to ourselves: fd 1 now points at stderr, so a stray print or a
    # C library writing to stdout cannot corrupt the protocol.
    lsp_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    log.info("ghost-lsp %s on stdio", __version__)
    try:
        server.start_io(sys.stdin.buffer, lsp_out)
    finally:
        _close(server)
    return 0


def _close(server) -> None:
    """Write what the feedback queue still holds, also when the client exits without
    `shutdown`."""
    server.feedback.stop()
    server.completer.close()
    if server.store is not None:
        server.store.close(timeout=2)
