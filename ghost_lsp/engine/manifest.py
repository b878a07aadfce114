"""The model folder format (`manifest.json`), version 1.

A model folder holds:
  manifest.json   this schema
  model.onnx      decoder with past key/values, as optimum exports `text-generation-with-past`
                  (inputs input_ids, attention_mask, [position_ids], past_key_values.{i}.key/value;
                  outputs logits, present.{i}.key/value)
  tokenizer.json  a `tokenizers` tokenizer
  README.md       the model card (optional for user models)

or, for llama.cpp (engine/llamacpp.py), `"engine": "llama.cpp"` and a `.gguf` file (`gguf`, or
the folder's one *.gguf) instead of model.onnx + tokenizer.json; every other field may be left
out, as it is read from the GGUF file (a field given here wins).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "ghost-lsp-model/1"


@dataclass
class Manifest:
    name: str
    family: str = "plain"  # prompt family: picks prompts/<family>.toml ("plain" = left-to-right)
    architecture: str = "llama"
    context_length: int = 256
    onnx: str = "model.onnx"
    tokenizer: str = "tokenizer.json"
    quantization: str = "none"  # "none" | "int8-dynamic"
    fim: bool = False
    eos_token: str = "<|endoftext|>"
    fim_prefix: str = "<fim_prefix>"
    fim_suffix: str = "<fim_suffix>"
    fim_middle: str = "<fim_middle>"
    pad_token: str = "<|pad|>"
    # the model family's own end and separator tokens (e.g. <|file_sep|>): a completion stops
    # at them whatever the template says (`model export` writes them; empty = the template's)
    stop_tokens: list = field(default_factory=list)
    # free-form provenance: corpus, training, validation figures
    info: dict = field(default_factory=dict)
    format: str = FORMAT
    engine: str = "onnx"  # "onnx" | "llama.cpp"
    gguf: str = ""  # llama.cpp: the GGUF file in the folder ("" = its one *.gguf)

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        data = cls.read(folder)
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise ValueError(f"{Path(folder) / 'manifest.json'}: {e}") from None

    @staticmethod
    def read(folder: str | Path) -> dict:
        """The manifest's fields as written (ValueError if it is missing or not ours)."""
        path = Path(folder) / "manifest.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: no manifest.json (not a ghost-lsp model folder)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable manifest: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: expected format {FORMAT!r}, found {data.get('format')!r}"
                             if isinstance(data, dict) else f"{path}: manifest is not an object")
        return data

    def save(self, folder: str | Path) -> None:
        data = asdict(self)
        if self.engine == "onnx":  # ONNX folders read as they did before the field existed
            del data["engine"], data["gguf"]
        Path(folder, "manifest.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.quantization}"
