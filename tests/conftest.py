# --- tiny real models (engine/export tests; usable by any test needing a model folder) -----
# Session-scoped: torch/transformers import once, each model is built and exported once.
import pytest as _pytest


@_pytest.fixture(scope="session")
def tiny_hf_llama(tmp_path_factory):
    """A random tiny LlamaForCausalLM (+ tiny byte-level BPE with FIM tokens) in HF format."""
    from ghost_lsp.tools.modelkit.tiny import build_tiny_hf
    return build_tiny_hf(tmp_path_factory.mktemp("tiny-hf-llama"), "llama")


@_pytest.fixture(scope="session")
def tiny_model_dir(tiny_hf_llama, tmp_path_factory):
    """A ghost-lsp model folder (int8) exported from tiny_hf_llama through export_onnx."""
    from ghost_lsp.tools.modelkit.export import export_onnx
    out = tmp_path_factory.mktemp("tiny-model-int8")
    export_onnx(tiny_hf_llama, out, quantize="int8", manifest_fields={"name": "tiny-llama"})
    return out


@_pytest.fixture(scope="session")
def tiny_model_dir_fp32(tiny_hf_llama, tmp_path_factory):
    """The same tiny Llama, unquantized: matches PyTorch token for token.

    Built through build_tiny_model (seeded, so the weights equal tiny_hf_llama's): the parity
    test then also proves the helper other tests use is reproducible.
    """
    from ghost_lsp.tools.modelkit.tiny import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-fp32"), "llama", quantize=None)
