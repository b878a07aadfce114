"""Byte-level BPE for code, trained with `tokenizers` on the corpus.

Byte-level means any text round-trips (no unknown token). The GPT-2 pre-tokenizer keeps runs of
whitespace together, so indentation becomes a few tokens instead of one per space; the engine's
token healing handles prompts that end inside such a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

EOS = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, PAD]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Train and return a `tokenizers.Tokenizer`; special tokens get ids 0..4 in SPECIAL_TOKENS order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out_dir: str | Path) -> Path:
    """Save tokenizer.json plus the files transformers needs to load it as a fast tokenizer."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS, "bos_token": EOS, "unk_token": EOS, "pad_token": PAD,
        "additional_special_tokens": [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX],
        # without this transformers adds token_type_ids, which the exported decoder does not take
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }, indent=1))
    return out / "tokenizer.json"
