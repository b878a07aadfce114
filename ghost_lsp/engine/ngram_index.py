"""The workspace token n-gram cache: the project's files, the open documents and the current
document, in the model's own tokens (engine/ngram_table.py does the counting, engine/ngram.py
the estimate).

Three tiers, weighted when summed: the current document (weight 4), the other open documents
(2), the project's indexed Python files (1). The project tier is built in a background thread
once the project index has listed its files, and rebuilt (debounced) after a file is saved or
changed on disk; only that file is tokenized again. Open and current documents are tokenized in
chunks of lines with a small cache of chunk → tokens, so a keystroke re-tokenizes one chunk.
The current document's table is two: the cursor's chunk of lines (rebuilt at each keystroke,
small) and the rest of the document (rebuilt only when the cursor leaves its chunk or the text
outside it changes), so a keystroke's cost does not grow with the file.

Memory bound: at most `max_tokens` tokens in all (the server's setting: 400,000); each token
costs its 4-byte id plus at most BYTES_PER_TOKEN (160) bytes of table, so at most 66 MB (33 MB
measured on 400,000 tokens of real code). The current
document has first claim (up to a quarter of the bound), then open documents (up to another
quarter), then project files in the index's order until the bound; files past it are skipped and
counted (`stats()`). A single file over `max_file_tokens` is skipped too.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from ghost_lsp.engine.base import LocalTokens
from ghost_lsp.positions import split_at
from ghost_lsp.engine.ngram import NgramModel
from ghost_lsp.engine.ngram_table import BYTES_PER_TOKEN, MAX_CONTEXT, NgramTable

log = logging.getLogger(__name__)

WEIGHTS = {"current": 4.0, "open": 2.0, "project": 1.0}
CHUNK_LINES = 40
MAX_FILE_BYTES = 1_000_000


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ChunkTokenizer:
    """Tokenizes a document in chunks of lines, remembering recent chunks: after an edit only
    the changed chunk runs through the tokenizer. Chunks end after a newline, so n-grams
    spanning a chunk boundary are only those across line ends (counted on both sides)."""

    def __init__(self, encode: Callable[[str], list[int]], max_chunks: int = 4096):
        self.encode = encode
        self.max_chunks = max_chunks
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, text: str) -> np.ndarray:
        lines = text.splitlines(keepends=True)
        parts = []
        for i in range(0, len(lines), CHUNK_LINES):
            chunk = "".join(lines[i:i + CHUNK_LINES])
            arr = self._cache.get(chunk)
            if arr is None:
                arr = np.asarray(self.encode(chunk), dtype=np.int32)
                self._cache[chunk] = arr
                if len(self._cache) > self.max_chunks:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(chunk)
            parts.append(arr)
        return np.concatenate(parts) if parts else np.empty(0, np.int32)


class WorkspaceNgrams:
    """Long-lived: one per workspace and tokenizer. Thread-safe; readers get snapshots."""

    def __init__(self, encode: Callable[[str], list[int]], vocab_size: int, *, max_tokens: int = 300_000,
                 max_file_tokens: int = 50_000, rebuild_delay_s: float = 1.0):
        self.encode, self.vocab_size = encode, vocab_size
        self.max_tokens = max(0, int(max_tokens))
        self.max_file_tokens = max_file_tokens
        self.rebuild_delay_s = rebuild_delay_s
        self.made_for: tuple = ()  # (engine, budget, index) identities: workspace_for's reuse key
        self._chunks = ChunkTokenizer(encode)
        self._lock = threading.RLock()
        self._files: dict[str, np.ndarray] = {}  # project tier: path -> tokens, in the index's order
        self._project = NgramTable()
        self._open_key: tuple = ()
        self._open = NgramTable()
        # the current document: (path, key, table) of the cursor's chunk and of the rest
        self._current: tuple[str, tuple, NgramTable] | None = None
        self._current_rest: tuple[str, tuple, NgramTable, np.ndarray] | None = None  # + its last tokens
        self.skipped_files = 0
        self.builds = 0
        self.ready = threading.Event()
        self._dirty = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.pinned = False  # set by a caller that manages the tiers itself (the evals): kept as is

    # -- the project tier ---------------------------------------------------------------------

    def _project_budget(self) -> int:
        with self._lock:
            used = (self._open.tokens if self._open else 0) + self._current_tokens()
        return max(0, self.max_tokens - max(used, self.max_tokens // 2))

    def _read(self, path: str) -> np.ndarray | None:
        try:
            p = Path(path)
            if p.stat().st_size > MAX_FILE_BYTES:
                return None
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        toks = np.asarray(self.encode(text), dtype=np.int32)
        return toks if len(toks) <= self.max_file_tokens else None

    def set_files(self, texts: dict[str, str] | list[tuple[str, str]]) -> None:
        """Replace the project tier with these (path, text) files, now (the evals use this)."""
        items = texts.items() if isinstance(texts, dict) else texts
        files, total, skipped = {}, 0, 0
        budget = self._project_budget()
        for path, text in items:
            toks = self._chunks(text) if len(text) < MAX_FILE_BYTES else None
            if toks is None or len(toks) > self.max_file_tokens or total + len(toks) > budget:
                skipped += 1
                continue
            files[path] = toks
            total += len(toks)
        with self._lock:
            self._files, self.skipped_files = files, skipped
        self._rebuild()

    def load_paths(self, paths: list[str]) -> None:
        """Tokenize these files into the project tier within the bound, then build it."""
        files, total, skipped = {}, 0, 0
        budget = self._project_budget()
        for path in paths:
            if self._stop:
                return
            toks = self._read(path)
            if toks is None or total + len(toks) > budget:
                skipped += 1
                continue
            files[str(path)] = toks
            total += len(toks)
        with self._lock:
            self._files, self.skipped_files = files, skipped
        self._rebuild()
        if skipped:
            log.info("n-gram cache: %d project files skipped (over %d tokens in all, or too large)",
                     skipped, self.max_tokens)

    def update_file(self, path: str, deleted: bool = False) -> None:
        """A project file was saved, changed on disk or deleted: re-read it; rebuild soon."""
        path = str(path)
        toks = None if deleted else self._read(path)
        with self._lock:
            old = self._files.pop(path, None)
            total = sum(len(t) for t in self._files.values())
            if toks is not None:
                if total + len(toks) <= self._project_budget():
                    self._files[path] = toks
                elif old is None:
                    self.skipped_files += 1
        self._dirty.set()
        if self._thread is None:  # no background thread (tests, evals): rebuild now
            self._rebuild()

    def _rebuild(self) -> None:
        with self._lock:
            docs = list(self._files.values())
        table = NgramTable(docs)
        with self._lock:
            self._project = table
            self.builds += 1
        self.ready.set()

    def start(self, index=None) -> "WorkspaceNgrams":
        """Build the project tier from `index` (a ProjectIndex) in a daemon thread, then keep it
        current: update_file marks it dirty and the thread rebuilds after `rebuild_delay_s`."""
        self._thread = threading.Thread(target=self._run, args=(index,), name="ghost-ngrams", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._dirty.set()

    def _run(self, index) -> None:
        try:
            if index is not None:
                index.ready.wait()
                t0 = time.monotonic()
                self.load_paths(index.paths())
                log.info("n-gram cache: %d tokens from %d project files in %.2f s", self._project.tokens,
                         len(self._files), time.monotonic() - t0)
            else:
                self.ready.set()
            while not self._stop:
                self._dirty.wait()
                time.sleep(self.rebuild_delay_s)  # a burst of saves costs one rebuild
                self._dirty.clear()
                if not self._stop:
                    self._rebuild()
        except Exception:  # noqa: BLE001 - the cache is optional; completions go on without it
            log.exception("n-gram cache build failed; completions go on without the project tier")
            self.ready.set()

    # -- open and current documents ---------------------------------------------------------

    def _doc_tokens(self, text: str, budget: int) -> np.ndarray:
        toks = self._chunks(text) if text else np.empty(0, np.int32)
        return toks[:max(0, budget)] if len(toks) > budget else toks

    def set_open(self, docs: dict[str, str]) -> None:
        """The other open documents (path -> text); rebuilds that tier only when one changed."""
        key = tuple(sorted((p, _digest(t)) for p, t in docs.items()))
        if key == self._open_key:
            return
        budget = self.max_tokens // 4
        arrays = []
        for _, text in docs.items():
            if budget <= 0:
                break
            toks = self._doc_tokens(text, budget)
            arrays.append(toks)
            budget -= len(toks)
        table = NgramTable(arrays)
        with self._lock:
            self._open_key, self._open = key, table

    def set_current(self, path: str, prefix: str, suffix: str = "") -> None:
        """The document being completed, split at the cursor: the text before and after it are
        separate documents, so no n-gram spans the cursor (else the cache would predict the
        suffix, i.e. skipping what is about to be typed).

        Two tables: the lines of the cursor's CHUNK_LINES-line chunk, and the rest of the
        document (the chunks before it and after it). Typing inside a chunk rebuilds only the
        first (a 2,000-line file: ~1 ms a keystroke instead of ~18 ms for the whole file); the
        tokens across the chunk's edges are given to each table as context, so the two count
        what one table over the document would. Budget: a quarter of max_tokens,
        half of it for the cursor's chunk (its end nearest the cursor kept), the rest for the
        other chunks (those nearest the cursor kept)."""
        cursor_line = prefix.count("\n")
        start = cursor_line - cursor_line % CHUNK_LINES  # the chunk's first line
        cut = len("\n".join(prefix.split("\n", start)[:start])) + 1 if start else 0  # where it begins
        end = 0
        for _ in range(start + CHUNK_LINES - cursor_line):  # where the chunk ends in the suffix
            j = suffix.find("\n", end)
            end = len(suffix) if j < 0 else j + 1
        rest_before, live_before = prefix[:cut], prefix[cut:]
        live_after, rest_after = suffix[:end], suffix[end:]
        budget = self.max_tokens // 4
        lb, la, lb_all, la_all = self._around(live_before, live_after, budget // 2)
        # Context across the chunk's edges: the last tokens before the chunk lead into it (in
        # the chunk's table), the chunk's last tokens lead into the rest after it (in the rest's
        # table), as context only, so the two tables count what one over the document would.
        into_rest = la_all[-MAX_CONTEXT:] if len(la) == len(la_all) else la_all[:0]
        rest_key = (_digest(rest_before), _digest(rest_after), into_rest.tobytes())
        rest = self._current_rest
        if rest is None or rest[:2] != (path, rest_key):
            rb, ra, rb_all, _ = self._around(rest_before, rest_after, budget - budget // 2)
            table = NgramTable([rb, (np.concatenate([into_rest, ra]), len(into_rest))])
            rest = (path, rest_key, table, rb_all[-MAX_CONTEXT:])
        live_key = (_digest(live_before), _digest(live_after))
        live = self._current
        if live is None or live[:2] != (path, live_key) or rest is not self._current_rest:
            into_live = rest[3] if len(lb) == len(lb_all) else lb_all[:0]
            live = (path, live_key, NgramTable([(np.concatenate([into_live, lb]), len(into_live)), la]))
        with self._lock:
            self._current, self._current_rest = live, rest

    def _around(self, before: str, after: str, budget: int) -> tuple[np.ndarray, ...]:
        """Tokens of the text before and after a point, at most `budget` in all: the end of
        `before` first, then the start of `after`; and both untrimmed."""
        b_all, a_all = self._doc_tokens(before, 1 << 62), self._doc_tokens(after, 1 << 62)
        b = b_all[len(b_all) - min(len(b_all), budget):]
        return b, a_all[:budget - len(b)], b_all, a_all

    def _current_tables(self) -> list[NgramTable]:
        return [c[2] for c in (self._current, self._current_rest) if c is not None]

    def _current_tokens(self) -> int:
        return sum(t.tokens for t in self._current_tables())

    # -- reading -----------------------------------------------------------------------------

    def model(self, weight: float, exclude_current: bool = False) -> NgramModel:
        """A snapshot of all tiers as one n-gram model (largest mix weight `weight`)."""
        with self._lock:
            tiers = [(self._project, WEIGHTS["project"]), (self._open, WEIGHTS["open"])]
            if not exclude_current:  # the cursor's chunk and the rest: one tier in two tables
                tiers += [(t, WEIGHTS["current"]) for t in self._current_tables()]
        return NgramModel([(t, w) for t, w in tiers if t.tokens], self.vocab_size, weight)

    @property
    def tokens(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._files.values()) + self._open.tokens + self._current_tokens()

    @property
    def nbytes(self) -> int:
        """Bytes held: token arrays of the project files plus every tier's table."""
        with self._lock:
            return (sum(t.nbytes for t in self._files.values()) + self._project.nbytes + self._open.nbytes
                    + sum(t.nbytes for t in self._current_tables()))

    def bytes_bound(self) -> int:
        return self.max_tokens * (4 + BYTES_PER_TOKEN)

    def stats(self) -> dict:
        with self._lock:
            return {"tokens": self.tokens, "bytes": self.nbytes, "project_files": len(self._files),
                    "project_tokens": self._project.tokens, "open_tokens": self._open.tokens,
                    "current_tokens": self._current_tokens(),
                    "skipped_files": self.skipped_files, "builds": self.builds,
                    "max_tokens": self.max_tokens}


