"""The settings' last layers, per workspace: the workspace's `.ghostignore` and the A/B variant.

Settings come in layers, later overriding earlier: defaults → `--config FILE` →
initializationOptions → workspace/didChangeConfiguration (core.py), then, for the workspace
the server serves, its `.ghostignore` globs are added to `exclude` and its A/B variant's
overrides applied (ab.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ghost_lsp.settings.ab import choose

GHOSTIGNORE = ".ghostignore"


def ghostignore(root: str | None) -> tuple[str, ...]:
    """Globs from <root>/.ghostignore (gitignore-like: one per line, # comments)."""
    if not root:
        return ()
    try:
        text = (Path(root) / GHOSTIGNORE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ()
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def effective_settings(settings, root: str | None, install_key: str):
    """(settings with .ghostignore globs and the A/B variant applied, variant name, warnings).
    The variant is keyed on the workspace root, else on `install_key`."""
    extra = ghostignore(root)
    if extra:
        settings = replace(settings, exclude=tuple(settings.exclude) + extra)
    return choose(settings, root or install_key)
