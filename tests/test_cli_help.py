"""Every command of `ghost-lsp`, and every subcommand under it, answers --help."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from ghost_lsp.cli import build_parser, main
from ghost_lsp.cli.tools import TOOLS


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:  # argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


TOP = _subcommands(build_parser()[0])


def test_the_command_line_lists_every_command():
    assert {"serve", "complete", "prompt", "stats", "export", "serve-model"} | set(TOOLS) == set(TOP)


@pytest.mark.parametrize("command", TOP)
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ghost-lsp {command}")
    parser = build_parser(command if command in TOOLS else None)[0]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for child in _subcommands(sub):
        assert main([command, child, "--help"]) == 0, (command, child)
        assert capsys.readouterr().out.startswith(f"usage: ghost-lsp {command} {child}")


def test_the_console_script_and_module_answer_help():
    script = shutil.which("ghost-lsp")
    runs = [[sys.executable, "-m", "ghost_lsp.cli", "--help"]] + ([[script, "--help"]] if script else [])
    for argv in runs:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("usage: ghost-lsp"), (argv, r.stderr)
