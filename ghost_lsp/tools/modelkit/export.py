"""Hugging Face causal LM → validated ghost-lsp model folder (ONNX, optionally int8).

Steps: optimum export (`text-generation-with-past`, one decoder file) → fp32 check against
PyTorch → `onnxruntime.quantization.quantize_dynamic` → greedy agreement check against
PyTorch (export_check.py) → package (model.onnx, tokenizer.json, manifest.json). Nothing is
written to the output folder unless validation passes.

Why plain quantize_dynamic: measured, it kept greedy output identical to
PyTorch where optimum's ORTQuantizer diverged; either way every quantized model is checked.

graph="fused" (Llama, Qwen2, Mistral, Phi-3, Gemma, StarCoder2) replaces the optimum export with
modelkit/llama_graph.py's compact graph (GroupQueryAttention, untied LM head, optional
last-position logits, KV appended in place), written a tensor at a time from the checkpoint, fp32 and quantized alike (so a 1.5 B
model streams; weights over 1 GiB go to model.onnx.data). quantize="int8" makes its MatMuls
DynamicQuantizeMatMul (and the embedding int8); "int8-nbits"/"int4" make them MatMulNBits
(int8/int4 weights, int8 compute: faster decode, slower prefill); see fused_quant.py and
`ghost-lsp bench --peers`. Same validation.
torch/transformers/optimum are imported inside the functions (the server imports nothing here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ghost_lsp.paths import portable
from ghost_lsp.tools.modelkit.export_check import validate
from ghost_lsp.tools.modelkit.export_inputs import (OPTIMUM_EXTRA, ExportInputError, check_architecture,
                                                    check_folder, check_memory)
from ghost_lsp.tools.modelkit.families import FAMILIES, FamilyError, detect_family, shipped_tokenizer
from ghost_lsp.tools.modelkit.llama_graph import MODEL_TYPES

log = logging.getLogger(__name__)

FUSED_TYPES = MODEL_TYPES  # the model types llama_graph.py builds

# Short code-like prompts; any text works since the check compares two runs of one model.
VALIDATION_PROMPTS = [
    "def add(a, b):\n    return",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self",
    "for i in range(10):\n    if i % 2 == 0:\n        print(",
    "# read a file\nwith open(path) as f:\n",
]


class ExportValidationError(RuntimeError):
    """The exported or quantized model does not reproduce the PyTorch model; `.report` says how."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _progress(msg: str) -> None:
    log.info(msg)


def _run_optimum_export(hf_dir: Path, work: Path) -> Path:
    """Export with optimum; return the path of the single decoder-with-past ONNX file."""
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), output=str(work), task="text-generation-with-past",
                no_post_process=True, do_validation=False, device="cpu",
                custom_onnx_configs=_lent_onnx_config(hf_dir))
    candidates = [work / "model.onnx", work / "decoder_with_past_model.onnx"]
    for path in candidates:
        if path.is_file():
            return path
    raise RuntimeError(f"{work}: optimum produced no model.onnx ({sorted(p.name for p in work.iterdir())})")


