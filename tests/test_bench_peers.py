"""ghost-lsp bench --peers: peers reported as skipped with a reason, the fp32 logits gate, GGUF."""

import sys

import numpy as np
import pytest

from ghost_lsp.tools.bench import peer_models as pm
from ghost_lsp.tools.bench import peers as bp

FAST = (("fp32 fused", {"graph": "fused", "quantize": "none"}),
        ("int8 fused (MatMulNBits)", {"graph": "fused", "quantize": "int8-nbits"}))


def test_logits_check_passes_close_and_fails_far_or_misshapen():
    ref = np.linspace(-3, 3, 50, dtype=np.float32)
    assert bp.logits_check(ref, ref + 1e-4)["ok"]
    far = bp.logits_check(ref, ref + np.where(np.arange(50) == 7, 0.5, 0.0))
    assert not far["ok"] and far["max_abs_diff"] == pytest.approx(0.5)
    assert not bp.logits_check(ref, ref[:40])["ok"]
    assert not bp.logits_check(ref, None)["ok"]


def test_genai_builder_missing_is_a_reason(monkeypatch, tmp_path):
    monkeypatch.delenv(pm.GENAI_BUILDER_ENV, raising=False)
    py, why = pm.genai_builder_python(None)
    assert py is None and "transformers>=5" in why
    py, why = pm.genai_builder_python(str(tmp_path / "nope" / "python"))
    assert py is None and "does not exist" in why


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """2 layers, dims multiples of 32 (GGUF blocks), 2 query heads per KV head."""
    from ghost_lsp.tools.modelkit.tiny import build_tiny_hf

    tok = build_tiny_hf(tmp_path_factory.mktemp("tok"), "llama") / "tokenizer.json"
    return pm.build_random_llama(tmp_path_factory.mktemp("small"), tok, 64, hidden_size=64,
                                 intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)


def test_unavailable_peers_are_skipped_with_reasons(small_llama, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    res = bp.bench_model("small", small_llama, small_llama / "tokenizer.json", tmp_path, threads=1, rounds=1,
                         n_prompt=24, n_new=4, genai_python=None, genai_why="no builder here",
                         peers={"llama.cpp", "onnxruntime-genai"}, ghost_formats=FAST)
    skipped = {s["engine"]: s["reason"] for s in res["skipped"]}
    assert "llama-cpp-python not installed" in skipped["llama.cpp"]
    assert skipped["onnxruntime-genai"] in ("no builder here",) or "not installed" in skipped["onnxruntime-genai"]
    rows = {(r["engine"], r["format"]) for r in res["rows"]}
    assert rows == {("pytorch", "fp32"), ("ghost-lsp", "fp32 fused"), ("ghost-lsp", "int8 fused (MatMulNBits)")}
    check = next(c for c in res["checks"] if c["engine"] == "ghost-lsp")
    assert check["ok"] and check["max_abs_diff"] < 1e-4
    fp32 = next(r for r in res["rows"] if r["format"] == "fp32 fused")
    assert fp32["greedy_prefix_agreement"] == 1.0 and fp32["prefill_ms"] > 0 and fp32["e2e_4_ms"] >= fp32["prefill_ms"]
    assert "\n  skipped: llama.cpp" in bp.table(res)


def test_engine_whose_fp32_logits_disagree_is_not_timed(small_llama, tmp_path, monkeypatch):
    real = bp._ghost_runner

    def off_by_a_bit(folder, fmt, threads):
        r = real(folder, fmt, threads)
        prefill = r.prefill
        r.prefill = lambda ids: prefill(ids) + 0.01
        return r

    monkeypatch.setattr(bp, "_ghost_runner", off_by_a_bit)
    res = bp.bench_model("small", small_llama, small_llama / "tokenizer.json", tmp_path, threads=1, rounds=1,
                         n_prompt=24, n_new=4, genai_python=None, genai_why="-", peers=set(),
                         ghost_formats=FAST[:1])
    assert [r["engine"] for r in res["rows"]] == ["pytorch"]
    assert any(s["engine"] == "ghost-lsp" and "logits check failed" in s["reason"] for s in res["skipped"])


def test_gguf_writer_quantizes_and_ties_like_llama_cpp_expects(small_llama, tmp_path):
    import gguf

    info = pm.write_gguf(small_llama, tmp_path / "m-q8.gguf", "q8_0")
    assert info["fallback_f16"] == []
    reader = gguf.GGUFReader(str(tmp_path / "m-q8.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.1.ffn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied: llama.cpp reads token_embd


def test_gguf_f32_logits_match_pytorch_in_llama_cpp(small_llama, tmp_path):
    # llama-cpp-python builds from source (~4-8 min): in the llama extra, and so in bench and dev.
    pytest.importorskip("llama_cpp", reason='llama-cpp-python: pip install -e ".[llama]" (builds from source)')
    import torch
    from transformers import AutoModelForCausalLM

    pm.write_gguf(small_llama, tmp_path / "m-f32.gguf", "f32")
    ids = list(range(3, 40))
    model = AutoModelForCausalLM.from_pretrained(small_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].numpy()
    runner = bp._llama_cpp_runner(tmp_path / "m-f32.gguf", "f32", 1, 64, f32_kv=True)
    try:
        assert bp.logits_check(ref, runner.prefill(ids))["ok"]
    finally:
        runner.close()


def test_unknown_peer_or_model_names_are_refused(capsys):
    from ghost_lsp import cli

    assert cli.main(["bench", "--peers", "--peer-models", "shipped,huge", "--out", "/dev/null"]) == 2
    assert "unknown name(s) ['huge']" in capsys.readouterr().err
    assert cli.main(["bench", "--peers", "--peer-list", "vllm", "--out", "/dev/null"]) == 2


def test_peers_without_a_checkpoint_fail_with_one_clear_line(tmp_path, capsys):
    """A model folder whose checkpoint is missing: exit 2 and one line naming what is missing."""
    import argparse
    import shutil

    from ghost_lsp.paths import SHIPPED_MODEL
    from ghost_lsp.tools.bench.peers import run_peers

    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, folder, ignore=shutil.ignore_patterns("checkpoint"))
    (folder / "manifest.json").write_text((folder / "manifest.json").read_text().replace(
        '"hf_dir": "', '"hf_dir": "gone/'))
    args = argparse.Namespace(model=str(folder), threads=1, hf=None, peer_list=None, genai_builder=None,
                              peer_models="shipped", rounds=1, new_tokens=4, out=str(tmp_path / "o.json"))
    assert run_peers(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no PyTorch checkpoint" in err[0] and "--hf DIR" in err[0]
    assert not (tmp_path / "o.json").exists()


def test_llama_cpp_runs_a_quantized_gguf_in_many_token_batches(small_llama, tmp_path):
    """q8_0 / q4_0 prefill in one batch: on AMX CPUs llama.cpp's repacked layouts crashed
    (SIGSEGV) here; the runner loads without them there. A subprocess, so a crash is a failure."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the llama/bench extras (builds from source)")
    import subprocess

    for q in ("q8_0", "q4_0"):
        pm.write_gguf(small_llama, tmp_path / f"m-{q}.gguf", q)
    code = ("import sys; from pathlib import Path; from ghost_lsp.tools.bench import peers as bp\n"
            "for q in ('q8_0', 'q4_0'):\n"
            "    r = bp._llama_cpp_runner(Path(sys.argv[1]) / f'm-{q}.gguf', q, 1, 64)\n"
            "    x = r.prefill(list(range(3, 40)))\n"
            "    assert x.ndim == 1 and len(x) > 40 and bool((abs(x) < 1e4).all())\n"
            "    r.close()\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]
