"""Reliability fixtures: a real model folder, a server process per test module, and the
figures the suite reports at the end (messages fuzzed, faults survived, events lost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.wire import FIGURES
from ghost_lsp.paths import SHIPPED_MODEL

SHIPPED = SHIPPED_MODEL


@pytest.fixture(scope="session")
def model_dir(request, tmp_path_factory) -> Path:
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    return Path(request.getfixturevalue("tiny_model_dir"))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.write_line(
            "reliability: " + ", ".join(f"{k}={v}" for k, v in sorted(FIGURES.items())))
