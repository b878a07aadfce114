"""The offline tools' commands (eval, model, bench, finetune, ...), mounted on the command line
by name.

Nothing outside `ghost_lsp/tools/` imports the tools (tests/test_architecture.py keeps it so):
the runtime never loads training or evaluation code, and `ghost-lsp serve` starts without
them. The command line only names each tool command here, with its one-line help for
`ghost-lsp --help`, and loads the tools' own parsers (`ghost_lsp.tools.commands`) when one of
them is the command asked for.
"""

from __future__ import annotations

import importlib

REGISTRY = "ghost_lsp.tools.commands"  # add_parser(sub, name) -> what could not be loaded

# command -> one-line help; the order is --help's.
TOOLS = {
    "finetune": "fine-tune a model folder on a feedback export into a new model folder "
                "(needs the [train] extra)",
    "learn": "fine-tune the model on a project's code (held-out check, installed per project for the "
             "server; needs the [train] extra)",
    "finetune-bench": "simulate a user's sessions on a project, fine-tune on the log, and "
                      "compare next-line accuracy on held-out files before/after",
    "sessions": "replay scripted editing sessions through the feedback inference "
                "and print meant vs inferred labels (a confusion table)",
    "eval": "score a model through the completion pipeline; eval history",
    "bench": "speed: ONNX vs PyTorch, int8 vs fp32, caches, LSP latency, bandwidth",
    "model": "build, train and export models (needs the [train] extra)",
}


def add_tool_parser(sub, name: str, load: bool) -> list[str]:
    """The command `name`: its full parser when `load` (it is the command asked for), else a
    placeholder listed in --help. Returns why any part of it could not be loaded."""
    if not load:
        sub.add_parser(name, help=TOOLS[name], add_help=False)
        return []
    return importlib.import_module(REGISTRY).add_parser(sub, name)
