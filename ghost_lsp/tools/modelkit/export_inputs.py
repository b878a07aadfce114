"""What `model export` checks before it starts: the folder, the tokenizer, the architecture, memory.

Each refusal is an ExportInputError whose message says what is wrong and what to do, so a user
bringing their own checkpoint learns in a second what would otherwise fail minutes into an
export (or take the machine down swapping).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# optimum-onnx 0.1.0 has no ONNX config for these; export.py lends them a compatible one.
OPTIMUM_EXTRA = {"starcoder2": "mistral"}
# Peak memory of an optimum export, in fp32 copies of the weights (the PyTorch model, the
# exporter's traced graph, the ONNX model it writes and the check's session), two more copies of
# the embedding table (a tied LM head is written out as its own weight), and the interpreter.
# Measured (ru_maxrss, `bench --realsize --realsize-engines optimum`, quiet machine): 3.53 GiB at
# tiny_starcoder's 0.16 B, 9.89 GiB at Qwen2.5-Coder-0.5B (its 136 M-parameter table is 28 % of
# it), 18.75 GiB at SantaCoder's 1.12 B; this reckons 3.9, 9.8 and 19.6 GiB (three copies and
# nothing else, the earlier estimate, said 5.5 and 12.6 GiB for the last two).
FP32_COPIES = 4.25
# The fused export streams (llama_graph.py writes a tensor at a time; export_check.py holds one
# model at a time): its peak is the check's PyTorch load, one fp32 copy while transformers maps
# the checkpoint it widens (its bytes on disk), plus the interpreter, torch and onnxruntime and
# a tensor in flight (RUNTIME_BASE + the embedding table). Measured (ru_maxrss, `bench --realsize`,
# random bf16 checkpoints) against this estimate: Qwen2.5-Coder-0.5B 4.11 GiB (4.27),
# TinyLlama-1.1B 6.50 GiB (7.39), Qwen2.5-Coder-1.5B 8.97 GiB (10.49).
RUNTIME_BASE = 1 << 30


class ExportInputError(ValueError):
    """The source folder cannot be exported as it is; the message says why and what to do."""


class MissingTokenizer(ExportInputError, FileNotFoundError):
    """No tokenizer.json where one is needed."""


def check_folder(hf_dir: Path, tokenizer_json: str | Path | None) -> tuple[dict, Path]:
    """The folder's config.json (as a dict) and the tokenizer.json to ship."""
    if not hf_dir.is_dir():
        raise ExportInputError(f"{hf_dir}: no such folder")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportInputError(f"{hf_dir}: no config.json - not a Hugging Face model folder "
                               "(download it with `huggingface-cli download MODEL --local-dir DIR`)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportInputError(f"{cfg_path}: unreadable: {e}") from None
    if tokenizer_json and not Path(tokenizer_json).is_file():
        raise MissingTokenizer(f"{tokenizer_json}: tokenizer file not found")
    tok_path = Path(tokenizer_json) if tokenizer_json else hf_dir / "tokenizer.json"
    if not tok_path.is_file():
        slow = [n for n in ("tokenizer.model", "vocab.json", "tokenizer_config.json") if (hf_dir / n).is_file()]
        hint = (f"it has {', '.join(slow)} only (a slow tokenizer): convert it once with "
                f"`python -c \"from transformers import AutoTokenizer as T; "
                f"T.from_pretrained('{hf_dir}').save_pretrained('{hf_dir}')\"`" if slow
                else "pass --tokenizer PATH/tokenizer.json")
        raise MissingTokenizer(f"{tok_path}: no tokenizer.json; {hint}")
    return config, tok_path


def check_architecture(model_type: str, graph: str, fused_types: tuple[str, ...]) -> None:
    """Refuse a model type transformers does not know, or that the chosen graph cannot export."""
    from transformers import CONFIG_MAPPING

    if not model_type:
        raise ExportInputError("config.json has no model_type: cannot tell the architecture")
    if model_type not in CONFIG_MAPPING:
        raise ExportInputError(f"unknown architecture {model_type!r}: transformers does not know it "
                               "(models that need trust_remote_code are not exported)")
    if graph == "fused":
        if model_type not in fused_types:
            from ghost_lsp.tools.modelkit.llama_graph import REFUSED

            why = f" ({REFUSED[model_type]})" if model_type in REFUSED else ""
            raise ExportInputError(f"--graph fused builds {', '.join(fused_types)} only, not {model_type!r}{why}; "
                                   "use --graph optimum")
        return
    import optimum.exporters.onnx.model_configs  # noqa: F401 - fills the exporter's registry
    from optimum.exporters.tasks import TasksManager

    if model_type in OPTIMUM_EXTRA:
        return
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except (KeyError, ValueError):
        tasks = {}
    if "text-generation-with-past" not in tasks:
        raise ExportInputError(f"architecture {model_type!r} has no ONNX export for text generation "
                               "with a KV cache in optimum")


def parameter_count(config) -> int:
    """Parameters of the model `config` describes, counted without allocating them."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def checkpoint_bytes(hf_dir: Path | None, n: int) -> int:
    """Bytes of the weight files transformers loads from the folder (its safetensors, else its
    pytorch_model*.bin: a folder holding both maps one set), bf16 for n parameters when there
    are none to see."""
    from ghost_lsp.tools.modelkit.weights import weight_files

    files = [] if hf_dir is None else weight_files(Path(hf_dir)) or sorted(Path(hf_dir).glob("pytorch_model*.bin"))
    return sum(p.stat().st_size for p in files) if files else 2 * n


def memory_needed(config, n: int, graph: str, hf_dir: Path | None = None) -> tuple[int, str]:
    """Bytes an export of n parameters needs at its peak, and how that was reckoned."""
    table = int(config.vocab_size) * int(config.hidden_size) * 4
    if graph != "fused":
        return (int(n * 4 * FP32_COPIES) + 2 * table + RUNTIME_BASE,
                f"{FP32_COPIES:g} fp32 copies: PyTorch, the exporter, the ONNX model, the check; "
                "two embedding tables, 1 GiB")
    need = n * 4 + checkpoint_bytes(hf_dir, n) + RUNTIME_BASE + table
    return need, "streamed: the check's fp32 PyTorch model, the checkpoint it reads, an embedding table, 1 GiB"


def check_memory(config, graph: str = "optimum", hf_dir: Path | None = None) -> int | None:
    """Refuse, with the numbers, a model whose export would not fit in the memory free now.
    Returns the parameter count (None when the config cannot be instantiated to count them:
    the export then finds out the usual way)."""
    try:
        n = parameter_count(config)
    except Exception as e:  # noqa: BLE001 - any model class may refuse the meta device
        log.warning("could not count the parameters before the export (%s); memory not checked", e)
        return None
    need, how = memory_needed(config, n, graph, hf_dir)
    have = available_memory()
    if need > have:
        # one decimal unless that shows the two as equal (22.7 GiB needed, 22.7 available)
        digits = 1 if f"{need / 2**30:.1f}" != f"{have / 2**30:.1f}" else 2
        raise ExportInputError(
            f"too big for this machine: {n / 1e9:.2f} B parameters need about {need / 2**30:.{digits}f} GiB to "
            f"export ({how}), and {have / 2**30:.{digits}f} GiB is available; export on a larger machine and copy "
            "the model folder here")
    return n
