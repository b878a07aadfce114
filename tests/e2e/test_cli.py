"""`ghost-lsp complete`: the pipeline without an editor, on a real model."""

import json
import subprocess
import sys

import pytest

from ghost_lsp import cli
from ghost_lsp.cli import common

SOURCE = "import os\n\n\ndef add(a, b):\n    return \n"


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(SOURCE)
    return path


@pytest.fixture
def quiet_logging(monkeypatch):
    monkeypatch.setattr(common, "setup_logging", lambda *a: None)  # leave pytest's handlers alone


def test_complete_json_on_a_real_model(model_dir, sample):
    out = subprocess.run(
        [sys.executable, "-m", "ghost_lsp.cli", "complete", str(sample), "--line", "5", "--col", "12",
         "--model", str(model_dir), "--json", "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()  # one JSON object, nothing else on stdout
    result = json.loads(line)
    assert (result["line"], result["col"]) == (5, 12)
    assert result["model_id"]
    if result["text"] is not None:  # a random-weight model may have nothing worth showing
        assert result["text"].strip()
        assert {"prefill_ms", "decode_ms", "filters_ms", "total_ms"} <= set(result["timings_ms"])


def test_complete_text_output(model_dir, sample, quiet_logging, capsys):
    assert cli.main(["complete", str(sample), "--line", "5", "--col", "12", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "total" in out or out.startswith("(no suggestion")


@pytest.mark.parametrize("args,message", [
    (["--line", "9", "--col", "1"], "--line 9 is outside"),
    (["--line", "5", "--col", "40"], "--col 40 is outside"),
    (["--line", "0", "--col", "1"], "--line 0 is outside"),
])
def test_complete_bad_position(sample, quiet_logging, capsys, args, message):
    assert cli.main(["complete", str(sample), *args]) == 1
    assert message in capsys.readouterr().err


def test_complete_missing_model_or_file(sample, tmp_path, quiet_logging, capsys):
    missing = tmp_path / "no-model"
    assert cli.main(["complete", str(sample), "--line", "1", "--col", "1", "--model", str(missing)]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "cannot load the model" in err
    assert cli.main(["complete", str(tmp_path / "nope.py"), "--line", "1", "--col", "1"]) == 1
    assert "cannot read" in capsys.readouterr().err
