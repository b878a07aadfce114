"""`ghost-lsp finetune`: a tiny export → a fine-tuned, validated int8 model folder whose
manifest names its parent and data; rejects are not trained on; bad input is one clear line."""

import json
from pathlib import Path

from ghost_lsp.tools.finetune import encode, read_export
from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

LINES = [ln for ln in TINY_CORPUS.split("\n") if ln.strip().startswith(("return", "self.", "for ", "if "))]


def write_export(path: Path, n: int = 24) -> Path:
    recs = []
    for i, line in enumerate(LINES[:n]):
        at = TINY_CORPUS.index(line)
        indent = len(line) - len(line.lstrip())
        label = ("accepted", "typed_anyway", "partially_accepted")[i % 3]
        recs.append({"id": f"r{i}", "prompt": TINY_CORPUS[max(0, at - 300):at + indent], "completion": line.strip(),
                     "label": label, "final_text": None})
    recs.append({"id": "rej", "prompt": "def f():\n    ", "completion": "pass pass pass", "label": "rejected",
                 "final_text": None})
    recs.append({"id": "noprompt", "prompt": None, "completion": "x = 1", "label": "accepted", "final_text": None})
    recs.append({"id": "kept", "prompt": "def g():\n    ", "completion": "return 1", "label": "accepted",
                 "final_text": "return 2"})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def test_read_export_uses_positives_and_keeps_rejects_apart(tmp_path):
    ds = read_export(write_export(tmp_path / "e.jsonl"))
    labels = {e.label for e in ds.train + ds.valid}
    assert labels == {"accepted", "typed_anyway", "partially_accepted"}
    assert [e.target for e in ds.rejected] == ["pass pass pass"]
    assert ds.counts["skipped_no_prompt"] == 1
    assert any(e.target == "return 2" for e in ds.train + ds.valid)  # what the user kept is the target


def test_encode_marks_the_first_target_token(tiny_model_dir):
    from tokenizers import Tokenizer

    from ghost_lsp.tools.finetune import Example

    tok = Tokenizer.from_file(str(Path(tiny_model_dir) / "tokenizer.json"))
    ids, first = encode(tok, Example("x" * 2000 + "\n    ", "return a + b", "accepted"), 64)
    assert len(ids) <= 64 and 0 < first < len(ids)
    assert "return" in tok.decode(ids[first:])


def test_finetune_round_trip(tiny_model_dir, tmp_path, capsys):
    from ghost_lsp.cli import main
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.types import SamplingParams

    export = write_export(tmp_path / "export.jsonl")
    out = tmp_path / "tuned"
    rc = main(["finetune", str(export), "--model", str(tiny_model_dir), "--out", str(out), "--steps", "25",
               "--lr", "3e-3", "--batch", "8", "--threads", "1",
               # a random-weight model's logit margins shrink as it learns: int8 flips more near-ties
               "--min-agreement", "0.75"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 25
    # it learnt the accepted text: the target loss fell
    assert summary["after"]["valid_target_loss"] < summary["before"]["valid_target_loss"] - 0.2
    man = Manifest.load(out)
    assert man.quantization == "int8-dynamic" and man.name == "tiny-llama-ft"
    assert man.info["parent"]["name"] == "tiny-llama"
    assert man.info["finetune"]["data"]["records"]["rejected"] == 1
    assert man.info["finetune"]["data"]["sha256"] and man.info["validation"]["int8_ok"]
    assert (out / "hf" / "config.json").is_file()  # the next round starts from here
    assert Manifest.load(out).info["source"]["hf_dir"] == str(out / "hf")
    engine = OnnxEngine(out)
    assert engine.generate("def add(a, b):\n    ", SamplingParams(max_new_tokens=4)).token_ids


def test_finetune_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    from ghost_lsp.cli import main

    assert main(["finetune", str(tmp_path / "missing.jsonl"), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "o")]) == 1
    assert "no such export" in capsys.readouterr().err
    only_rejects = tmp_path / "rej.jsonl"
    only_rejects.write_text(json.dumps({"id": "1", "prompt": "x", "completion": "y", "label": "rejected"}) + "\n")
    assert main(["finetune", str(only_rejects), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 1
    assert "nothing to fine-tune on" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["finetune", str(bad), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
