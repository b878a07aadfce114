"""The whole model recipe at toy size: corpus → tokenizer → teacher → distilled student → ONNX int8 → engine."""

import json

import pytest

from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

pytestmark = pytest.mark.slow


def test_tiny_train_distil_export_quantize_load(tmp_path):
    pytest.importorskip("torch")
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.tools.modelkit.export import export_onnx
    from ghost_lsp.tools.modelkit.tokenizer import save_tokenizer, train_tokenizer
    from ghost_lsp.tools.modelkit.train import TrainConfig, train
    from ghost_lsp.types import SamplingParams

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [TINY_CORPUS.replace("fibonacci", f"fib{i}") for i in range(6)]
    (corpus / "train.jsonl").write_text("".join(json.dumps({"package": "p", "path": f"{i}.py", "text": d}) + "\n"
                                                for i, d in enumerate(docs[:5])))
    (corpus / "valid.jsonl").write_text(json.dumps({"package": "v", "path": "v.py", "text": docs[5]}) + "\n")
    tok_path = save_tokenizer(train_tokenizer(docs[:5], vocab_size=400), tmp_path / "tok")

    common = dict(context_length=64, batch_size=4, max_steps=25, warmup_steps=5, eval_every=25, eval_windows=4,
                  bf16=False, threads=1, lr=1e-2)
    teacher = train(TrainConfig(name="t", hidden_size=48, num_layers=2, num_heads=2, num_kv_heads=2,
                                intermediate_size=96, **common), corpus, tok_path, tmp_path / "teacher", progress=False)
    student = train(TrainConfig(name="s", hidden_size=24, num_layers=1, num_heads=2, num_kv_heads=2,
                                intermediate_size=48, teacher=str(tmp_path / "teacher"), **common),
                    corpus, tok_path, tmp_path / "student", progress=False)
    assert teacher["steps"] == 25 and student["steps"] == 25
    assert student["params"] < teacher["params"]
    assert student["val_loss"] < 6.0  # log(400) ≈ 6.0: it learned something from 25 steps

    for f in (tmp_path / "tok").iterdir():
        (tmp_path / "student" / f.name).write_bytes(f.read_bytes())
    report = export_onnx(tmp_path / "student", tmp_path / "model", quantize="int8", min_agreement=0.5,
                         manifest_fields={"name": "tiny-student"})
    assert report["fp32_ok"] and report["fp32_max_abs_logit_diff"] < 1e-3
    engine = OnnxEngine(tmp_path / "model")
    assert engine.manifest.fim and engine.manifest.quantization.startswith("int8")
    cand = engine.generate("def fib0(n):\n    ", SamplingParams(max_new_tokens=8))
    assert cand.token_ids and cand.prompt_tokens > 0
