"""Which model family a model belongs to, from its vocabulary and architecture name.

The family decides the prompt template (prompts/<template>.toml) and the manifest's
fill-in-the-middle sentinels, end-of-completion token and stop tokens. It is read from the
tokenizer's special tokens (the only reliable sign of FIM training) and the config's
`model_type` (to tell apart families that share sentinels, e.g. Qwen2.5-Coder and CodeGemma).
A tokenizer without any known FIM sentinels gives `plain` (left-to-right), and says so.

Pure tables and a function, in the runtime because two places need them: the offline export
(tools/modelkit/export.py, through tools/modelkit/families.py) writes the result into a
manifest, and the GGUF engine (engine/llamacpp.py) detects it when it opens a bare .gguf file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str  # the manifest's family = the template prompts/<name>.toml
    title: str  # what it is, for messages
    # FIM sentinels as vocabulary entries: the one before the prefix, the one right after the
    # prefix (where the cursor is: token healing works there), the one that ends the prompt.
    sentinels: tuple[str, str, str] | None = None
    eos: tuple[str, ...] = ()  # end-of-completion candidates, the first one in the vocabulary wins
    stops: tuple[str, ...] = ()  # the family's other end/separator tokens (those in the vocabulary)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # https://github.com/QwenLM/Qwen2.5-Coder (README, "fill in the middle" and repository level)
    Family("qwen", "Qwen2 / Qwen2.5-Coder",
           ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<|endoftext|>",),
           ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>")),
    # https://ai.google.dev/gemma/docs/codegemma/prompt-structure
    Family("codegemma", "CodeGemma",
           ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<|file_separator|>", "<eos>"),
           ("<eos>", "<|file_separator|>")),
    # https://github.com/deepseek-ai/DeepSeek-Coder (README, code insertion)
    Family("deepseek", "DeepSeek-Coder",
           ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), ("<｜end▁of▁sentence｜>",),
           ("<|EOT|>",)),
    # arXiv:2402.19173 (StarCoder2), section on repository context
    Family("starcoder2", "StarCoder2",
           ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|endoftext|>",),
           ("<file_sep>", "<repo_name>", "<fim_pad>")),
    # https://huggingface.co/bigcode/starcoder ; also the project's own ghost-py models
    Family("starcoder", "StarCoder / GPT-BigCode (and ghost-py)",
           ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|endoftext|>",),
           ("<fim_pad>", "<filename>")),
    # https://huggingface.co/bigcode/santacoder: hyphens, not underscores
    Family("santacoder", "SantaCoder",
           ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"), ("<|endoftext|>",),
           ("<fim-pad>",)),
    # https://github.com/meta-llama/codellama (llama/generation.py, infilling_prompt_tokens)
    Family("codellama", "Code Llama",
           ("▁<PRE>", "▁<SUF>", "▁<MID>"), ("▁<EOT>",), ("</s>",)),
    # https://huggingface.co/Salesforce/codegen25-7b-multi (no token before the prefix; the mask
    # is both the hole and the start of the answer; <eom> ends it)
    Family("codegen", "CodeGen2 / CodeGen2.5",
           ("", "<mask_1>", "<mask_1>"), ("<eom>",), ("<|endoftext|>", "<sep>")),
    Family("plain", "left-to-right (no fill-in-the-middle)"),
)}

# Model types with no FIM training at all: Phi-2/3, and plain decoders.
NO_FIM_TYPES = ("phi", "phi3", "mistral", "gpt2", "gpt_neox")


class FamilyError(ValueError):
    """A --family that does not exist, or whose tokens the tokenizer lacks."""


@dataclass
class Detection:
    family: Family
    reason: str  # one sentence for the export's output
    fim_prefix: str = ""
    fim_suffix: str = ""
    fim_middle: str = ""
    eos_token: str = ""
    stop_tokens: list[str] = field(default_factory=list)

    @property
    def fim(self) -> bool:
        return self.family.sentinels is not None


def _detect(vocab, model_type: str) -> tuple[Family, str]:
    has = vocab.__contains__
    if has("<|fim_prefix|>"):
        if model_type.startswith("gemma") or has("<|file_separator|>"):
            return FAMILIES["codegemma"], "<|fim_prefix|> with <|file_separator|> / a Gemma config"
        return FAMILIES["qwen"], "<|fim_prefix|> sentinels (Qwen2.5-Coder style)"
    if has("<｜fim▁begin｜>"):
        return FAMILIES["deepseek"], "<｜fim▁begin｜> sentinels"
    if has("▁<PRE>"):
        return FAMILIES["codellama"], "▁<PRE>/▁<SUF>/▁<MID> infilling tokens"
    if has("<fim_prefix>"):
        if model_type == "starcoder2" or has("<file_sep>"):
            return FAMILIES["starcoder2"], "<fim_prefix> sentinels with <file_sep> / a StarCoder2 config"
        return FAMILIES["starcoder"], "<fim_prefix> sentinels"
    if has("<fim-prefix>"):
        return FAMILIES["santacoder"], "<fim-prefix> sentinels (SantaCoder)"
    if has("<mask_1>") and has("<sep>") and has("<eom>"):
        return FAMILIES["codegen"], "<mask_1>/<sep>/<eom> tokens (CodeGen2.5)"
    why = (f"model type {model_type!r} has no fill-in-the-middle training" if model_type in NO_FIM_TYPES
           else "the tokenizer has no fill-in-the-middle tokens of a known family")
    return FAMILIES["plain"], why


def detect_family(vocab, model_type: str = "", *, override: str | None = None,
                  config_eos: str | None = None) -> Detection:
    """The family of a model from its vocabulary (token → id) and config.model_type.

    `override` (--family) wins, but must exist and find its sentinels in the vocabulary.
    `config_eos` (the config's eos token) ends completions when the family names none found.
    """
    model_type = (model_type or "").lower()
    if override:
        if override not in FAMILIES:
            raise FamilyError(f"unknown family {override!r}; known: {', '.join(FAMILIES)}")
        family, reason = FAMILIES[override], "chosen with --family"
        missing = [t for t in family.sentinels or () if t and t not in vocab]
        if missing:
            raise FamilyError(f"--family {override}: the tokenizer lacks {', '.join(dict.fromkeys(missing))}")
    else:
        family, reason = _detect(vocab, model_type)
    det = Detection(family, reason)
    if family.sentinels:
        det.fim_prefix, det.fim_suffix, det.fim_middle = family.sentinels
    det.eos_token = next((t for t in family.eos if t in vocab), None) or config_eos or "<|endoftext|>"
    det.stop_tokens = [t for t in dict.fromkeys((*family.eos, *family.stops))
                       if t in vocab and t != det.eos_token]
    if config_eos and config_eos != det.eos_token and config_eos not in det.stop_tokens:
        det.stop_tokens.append(config_eos)
    return det