# -- what the completer calls -------------------------------------------------------------------


def workspace_for(current: WorkspaceNgrams | None, engine, settings, index) -> WorkspaceNgrams | None:
    """The workspace cache for `engine`'s tokenizer: `current` if it still fits, else a new one
    (started in the background on `index`, if any). None when the setting is off or the engine
    cannot tokenize locally."""
    if current is not None and current.pinned:
        return current
    if not settings.ngram_cache or not isinstance(engine, LocalTokens):
        if current is not None:
            current.stop()
        return None
    key = (id(engine), settings.ngram_max_tokens, id(index))
    if current is not None and current.made_for == key:
        return current
    if current is not None:
        current.stop()
    ws = WorkspaceNgrams(engine.encode, len(engine.token_bytes), max_tokens=settings.ngram_max_tokens)
    ws.made_for = key
    return ws.start(index)


def adaptation(ws: WorkspaceNgrams | None, settings, path: str, text: str, open_docs: dict[str, str],
               line: int = 0, character: int = 0):
    """The engine's per-request Adapt: the cache snapshot with the current and open documents
    brought up to date, and the draft length. Never raises (a broken cache only loses the mix)."""
    from ghost_lsp.engine.speculative import Adapt

    model = None
    if ws is not None and settings.ngram_cache:
        try:
            ws.set_open({p: t for p, t in open_docs.items() if p != path})
            ws.set_current(path, *split_at(text, line, character))
            model = ws.model(settings.ngram_weight)
        except Exception:  # noqa: BLE001
            log.exception("n-gram cache update failed; this request decodes without it")
    return Adapt(ngrams=model, draft_tokens=settings.draft_tokens)


