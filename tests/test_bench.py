"""`ghost-lsp bench`: the command runs, reports unavailable rows as skipped with the reason,
and its bandwidth arithmetic adds up (timings themselves are not asserted)."""

import json

import onnx
import pytest
from onnx import numpy_helper

from ghost_lsp.tools.bench.hardware import bytes_per_token, copy_bandwidth_gbs
from ghost_lsp.cli import main


def test_bytes_per_token_counts_every_weight_and_the_kv_cache(tiny_model_dir):
    model = onnx.load(str(tiny_model_dir / "model.onnx"))
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    b0, b10 = bytes_per_token(tiny_model_dir, 1), bytes_per_token(tiny_model_dir, 11)
    assert b0["weight_bytes"] == weights > 0
    assert b10["kv_bytes"] == 11 * b0["kv_bytes"] > 0
    assert b10["total_bytes"] == weights + b10["kv_bytes"]
    assert copy_bandwidth_gbs(mb=8, repeats=2) > 0.1


def test_bench_skips_what_is_missing_and_writes_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "--model", str(tiny_model_dir), "--only", "variants,bandwidth", "--rounds", "1",
               "--new-tokens", "4", "--hf", str(tmp_path / "no-hf"), "--teacher", str(tmp_path / "t"),
               "--student", str(tmp_path / "s"), "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    rows = {r["row"]: r for r in data["results"]}
    assert "no PyTorch checkpoint" in rows["quantization"]["skipped"]
    assert "no HF checkpoint" in rows["distillation"]["skipped"]
    bw = rows["bandwidth"]
    assert bw["best_ms_per_token"] > 0 and bw["measured_ms_per_token"] > 0
    assert bw["times_the_limit"] == pytest.approx(bw["measured_ms_per_token"] / bw["best_ms_per_token"], rel=0.02)
    printed = capsys.readouterr().out
    assert "skipped: no PyTorch checkpoint" in printed and "bandwidth" in printed
    assert data["meta"]["command"].startswith("ghost-lsp")


def test_bench_rejects_unknown_sections(tiny_model_dir, tmp_path, capsys):
    assert main(["bench", "--model", str(tiny_model_dir), "--only", "warp", "--out", str(tmp_path / "x")]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert main(["bench", "--model", str(tmp_path / "none")]) == 1


def test_train_section_times_the_real_step_against_the_matmul_peak(tiny_hf_llama, tiny_model_dir, tmp_path):
    """`bench --only train`: tokens/s of the training step and its FLOP/s as a share of the peak."""
    import json
    import shutil

    pytest.importorskip("torch")
    from ghost_lsp.tools.bench.train_speed import section_train, step_speed

    config = json.loads((tiny_hf_llama / "config.json").read_text())
    r = step_speed(config, "compact", threads=1, batch=2, context=16, steps=2, warmup=1)
    assert r["tokens_per_s"] > 0 and r["params"] > 0
    assert r["gflops"] == pytest.approx(6 * r["params"] * r["tokens_per_s"] / 1e9, rel=0.01, abs=0.1)
    hf = step_speed(config, "hf", threads=1, batch=2, context=16, steps=2, warmup=1)
    assert hf["params"] == r["params"]  # the same model, two definitions
    # a folder without a checkpoint says so instead of timing something else
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    man = json.loads((bare / "manifest.json").read_text())
    man.setdefault("info", {}).pop("source", None)
    (bare / "manifest.json").write_text(json.dumps(man))
    assert "skipped" in section_train(bare)[0]
    folder = tiny_model_dir  # its manifest names the PyTorch folder it was exported from
    rows = section_train(folder, batch=1, threads_list=(1,), impls=("compact",))
    assert len(rows) == 1 and rows[0]["row"] == "train" and 0 < rows[0]["share_of_peak"]


def test_pipeline_section_summaries():
    from ghost_lsp.tools.bench.pipeline import _drafts, _split
    from ghost_lsp.tools.bench.speed import _table
    from ghost_lsp.types import Candidate

    def cand(tokens, decode_ms, model_ms, calls, drafted=0, accepted=0):
        return Candidate(text="x", token_ids=tokens, decode_ms=decode_ms,
                         decode_info={"decode_calls": calls, "model_ms": model_ms, "draft_tokens": drafted,
                                      "draft_accepted": accepted})

    off = cand([1, 2, 3, 4], 8.0, 6.0, 4)
    assert _split(off) == (1.5, 0.5, 4)  # model ms per step, overhead ms per token, tokens
    on = cand([1, 2, 3, 4], 4.0, 3.0, 1, drafted=6, accepted=3)
    d = _drafts([(off, on), (off, cand([1, 2, 3, 5], 4.0, 3.0, 2, drafted=2, accepted=1))], 8)
    assert d["speedup"] == 2.0 and d["identical"] == 0.5 and d["acceptance"] == 0.5
    assert d["model_calls_per_token_off"] == 1.0 and d["model_calls_per_token_on"] == 0.375
    row = {"row": "pipeline", "requests": 2, "drafts": d,
           "completer": {"model_ms_per_step": 1.5, "overhead_ms_per_token": 0.3, "overhead_pct_of_step": 20.0,
                         "overhead_pct_per_request": 20.0, "tokens": 8},
           "bare_engine": {"model_ms_per_step": 1.5, "overhead_ms_per_token": 0.1, "overhead_pct_of_step": 6.7,
                           "overhead_pct_per_request": 6.7, "tokens": 8}}
    text = _table([row])
    assert "20.0 % of a step" in text and "drafts of 8" in text and "x2.0" in text


def test_typing_section_counts_the_prompt_tokens_each_keystroke_runs():
    """Typing deep in a long file, the first keystroke prefills the window and the rest run a few
    tokens each (KV reuse with the anchored prefix window); the counts are the engine's own."""
    from ghost_lsp.paths import REPO
    from ghost_lsp.tools.bench.typing import _deep_lines, typing_run

    body = "".join(f"def handler_{i}(request, value_{i}):\n    total = value_{i} * {i} + len(request)\n"
                   f"    return total\n\n" for i in range(300))
    assert len(body) > 12_000
    r = typing_run(REPO / "models" / "ghost-py-base", [("long.py", body)], threads=1, lines_per_file=2, seed=1)
    (_, lines, start), = _deep_lines([("long.py", body)], 2, 1)
    assert start * 20 > 8_000  # past the first 8,000 characters
    assert r["files"] == 1 and r["requests"] == len(lines[start]) + len(lines[start + 1]) + 2  # one per key
    assert r["prompt_tokens_run_max"] > 100  # the cold first keystroke
    assert r["share_over_100"] * r["requests"] <= 2
    assert r["prompt_tokens_run_p50"] <= 2
