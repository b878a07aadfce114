"""Token healing: undo the prompt's last token boundary and let the model choose it again.

Why: a byte-level BPE trained on code merges "\\n    " (newline + indentation) into one
token, but in training text that run is usually followed by a word, so it was split as
"\\n   " + " return". A prompt that ends exactly at a line start therefore ends in a token
the model has rarely seen followed by anything sensible, and the output is garbage. The fix:
drop the last token (and a whitespace-only token before it), remember its bytes R, and
constrain the first generated tokens to spell R out (a token may cover all of R and go
further, or cover a prefix of R and leave the rest to the next step). The returned text is
what comes after R, so the caller never sees the prompt's tail repeated.

Everything here works on bytes, not str: a byte-level token may hold half a UTF-8 character.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import numpy as np


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte → printable-character table byte-level BPE vocabularies use."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes_table(tokenizer, size: int | None = None) -> tuple[list[bytes], set[int]]:
    """Bytes each token id stands for, and the ids of added/special tokens.

    Special and added tokens map to b"" (they are control symbols, never text to match).
    `size` pads the table when the model's logits are wider than the vocabulary.
    """
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    size = max(size or 0, vocab_size)
    added = set(tokenizer.get_added_tokens_decoder().keys())
    try:
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    except Exception:  # noqa: BLE001 - a tokenizer we cannot introspect gets the slow path
        decoder = {}
    byte_level = "ByteLevel" in json.dumps(decoder)
    table: list[bytes] = [b""] * size
    for i in range(vocab_size):
        if i in added:
            continue
        piece = tokenizer.id_to_token(i)
        if piece is None:
            continue
        if byte_level and all(c in _UNICODE_TO_BYTE for c in piece):
            table[i] = bytes(_UNICODE_TO_BYTE[c] for c in piece)
            continue
        m = _BYTE_FALLBACK.match(piece)
        if m:
            table[i] = bytes([int(m.group(1), 16)])
        else:  # SentencePiece-style vocabularies: "▁" marks a space
            table[i] = piece.replace("\u2581", " ").encode("utf-8")
    return table, added


def heal_split(ids: list[int], token_bytes: list[bytes], max_tokens: int = 2) -> tuple[int, bytes]:
    """How many prompt tokens to keep, and the bytes R of the dropped tail.

    Always drops the last token (a boundary the model should choose itself) unless it is a
    special token (e.g. <fim_middle>, which ends a FIM prompt on purpose); drops more, up to
    `max_tokens`, while the token before is whitespace only ("\\n   " + " " → both go).
    Keeps at least one token so prefill has something to run on.
    """
    n = len(ids)
    if n < 2 or not token_bytes[ids[-1]]:
        return n, b""
    keep = n - 1
    while n - keep < max_tokens and keep > 1:
        prev = token_bytes[ids[keep - 1]]
        if not prev or prev.strip() != b"":
            break
        keep -= 1
    return keep, b"".join(token_bytes[i] for i in ids[keep:])


def heal_prompt(ids: list[int], token_bytes: list[bytes],
                fim_ids: tuple[int | None, int | None] = (None, None)) -> tuple[list[int], bytes]:
    """The prompt ids to run and the healed bytes R the generation must start with.

    A fill-in-the-middle prompt ends in <fim_middle> on purpose, but the cursor sits at the end
    of the prefix part, before <fim_suffix>: that is where a half-typed word or an indentation
    run splits a token. So for FIM the prefix part is healed and the sentinels stay in place.
    """
    suffix_id, middle_id = fim_ids
    if middle_id is not None and suffix_id is not None and ids and ids[-1] == middle_id and suffix_id in ids:
        s = len(ids) - 1 - ids[::-1].index(suffix_id)
        keep, healed = heal_split(ids[:s], token_bytes)
        return ids[:keep] + ids[s:], healed
    keep, healed = heal_split(ids, token_bytes)
    return ids[:keep], healed


class Healer:
    """Answers "which tokens may come next while R is not yet spelled out" fast.

    Tokens are indexed by first byte once, so each constrained step looks at a few hundred
    candidates instead of the whole vocabulary; answers are cached per remaining R.
    """

    def __init__(self, token_bytes: list[bytes], banned: np.ndarray | None = None):
        self.token_bytes = token_bytes
        self.size = len(token_bytes)
        by_first: dict[int, list[int]] = {}
        for i, tb in enumerate(token_bytes):
            if tb and (banned is None or not banned[i]):
                by_first.setdefault(tb[0], []).append(i)
        self._by_first = {k: np.array(v, dtype=np.int64) for k, v in by_first.items()}
        self.allowed_ids = lru_cache(maxsize=256)(self._allowed_ids)

    def _allowed_ids(self, remaining: bytes) -> np.ndarray:
        cands = self._by_first.get(remaining[0], np.empty(0, dtype=np.int64))
        tb = self.token_bytes
        ok = [i for i in cands.tolist() if tb[i].startswith(remaining) or remaining.startswith(tb[i])]
        return np.array(ok, dtype=np.int64)

    def mask(self, remaining: bytes) -> np.ndarray:
        """Boolean mask over the vocabulary: True where the token is consistent with R."""
        m = np.zeros(self.size, dtype=bool)
        m[self.allowed_ids(remaining)] = True
        return m


def advance(remaining: bytes, token: bytes) -> bytes:
    """What is left of R after emitting `token` (b"" once R is fully spelled out)."""
    if token.startswith(remaining):
        return b""
    return remaining[len(token):]
