"""The `ghost-lsp` command: one small module a command (serve, complete, prompt, stats/export,
serve-model); the offline tools' commands are mounted by name (cli/tools.py).
"""

from __future__ import annotations

import argparse
import sys

from ghost_lsp import __version__
from ghost_lsp.cli import common, complete, feedback, prompt, serve, serve_model
from ghost_lsp.cli.tools import add_tool_parser


def build_parser(tool: str | None = None) -> tuple[argparse.ArgumentParser, list[str]]:
    """The whole command line; the offline tool `tool` (when it is the command asked for) with
    its own parsers, the others as names in --help. Returns why any part of `tool` is missing."""
    p = argparse.ArgumentParser(prog="ghost-lsp", description="AI code-autocomplete language server.")
    p.add_argument("--version", action="version", version=f"ghost-lsp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    model_help = common.model_help()
    missing: list[str] = []

    def tool_(name: str) -> None:
        missing.extend(add_tool_parser(sub, name, load=name == tool))

    serve.add_parser(sub, model_help)
    complete.add_parser(sub, model_help)
    feedback.add_parsers(sub)  # stats, export
    for name in ("learn", "finetune", "finetune-bench", "sessions"):
        tool_(name)
    prompt.add_prompt_parser(sub, model_help)
    tool_("eval")
    serve_model.add_serve_model_parser(sub, model_help)  # runs only with the [serve] extra
    tool_("bench")
    tool_("model")
    return p, missing


def main(argv: list[str] | None = None) -> int:
    from ghost_lsp.cli.tools import TOOLS

    argv = list(sys.argv[1:] if argv is None else argv)
    tool = argv[0] if argv and argv[0] in TOOLS else None
    parser, missing = build_parser(tool)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if tool and missing and (len(argv) < 2 or argv[1] not in ("-h", "--help")):
            print(f"ghost-lsp {tool}: unavailable: " + "; ".join(missing)
                  + ". Training needs the extra: pip install 'ghost-lsp[train]'", file=sys.stderr)
        return int(e.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
