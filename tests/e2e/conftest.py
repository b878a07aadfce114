"""End-to-end fixtures: a real model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from ghost_lsp.paths import SHIPPED_MODEL

SHIPPED = SHIPPED_MODEL


@pytest.fixture(scope="session")
def model_dir(request, tmp_path_factory) -> Path:
    """The shipped model if it is built, else a real ONNX model with random weights
    (shared with the engine tests when their fixture is there: built once per session)."""
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    try:
        return Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        from ghost_lsp.tools.modelkit.tiny import build_tiny_model

        return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(autouse=True)
def _close_documents_after_each_test():
    """Each test starts with no documents left open by the ones before (see test_server._OPENED)."""
    yield
    from test_server import close_opened_docs

    close_opened_docs()