def describe(ws: WorkspaceNgrams, tokenizer, prompt_text: str, weight: float, draft_tokens: int) -> dict:
    """What the cache thinks at the end of a prompt (for `ghost-lsp prompt`): tier sizes, the
    longest seen context, λ, its top next tokens, and the draft a first decode step would verify.
    The prompt is token-healed as the engine heals it, so the context is the one decoding starts from."""
    from ghost_lsp.engine.healing import heal_prompt, token_bytes_table
    from ghost_lsp.engine.speculative import prompt_lookup

    ids = tokenizer.encode(prompt_text, add_special_tokens=False).ids
    table, _ = token_bytes_table(tokenizer)
    ctx, healed = heal_prompt(ids, table)
    model = ws.model(weight)
    est = model.estimate(ctx)
    out = {"tiers": ws.stats(), "healed_tail": healed.decode("utf-8", "replace"), "order": 0, "lambda": 0.0,
           "top": [], "draft": "", "draft_source": ""}
    if est is not None:
        order = np.argsort(-est.weights)[:5]
        out.update(order=est.order, seen=est.total, distinct=est.distinct,
                   **{"lambda": round(weight * est.confidence, 4)},
                   top=[(tokenizer.decode([int(est.tokens[i])]), round(float(est.weights[i]), 4)) for i in order])
    if draft_tokens > 0:
        draft, source = prompt_lookup(ctx, draft_tokens), "prompt"
        if not draft:
            draft, source = model.draft(ctx, draft_tokens), "cache"
        if draft:
            out.update(draft=tokenizer.decode(draft), draft_source=source)
    return out
