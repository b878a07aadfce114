"""The workspace n-gram cache: counts, Witten-Bell backoff, the mix, drafts, incremental updates
equal to a rebuild, the memory bound, the background build. No model: a byte tokenizer."""

import threading
import time

import numpy as np
import pytest

from ghost_lsp.engine.ngram_index import ChunkTokenizer, WorkspaceNgrams, adaptation, workspace_for
from ghost_lsp.engine.ngram import MixStats, NgramModel
from ghost_lsp.engine.ngram_table import BYTES_PER_TOKEN, MAX_CONTEXT, NgramTable, context_hash
from ghost_lsp.settings.core import Settings


def byte_encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def tables_equal(a: NgramTable, b: NgramTable) -> bool:
    return a.tokens == b.tokens and all(
        np.array_equal(x, y) for oa, ob in zip(a.orders, b.orders) for x, y in zip(oa, ob))


# -- counts -------------------------------------------------------------------------------------

def test_counts_per_context_length():
    t = NgramTable([np.array([1, 2, 3, 1, 2, 4, 1, 2, 3])])
    assert t.count_of([1, 2], 3) == 2 and t.count_of([1, 2], 4) == 1
    assert t.count_of([2], 3) == 2 and t.count_of([1], 2) == 3
    assert t.count_of([3, 1, 2], 4) == 1 and t.count_of([4, 1, 2], 3) == 1
    assert t.count_of([9], 1) == 0
    nxt, c = t.lookup([7, 7, 1], 1)  # only the last k tokens count
    assert dict(zip(nxt.tolist(), c.tolist())) == {2: 3}


def test_contexts_never_span_documents():
    t = NgramTable([np.array([1, 2]), np.array([3, 4])])
    assert t.count_of([2], 3) == 0 and t.count_of([1], 2) == 1 and t.tokens == 4


def test_hash_matches_the_tables():
    toks = np.arange(5, 5 + MAX_CONTEXT + 1)
    t = NgramTable([toks])
    for k in range(1, MAX_CONTEXT + 1):
        h = t.orders[k - 1][0]  # distinct context hashes
        assert context_hash(toks[:k].tolist(), k) in h.tolist()


# -- estimate (Witten-Bell) ------------------------------------------------------------------------

def test_witten_bell_backoff_by_hand():
    # after [1]: 2 once, 3 twice (C=3, u=2); after [7, 1]: 2 once (C=1, u=1)
    t = NgramTable([np.array([7, 1, 2, 8, 1, 3, 8, 1, 3])])
    m = NgramModel([(t, 1.0)], vocab_size=10, weight=0.5)
    est = m.estimate([9, 7, 1])
    assert (est.order, est.total, est.distinct) == (2, 1.0, 1)
    p1 = {2: 1 / 3, 3: 2 / 3}
    assert est.probs[2] == pytest.approx((1 + 1 * p1[2]) / 2)
    assert est.probs[3] == pytest.approx((0 + 1 * p1[3]) / 2)
    assert est.probs.sum() == pytest.approx(1.0)
    assert est.confidence == pytest.approx(1 / 2 * 2 / MAX_CONTEXT)
    lo = m.estimate([5, 1])  # [5, 1] never seen: order 1 only, the MLE
    assert lo.order == 1 and lo.probs[3] == pytest.approx(2 / 3)
    assert m.estimate([4]) is None  # the last token never had a successor


def test_tier_weights_scale_counts():
    a = NgramTable([np.array([1, 2])])
    b = NgramTable([np.array([1, 3])])
    m = NgramModel([(a, 3.0), (b, 1.0)], vocab_size=5)
    est = m.estimate([1])
    assert est.probs[2] == pytest.approx(0.75) and est.probs[3] == pytest.approx(0.25)
    assert est.total == 4.0 and est.distinct == 2


