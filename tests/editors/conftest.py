"""Real-editor tests: a model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from editor_helpers import SHIPPED


@pytest.fixture(scope="session")
def model_dir(request) -> Path:
    """The shipped model if it is built, else the tiny real ONNX model (random weights)."""
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    return Path(request.getfixturevalue("tiny_model_dir"))
