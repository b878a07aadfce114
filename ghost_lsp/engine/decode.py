"""One decoding step, shared by the engine's loop (onnx.py) and the model server's batched rows
(serving/batcher.py): which tokens may come next, the token chosen, the bytes and text so far.

`Vocabulary` is what decoding needs of a model's tokenizer (an engine's `vocab`); a
`Generation` is one sequence's state: the healed prompt tail still to re-spell (token healing,
healing.py), the bytes generated, where each token starts, the repetition-penalty counts and
the sampler's random state.
"""

from __future__ import annotations

import logging

import codecs

import numpy as np

from ghost_lsp.engine.healing import Healer, advance
from ghost_lsp.engine.sampling import choose_token


class Vocabulary:
    def __init__(self, token_bytes: list[bytes], banned: np.ndarray, eos_id: int | None, healing: bool = True,
                 end_ids=()):
        self.token_bytes = token_bytes
        self.eos_id = eos_id
        # Tokens that end a completion: end-of-text and the family's other end/stop control
        # tokens (CodeLlama's EOT beside </s>, Qwen's <|file_sep|>, CodeGemma's <|file_separator|>).
        # Banned, the model would have to write on where it means to stop.
        self.end_ids = frozenset(i for i in (eos_id, *end_ids) if i is not None and 0 <= i < len(token_bytes))
        # Control tokens (FIM markers, pad) are banned; the end tokens may still be chosen.
        self.allowed = ~banned
        for i in self.end_ids:
            self.allowed[i] = True
        self.allowed.flags.writeable = False  # fixed: sampling.apply_mask remembers its banned ids
        self.healer = Healer(token_bytes, banned) if healing else None

    def __len__(self) -> int:
        return len(self.token_bytes)


class Generation:
    def __init__(self, vocab: Vocabulary, healed: bytes = b"", seed: int | None = None):
        self.vocab = vocab
        self.healed = self.remaining = healed
        self.generated = b""
        self.starts: list[int] = []  # byte offset of each token in `generated`
        self.counts = np.zeros(len(vocab), dtype=np.int32)
        self.seed = seed
        self._rng: np.random.Generator | None = None
        # the visible text so far, decoded incrementally: bytes fed, the decoder, the text
        self._fed, self._decoder, self._text = len(healed), None, ""

    @property
    def rng(self) -> np.random.Generator:
        """Made on first use: greedy decoding never draws (making one costs ~40 µs a request)."""
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def mask(self) -> np.ndarray:
        """The tokens allowed next: while the healed tail is not re-spelled, only those that
        continue it."""
        if not self.remaining:
            return self.vocab.allowed
        mask = self.vocab.healer.mask(self.remaining)
        if not mask.any():  # nothing spells R: give up healing (never seen in practice)
            self.remaining, self.generated, self._decoder = b"", self.healed, None
            return self.vocab.allowed
        return mask

    def choose(self, scores: np.ndarray, mask: np.ndarray, params) -> tuple[int, float]:
        """The next token from one row of scores under `params`' sampling (temperature, top_p,
        frequency and presence penalties)."""
        return choose_token(scores, temperature=params.temperature, top_p=params.top_p, counts=self.counts,
                            frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
                            mask=mask, rng=self.rng if params.temperature > 0.0 else None)

    def take(self, tok: int) -> bool:
        """Record a chosen token (not end-of-text); True once the healed tail is re-spelled and
        the text is visible."""
        self.counts[tok] += 1
        self.starts.append(len(self.generated))
        self.generated += self.vocab.token_bytes[tok]
        if self.remaining:
            self.remaining = advance(self.remaining, self.vocab.token_bytes[tok])
        return not self.remaining

    def text(self) -> str:
        """The text after the healed tail, holding back an incomplete trailing character (it may
        finish next step). Decoded incrementally (only the new bytes each step): UTF-8's
        incremental decoder gives the same text however the bytes are split."""
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
            self._fed, self._text = len(self.healed), ""
        if len(self.generated) > self._fed:
            self._text += self._decoder.decode(self.generated[self._fed:], final=False)
            self._fed = len(self.generated)
        return self._text

    def tokens_before(self, text: str) -> int:
        """How many tokens start before the end of `text` (a prefix of the visible text)."""
        cut_byte = len(self.healed) + len(text.encode("utf-8"))
        return sum(1 for s in self.starts if s < cut_byte)

    def offsets(self, n: int | None = None) -> list[int]:
        """Code-point offset in the text where each of the first `n` tokens starts (0 inside
        the healed tail)."""
        h = len(self.healed)
        return [len(self.generated[h:b].decode("utf-8", "ignore")) if b > h else 0 for b in self.starts[:n]]


def first_stop(text: str, stops: list[str], seen: int = 0) -> int:
    """Where the first stop sequence starts in `text`, or -1. `seen`: a prefix of `text` already
    searched without a hit (the decode loop's text only grows): only matches ending after it
    are looked for."""
    return min((i for i in (text.find(s, max(0, seen - len(s) + 1)) for s in stops) if i >= 0), default=-1)


def stop_check_fires(check, text: str) -> bool:
    """The completer's early-stop rule on the text so far (`SamplingParams.stop_check`), for any
    engine's loop: a broken rule never stops the generation nor loses the suggestion."""
    try:
        return bool(check(text))
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).exception("stop_check failed; ignored")
        return False
