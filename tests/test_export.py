"""export_onnx: optimum export + int8 + validation against PyTorch + packaging; the CLI command."""

import argparse
import json

import numpy as np
import pytest

from ghost_lsp.engine.onnx import OnnxEngine
from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.tools.modelkit import export as ex
from ghost_lsp.types import SamplingParams

pytestmark = pytest.mark.slow


def test_llama_folder_is_packaged_and_validated(tiny_model_dir):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]
    m = Manifest.load(tiny_model_dir)
    assert (m.architecture, m.context_length, m.quantization) == ("llama", 256, "int8-dynamic")
    assert m.fim and m.family == "starcoder"
    v = m.info["validation"]
    assert v["fp32_ok"] and v["fp32_max_abs_logit_diff"] < 1e-3
    assert v["int8_ok"] and v["int8_greedy_agreement"] >= 0.9


def test_fp32_export_is_marked_unquantized_and_smaller_int8(tiny_model_dir, tiny_model_dir_fp32):
    m = Manifest.load(tiny_model_dir_fp32)
    assert m.quantization == "none" and "int8_greedy_agreement" not in m.info["validation"]
    assert (tiny_model_dir / "model.onnx").stat().st_size < 0.6 * (tiny_model_dir_fp32 / "model.onnx").stat().st_size


def test_gpt2_through_the_cli(tmp_path, capsys):
    from ghost_lsp.tools.modelkit.tiny import build_tiny_hf

    hf = build_tiny_hf(tmp_path / "hf", "gpt2")
    parser = argparse.ArgumentParser(prog="ghost-lsp model")
    ex.add_model_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", str(hf), str(tmp_path / "out"), "--quantize", "int8", "--name", "g2"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds only the JSON report
    assert report["ok"] and report["int8_greedy_agreement"] >= 0.9
    m = Manifest.load(tmp_path / "out")
    assert (m.name, m.architecture, m.context_length) == ("g2", "gpt2", 256)
    # The engine builds inputs from whatever this graph declares.
    eng = OnnxEngine(tmp_path / "out")
    c = eng.generate("def f():\n    ", SamplingParams(max_new_tokens=5))
    assert len(c.token_ids) >= 1 and c.finish_reason in ("length", "eos")


def _negate_int8_weights(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and np.prod(init.dims) > 100:
            arr = numpy_helper.to_array(init)
            flipped = np.clip(-arr.astype(np.int16), -127, 127).astype(np.int8)
            init.CopyFrom(numpy_helper.from_array(flipped, init.name))
    onnx.save(model, str(path))


def _perturb_fp32_weights(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(
                (arr + rng.normal(0, 0.01, arr.shape)).astype(np.float32), init.name))
    onnx.save(model, str(path))


def test_broken_int8_model_is_caught(tiny_hf_llama, tmp_path, monkeypatch):
    real = ex._quantize

    def broken(src, dst):
        real(src, dst)
        _negate_int8_weights(dst)
        return dst

    monkeypatch.setattr(ex, "_quantize", broken)
    with pytest.raises(ex.ExportValidationError, match="agreement") as err:
        ex.export_onnx(tiny_hf_llama, tmp_path / "out")
    assert err.value.report["int8_greedy_agreement"] < 0.9
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_broken_fp32_export_is_caught(tiny_hf_llama, tmp_path, monkeypatch):
    real = ex._run_optimum_export

    def broken(hf_dir, work):
        path = real(hf_dir, work)
        _perturb_fp32_weights(path)
        return path

    monkeypatch.setattr(ex, "_run_optimum_export", broken)
    with pytest.raises(ex.ExportValidationError, match="logits differ") as err:
        ex.export_onnx(tiny_hf_llama, tmp_path / "out", quantize="none")
    assert err.value.report["fp32_max_abs_logit_diff"] > 1e-3


def test_bad_arguments_fail_early(tiny_hf_llama, tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        ex.export_onnx(tiny_hf_llama, tmp_path / "o", quantize="int4")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        ex.export_onnx(tiny_hf_llama, tmp_path / "o", tokenizer_json=tmp_path / "nope.json")