def _lent_onnx_config(hf_dir: Path) -> dict | None:
    """For a model type optimum has no ONNX config for (export_inputs.OPTIMUM_EXTRA), the config
    of one whose inputs and KV-cache shapes are the same (StarCoder2: Mistral's)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_dir)
    lender = OPTIMUM_EXTRA.get(getattr(config, "model_type", ""))
    if lender is None:
        return None
    import optimum.exporters.onnx.model_configs  # noqa: F401 - fills the registry
    from optimum.exporters.tasks import TasksManager

    make = TasksManager.get_exporter_config_constructor("onnx", model_type=lender, task="text-generation",
                                                         library_name="transformers")
    return {"model": make(config, use_past=True, use_past_in_inputs=True)}


def _quantize(src: Path, dst: Path) -> Path:
    """Dynamic int8 (weights int8, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales: on tiny models per-tensor int8 flipped ~8 % of greedy tokens, per-channel none.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return dst


# quantize= values. "int8" = dynamic int8 on either graph: with the fused graph it gave the
# shortest requests (256-token prompt + 16 or + 64 tokens) of every format `ghost-lsp bench
# --peers` measured; MatMulNBits decodes a little faster but prefills ~1.5-2x slower.
QUANTIZE_CHOICES = ("int8", "int8-dynamic", "int8-nbits", "int4", "none")


def _quant_kind(quantize: str | None, graph: str) -> str | None:
    if quantize in (None, "none"):
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, not {quantize!r}")
    if quantize in ("int4", "int8-nbits") and graph != "fused":
        raise ValueError(f"quantize {quantize!r} (MatMulNBits) needs graph='fused'")
    return {"int8": "int8-dynamic", "int4": "int4-nbits"}.get(quantize, quantize)


def _context_length(config) -> int:
    from ghost_lsp.tools.modelkit.llama_graph import position_limit

    limit = position_limit(config)
    if limit and limit < int(getattr(config, "max_position_embeddings", 0) or 0):
        # A sliding window (beyond it attention is local) or LongRoPE's original length (beyond
        # it PyTorch switches to the long factors): the fused graph stops there, so does the prompt.
        return limit
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def export_onnx(hf_dir: str | Path, out_dir: str | Path, *, quantize: str | None = "int8",
                tokenizer_json: str | Path | None = None, manifest_fields: dict | None = None,
                min_agreement: float = 0.9, logits_atol: float = 1e-3, steps: int = 8,
                prompts: list[str] | None = None, graph: str = "optimum", family: str | None = None) -> dict:
    """Export, validate and package a local Hugging Face causal LM; return the validation report.

    quantize: "int8" (= "int8-dynamic"), "int8-nbits" or "int4" (MatMulNBits, fused graph
    only) or None/"none". graph: "optimum" or "fused" (Llama,
    Qwen2, Mistral, Phi-3, Gemma, StarCoder2: see llama_graph.py). tokenizer_json defaults to
    hf_dir/tokenizer.json.
    manifest_fields override manifest values (name, family, info, ...); `info` is merged.
    family: the prompt family (families.py); None = detected from the tokenizer and config.
    Raises ExportValidationError (out_dir untouched) when fp32 logits differ from PyTorch by
    more than logits_atol, or int8 greedy agreement along PyTorch's greedy path is below
    min_agreement (over `prompts` × `steps`).
    """
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    from ghost_lsp.engine.manifest import Manifest

    t_start = time.perf_counter()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if graph not in ("optimum", "fused"):
        raise ValueError(f"graph must be 'optimum' or 'fused', not {graph!r}")
    quantize = _quant_kind(quantize, graph)
    raw_config, tok_path = check_folder(hf_dir, tokenizer_json)
    check_architecture(str(raw_config.get("model_type", "")), graph, FUSED_TYPES)
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception subclasses
        raise ExportInputError(f"{tok_path}: unreadable tokenizer: {e}") from None
    config = AutoConfig.from_pretrained(hf_dir)
    check_memory(config, graph, hf_dir)
    vocab = tokenizer.get_vocab(with_added_tokens=True)

    def token_name(token_id, fallback):
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        name = tokenizer.id_to_token(token_id) if token_id is not None else None
        return name or fallback

    # Before the export, so a wrong --family fails in a second rather than after minutes.
    det = detect_family(vocab, getattr(config, "model_type", ""), override=family,
                        config_eos=token_name(getattr(config, "eos_token_id", None), None))
    if det.fim:
        _progress(f"family: {det.family.name} ({det.family.title}; {det.reason})")
    else:
        _progress(f"family: plain - no fill-in-the-middle, completions will see only the code before "
                  f"the cursor ({det.reason}); pass --family to choose one")

    # Beside the output folder: a multi-GB data file is then renamed into place, not copied.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ghost-export-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        quant = None
        if graph == "fused":
            from ghost_lsp.tools.modelkit.llama_graph import build_llama_graph

            # Both graphs straight from the checkpoint, a tensor at a time (streams a 1.5 B model).
            _progress(f"writing the fused graph of {hf_dir}")
            fp32 = build_llama_graph(hf_dir, work / "fp32" / "model.onnx", progress=True)
            if quantize:
                _progress(f"writing the {quantize} fused graph")
                quant = build_llama_graph(hf_dir, work / "quant" / "model.onnx", quantize, progress=True)
        else:
            _progress(f"exporting {hf_dir} with optimum")
            fp32 = _run_optimum_export(hf_dir, work / "fp32")
            if quantize:
                _progress(f"quantizing ({quantize})")
                quant = _quantize(fp32, work / "model.quant.onnx")
        _progress("validating against PyTorch")
        ctx = _context_length(config)
        prompts_ids = [tokenizer.encode(p, add_special_tokens=False).ids[-(ctx - steps - 1):]
                       for p in (prompts or VALIDATION_PROMPTS)]
        report = validate(lambda: AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval(),
                          prompts_ids, fp32, quant, steps, logits_atol, min_agreement)
        n_params = report["parameters"]
        report["fp32_bytes"] = sum(p.stat().st_size for p in fp32.parent.glob(fp32.name + "*"))
        if not report["fp32_ok"]:
            raise ExportValidationError(
                f"fp32 ONNX logits differ from PyTorch by {report['fp32_max_abs_logit_diff']:.3g} "
                f"(tolerance {logits_atol})", report)
        if quant is not None and not report["int8_ok"]:
            raise ExportValidationError(
                f"{quantize} greedy agreement {report['int8_greedy_agreement']:.1%} is below "
                f"{min_agreement:.0%}", report)

        final = quant or fp32
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("model.onnx", "model.onnx_data", "model.onnx.data"):
            (out_dir / stale).unlink(missing_ok=True)
        shutil.move(final, out_dir / "model.onnx")
        # Weights in an external file next to the graph (a >2 GB optimum export, a large fused one).
        for ext in (final.with_name(final.name + "_data"), final.with_name(final.name + ".data")):
            if ext.is_file():
                shutil.move(ext, out_dir / ("model.onnx" + ext.name[len(final.name):]))
        family_name = (manifest_fields or {}).get("family") or det.family.name
        adapted = shipped_tokenizer(family_name, tokenizer.to_str())
        if adapted is not None:
            _progress(f"tokenizer.json: SentencePiece's dummy space before the first piece only ({family_name})")
            (out_dir / "tokenizer.json").write_text(adapted, encoding="utf-8")
        elif tok_path.resolve() != (out_dir / "tokenizer.json").resolve():
            shutil.copyfile(tok_path, out_dir / "tokenizer.json")

    fields = dict(manifest_fields or {})
    info = {**fields.pop("info", {}), "validation": report, "graph": graph,
            "source": {"hf_dir": portable(hf_dir), "parameters": n_params}}
    info["family"] = {"detected": det.family.name, "reason": det.reason}
    sentinels = ({"fim_prefix": det.fim_prefix, "fim_suffix": det.fim_suffix, "fim_middle": det.fim_middle}
                 if det.fim else {})
    manifest = Manifest(
        name=fields.pop("name", hf_dir.name),
        family=det.family.name,
        architecture=getattr(config, "model_type", "unknown"),
        context_length=ctx,
        quantization=quantize or "none",
        fim=det.fim,
        eos_token=det.eos_token,
        pad_token="<|pad|>" if "<|pad|>" in vocab
        else token_name(getattr(config, "pad_token_id", None), "<|pad|>"),
        stop_tokens=det.stop_tokens,
        info=info,
        **sentinels,
    )
    for key, value in fields.items():
        if key not in Manifest.__dataclass_fields__:
            raise ValueError(f"unknown manifest field {key!r}")
        setattr(manifest, key, value)
    manifest.save(out_dir)
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    report["model_bytes"] = sum(p.stat().st_size for p in out_dir.glob("model.onnx*"))
    report["out_dir"] = str(out_dir)
    report["family"], report["fim"] = manifest.family, manifest.fim
    report["family_reason"] = det.reason
    _progress(f"wrote {out_dir} ({report['model_bytes'] / 1e6:.1f} MB)")
    return report


# -- command line -------------------------------------------------------------------------

def add_model_export_parser(subparsers) -> argparse.ArgumentParser:
    """Register `export HF_DIR OUT_DIR` on a `ghost-lsp model` subparsers object."""
    p = subparsers.add_parser("export", help="export a local Hugging Face causal LM to a ghost-lsp model folder")
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--quantize", choices=list(QUANTIZE_CHOICES), default="int8",
                   help="int8 = int8-dynamic; int8-nbits and int4 (MatMulNBits) need --graph fused")
    p.add_argument("--graph", choices=["optimum", "fused"], default="optimum",
                   help="fused: compact Llama/Qwen2/Mistral/Phi-3/Gemma/StarCoder2 graph (GroupQueryAttention, "
                        "untied int8 LM head, last-position prefill logits); see ghost-lsp bench --peers")
    p.add_argument("--tokenizer", dest="tokenizer_json", default=None,
                   help="tokenizer.json to ship (default: HF_DIR/tokenizer.json)")
    p.add_argument("--name", default=None, help="model name in the manifest (default: HF_DIR's name)")
    p.add_argument("--family", choices=list(FAMILIES), default=None,
                   help="prompt family (prompts/<family>.toml); default: detected from the tokenizer's "
                        "special tokens and the config (no FIM tokens: plain)")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="fail if int8 greedy agreement with PyTorch is below this (default 0.9)")
    p.set_defaults(func=cmd_model_export)
    return p