def test_mix_interpolates_and_leaves_unknown_contexts_alone():
    t = NgramTable([np.array([1, 2] * (MAX_CONTEXT + 2))])
    m = NgramModel([(t, 1.0)], vocab_size=4, weight=1.0)
    logits = np.array([0.0, 1.0, 0.0, 1.5])
    assert m.mix(logits, [3]) is logits  # no estimate: bit-identical model decoding
    stats = MixStats()
    ctx = [2, 1] * (MAX_CONTEXT // 2)  # the longest context, seen often: λ near its top
    scores = m.mix(logits, ctx, stats=stats)
    est = m.estimate(ctx)
    lam = 1.0 * est.confidence
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert np.exp(scores) == pytest.approx((1 - lam) * p + lam * est.probs)
    assert np.argmax(scores) == 2 and stats.changed == 1 and stats.matched == 1  # the cache won
    off = NgramModel([(t, 1.0)], vocab_size=4, weight=0.0)
    assert off.mix(logits, [2, 1]) is logits


def test_draft_follows_the_majority_continuation():
    t = NgramTable([np.array([5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7, 8, 1])])
    m = NgramModel([(t, 1.0)], vocab_size=10)
    assert m.draft([5, 6], 4) == [7, 8, 9, 5]  # after [6, 7, 8]: 9 twice, 1 once
    assert m.draft([5, 6], 2) == [7, 8]
    assert m.draft([3, 4], 4) == []
    split = NgramModel([(NgramTable([np.array([1, 2, 3, 1, 2, 4, 1, 2, 5])]), 1.0)], vocab_size=10)
    assert split.draft([1, 2], 3) == []  # no continuation has half the mass


# -- the workspace cache ----------------------------------------------------------------------------

def _write(tmp_path, files: dict[str, str]) -> list[str]:
    paths = []
    for name, text in files.items():
        p = tmp_path / name
        p.write_text(text)
        paths.append(str(p))
    return paths


def test_incremental_file_updates_equal_a_rebuild(tmp_path):
    paths = _write(tmp_path, {"a.py": "def f(x):\n    return x + 1\n", "b.py": "import os\nos.path.join\n",
                              "c.py": "class A:\n    pass\n"})
    ws = WorkspaceNgrams(byte_encode, 256)
    ws.load_paths(paths)
    (tmp_path / "a.py").write_text("def f(x, y):\n    return x + y\n")
    ws.update_file(paths[0])
    (tmp_path / "c.py").unlink()
    ws.update_file(paths[2], deleted=True)
    _write(tmp_path, {"d.py": "print('new')\n"})
    ws.update_file(str(tmp_path / "d.py"))
    fresh = WorkspaceNgrams(byte_encode, 256)
    fresh.load_paths([paths[0], paths[1], str(tmp_path / "d.py")])
    assert tables_equal(ws._project, fresh._project)
    assert ws._project.count_of(list(b"x + "), ord("y")) == 1 and ws._project.count_of(list(b"x + "), ord("1")) == 0


def test_edited_documents_equal_a_fresh_build():
    text = "".join(f"line_{i} = compute({i})\n" for i in range(200))
    ws = WorkspaceNgrams(byte_encode, 256)
    ws.set_current("doc.py", text[:3000], text[3000:])
    edited = text.replace("line_150 = compute(150)", "line_150 = compute(150, fast=True)")
    ws.set_current("doc.py", edited[:3000], edited[3000:])  # one chunk re-tokenized, the rest cached
    ws.set_open({"o.py": text})
    ws.set_open({"o.py": edited})
    fresh = WorkspaceNgrams(byte_encode, 256)
    fresh.set_current("doc.py", edited[:3000], edited[3000:])
    fresh.set_open({"o.py": edited})
    assert tables_equal(ws._current[2], fresh._current[2]) and tables_equal(ws._open, fresh._open)
    assert tables_equal(ws._current_rest[2], fresh._current_rest[2])
    chunks = ChunkTokenizer(byte_encode)
    chunks(text)
    assert np.array_equal(chunks(edited), ChunkTokenizer(byte_encode)(edited))


def test_the_cursor_splits_the_current_document():
    ws = WorkspaceNgrams(byte_encode, 256)
    ws.set_current("d.py", "abc", "xyz")
    table = ws._current[2]
    assert table.count_of([ord("c")], ord("x")) == 0  # no n-gram across the cursor
    assert table.count_of([ord("x")], ord("y")) == 1


def test_memory_bound_is_enforced(tmp_path):
    paths = _write(tmp_path, {f"m{i}.py": f"value_{i} = {i}\n" * 40 for i in range(30)})  # ~600 tokens each
    ws = WorkspaceNgrams(byte_encode, 256, max_tokens=4000)
    ws.set_current("cur.py", "x = 1\n" * 2000)  # 12k tokens: capped at a quarter of the bound
    ws.set_open({"o.py": "y = 2\n" * 2000})
    ws.load_paths(paths)
    st = ws.stats()
    assert st["current_tokens"] <= 1000 and st["open_tokens"] <= 1000
    assert ws.tokens <= 4000 and st["skipped_files"] > 0 and st["project_files"] > 0
    assert ws.nbytes <= ws.bytes_bound() == 4000 * (4 + BYTES_PER_TOKEN)
    for p in paths:  # updates cannot grow past the bound either
        ws.update_file(p)
    assert ws.tokens <= 4000


def test_background_build_and_rebuild_after_a_save(tmp_path):
    paths = _write(tmp_path, {"a.py": "alpha = 1\n", "b.py": "beta = 2\n"})

    class Index:
        ready = threading.Event()

        def paths(self):
            return paths

    index = Index()
    ws = WorkspaceNgrams(byte_encode, 256, rebuild_delay_s=0.01).start(index)
    try:
        time.sleep(0.05)
        assert not ws.ready.is_set()  # waits for the project index
        index.ready.set()
        assert ws.ready.wait(5)
        assert ws._project.count_of(list(b"alph"), ord("a")) == 1
        (tmp_path / "a.py").write_text("gamma = 3\n")
        ws.update_file(paths[0])
        deadline = time.monotonic() + 5
        while ws._project.count_of(list(b"gamm"), ord("a")) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ws._project.count_of(list(b"gamm"), ord("a")) == 1 and ws._project.count_of(list(b"alph"), ord("a")) == 0
    finally:
        ws.stop()


def test_settings_turn_the_cache_off_and_on():
    class Engine:
        token_bytes = [b""] * 256

        def encode(self, text):
            return byte_encode(text)

    engine = Engine()
    on = Settings()
    ws = workspace_for(None, engine, on, None)
    try:
        assert ws is not None and workspace_for(ws, engine, on, None) is ws
        a = adaptation(ws, on, "d.py", "abc abc ab", {"o.py": "abd"}, 0, 9)
        assert a.ngrams is not None and a.draft_tokens == on.draft_tokens and a.ngrams.estimate([ord("b")]) is not None
        off = Settings(ngram_cache=False, draft_tokens=0)
        assert workspace_for(ws, engine, off, None) is None
        a = adaptation(None, off, "d.py", "abc", {})
        assert a.ngrams is None and a.draft_tokens == 0
    finally:
        ws.stop()


def test_a_keystroke_rebuilds_only_the_cursors_chunk_of_the_current_document():
    """The current document is the cursor's CHUNK_LINES-line chunk plus the rest: typing inside
    the chunk keeps the rest's table, leaving the chunk rebuilds it, and the two together count
    what one table over the document split at the cursor counts (n-grams across the chunk's
    edges included: each table has the tokens beyond its edge as context)."""
    from ghost_lsp.engine.ngram_index import CHUNK_LINES

    text = "".join(f"row_{i} = fn({i})\n" for i in range(4 * CHUNK_LINES))
    ws = WorkspaceNgrams(byte_encode, 256)
    at = text.index("row_50 = ") + 4
    ws.set_current("doc.py", text[:at], text[at:])
    rest = ws._current_rest[2]
    typed = text[:at] + "5"
    ws.set_current("doc.py", typed, text[at:])  # a keystroke in the same chunk
    assert ws._current_rest[2] is rest
    assert ws._current[2].count_of(list(b"row_5"), ord("5")) == 1  # the typed text counts at once
    at2 = text.index("row_100 = ")
    ws.set_current("doc.py", text[:at2], text[at2:])  # another chunk
    assert ws._current_rest[2] is not rest
    whole = NgramTable([np.asarray(byte_encode(text[:at2]), np.int32), np.asarray(byte_encode(text[at2:]), np.int32)])
    model = ws.model(0.6)
    for ctx in (list(b"row_1"), list(b"= fn("), list(b"_7"), list(b"row_10"), list(b"9)\nrow_"), list(b"\nrow_8")):
        for tok in b"0123456789 =":
            want = whole.count_of(ctx, tok)
            got = sum(t.count_of(ctx, tok) for t, _ in model.tiers)
            assert got == want, (bytes(ctx), chr(tok))