def cmd_model_export(args) -> int:
    """Progress to stderr, the validation report as JSON to stdout; exit 1 on failed validation."""
    # Our progress at INFO on stderr; the root logger stays quiet because onnxruntime's
    # quantizer logs one INFO line per tensor there.
    ours = logging.getLogger("ghost_lsp")
    if not ours.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False  # the quantizer calls basicConfig mid-run; avoid double lines
    fields = {"name": args.name} if getattr(args, "name", None) else None
    try:
        # Exporters print chatter; stdout is reserved for the JSON report.
        with contextlib.redirect_stdout(sys.stderr):
            report = export_onnx(args.hf_dir, args.out_dir, quantize=args.quantize,
                                 tokenizer_json=getattr(args, "tokenizer_json", None),
                                 manifest_fields=fields,
                                 min_agreement=getattr(args, "min_agreement", 0.9),
                                 graph=getattr(args, "graph", "optimum"),
                                 family=getattr(args, "family", None))
    except (FamilyError, ExportInputError) as e:
        print(f"export refused: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(e)}, indent=2))
        return 2
    except ExportValidationError as e:
        print(f"export failed validation: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(e), **e.report}, indent=2))
        return 1
    if not report["fim"]:
        print(f"note: exported as family plain: left-to-right, no fill-in-the-middle "
              f"({report['family_reason']}); --family picks another", file=sys.stderr)
    print(json.dumps({"ok": True, **report}, indent=2))
    return 0
