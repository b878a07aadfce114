"""Fuzzed LSP input against the real `ghost-lsp serve` process.

Each hypothesis example is a batch of hostile messages (raw bytes or well-framed JSON with
wrong shapes); after every batch the server must still answer the probe completion with
exactly the answer it gave before any fuzzing (greedy decoding, no cross-document context:
the answer is deterministic).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.reliability.wire import FIGURES, PROBE_OPTIONS, PROBE_TEXT, Wire, frame

# Batches per fuzz test: 40 in CI; more for a longer run (GHOST_FUZZ_EXAMPLES=2000).
EXAMPLES = int(os.environ.get("GHOST_FUZZ_EXAMPLES", "40"))
PROBE_URI = "file:///probe/probe.py"
FUZZ_URI = "file:///fuzz/f.py"
PROBE_POS = (5, 11)


@pytest.fixture(scope="module")
def wire(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    w = Wire(model_dir, tmp / "feedback.db")
    # Before initialize: a request is refused with ServerNotInitialized, not run.
    early = w.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": PROBE_URI}, "position": {"line": 0, "character": 0},
        "context": {"triggerKind": 1}}, timeout=10)
    assert early["error"]["code"] == -32002, early
    w.notify("textDocument/didOpen", {"textDocument": {"uri": PROBE_URI, "languageId": "python",
                                                        "version": 1, "text": "ignored"}})
    w.initialize(PROBE_OPTIONS)
    w.open(PROBE_URI, PROBE_TEXT)
    w.open(FUZZ_URI, "x = 1\ny = '😀😀'\n")
    first = w.inline(PROBE_URI, *PROBE_POS, timeout=60)
    assert first is not None and "result" in first, first
    w.baseline = first["result"]
    assert _items(w.baseline), "the probe must produce a suggestion"
    assert w.health()["documents"] == 2  # the didOpen before initialize was dropped
    yield w
    assert w.alive(), w.log_text()[-3000:]
    w.close()


def _items(result) -> list:
    """The answer without the suggestion ids (new for every suggestion)."""
    return [{k: v for k, v in it.items() if k != "command"} for it in (result or {}).get("items", [])]


def probe(w: Wire) -> None:
    # A fuzzed didChangeConfiguration may have set legal values (n=3, enabled=false): restore ours.
    w.notify("workspace/didChangeConfiguration", {"settings": PROBE_OPTIONS})
    got = w.inline(PROBE_URI, *PROBE_POS, timeout=15)
    assert w.alive(), w.log_text()[-3000:]
    assert got is not None, "no answer to the probe:\n" + w.log_text()[-3000:]
    assert "result" in got and _items(got["result"]) == _items(w.baseline), got
    assert got["result"]["items"][0]["command"]["command"] == "ghost.accept"


# -- strategies -------------------------------------------------------------------------

ints = st.one_of(st.integers(-5, 5), st.integers(-2**31, 2**31), st.just(2**53), st.floats(allow_nan=False))
junk = st.one_of(st.none(), st.booleans(), ints, st.text(max_size=20), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
position = st.fixed_dictionaries({"line": ints, "character": ints})
maybe = lambda s: st.one_of(s, junk)  # noqa: E731
uri = st.sampled_from([FUZZ_URI, "file:///fuzz/unopened.py", "untitled:x", "", "file:///%zz", "ftp://x"])
METHODS = ["textDocument/inlineCompletion", "textDocument/completion", "textDocument/didChange",
           "textDocument/didOpen", "textDocument/didClose", "workspace/executeCommand",
           "workspace/didChangeConfiguration", "$/cancelRequest", "$/setTrace", "ghost/health",
           "no/suchMethod", "$/unknownNotification", "textDocument/hover"]
change = st.one_of(
    st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": position, "end": position}),
                           "text": st.one_of(st.text(max_size=30), st.sampled_from(["\ud83d", "😀", "\r\n"]))}),
    st.fixed_dictionaries({"text": st.text(max_size=30)}), junk)
params = st.one_of(
    junk,
    st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({"uri": maybe(uri), "version": maybe(ints)}),
                           "position": maybe(position), "context": maybe(st.just({"triggerKind": 1}))}),
    st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({"uri": uri, "version": ints}),
                           "contentChanges": st.lists(change, max_size=3)}),
    st.fixed_dictionaries({"textDocument": st.fixed_dictionaries(
        {"uri": uri, "languageId": st.just("python"), "version": ints,
         "text": st.one_of(st.text(max_size=50), st.just("x" * 300_000))})}),  # a huge single line
    st.fixed_dictionaries({"command": st.sampled_from(["ghost.accept", "nope"]),
                           "arguments": st.lists(junk, max_size=2)}),
    st.fixed_dictionaries({"id": junk}),
    st.fixed_dictionaries({"settings": maybe(st.fixed_dictionaries({"ghost": st.dictionaries(
        st.sampled_from(["debounceMs", "n", "enabled", "maxNewTokens", "bogus"]), junk, max_size=2)}))}),
)


@st.composite
def message(draw) -> dict:
    m = {"jsonrpc": draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0", None])), "method": draw(maybe(st.sampled_from(METHODS)))}
    if draw(st.booleans()):
        # not 1000..10**7: the Wire's own request ids, whose answers the probe waits for
        m["id"] = draw(st.one_of(st.integers(-10, 999), st.integers(10**7, 2**53), st.text(max_size=8),
                                 st.none(), st.floats(allow_nan=False)))
    if draw(st.booleans()):
        m["params"] = draw(params)
    if m["jsonrpc"] is None:
        del m["jsonrpc"]
    return m


def _body(m: dict) -> bytes:
    # ensure_ascii=False keeps lone surrogates as invalid UTF-8: encode leniently
    return json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def raw_frame(draw) -> bytes:
    """Broken framing: wrong Content-Length (short, or long by at most 40 bytes — the probe
    that follows is longer, so the reader can resynchronise on its header), bad headers,
    invalid JSON, binary noise."""
    body = draw(st.one_of(st.builds(_body, message()), st.binary(max_size=200),
                          st.sampled_from([b"{", b"[]", b"null", b"{\"jsonrpc\":\"2.0\"", b"\xff\xfe{}", b"{}" * 50])))
    kind = draw(st.sampled_from(["short", "long", "noheader", "badheader", "extraheaders", "noblank", "ok"]))
    if kind in ("long", "noblank"):
        # A body that does not end where its header says eats what follows; kept shorter
        # than the next message so the reader can find that message's header inside it.
        body = body[:200]
    n = len(body)
    if kind == "short":
        return b"Content-Length: %d\r\n\r\n" % max(0, n - draw(st.integers(1, 10))) + body
    if kind == "long":
        return b"Content-Length: %d\r\n\r\n" % (n + draw(st.integers(1, 40))) + body
    if kind == "noheader":
        return body + b"\r\n"
    if kind == "badheader":
        hdr = draw(st.sampled_from([b"Content-Length: -5", b"Content-Length: abc", b"Content-Length:",
                                    b"X" * 20_000, b"Content-Length: 99999999999999999999999"]))
        return hdr + b"\r\n\r\n" + body
    if kind == "extraheaders":
        return (b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length:%d\r\nX-Junk: \xff\r\n\r\n"
                % n) + body
    if kind == "noblank":
        return b"Content-Length: %d\r\n" % n + body + b"\r\n"
    return frame(body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(batch=st.lists(message(), min_size=1, max_size=12))
def test_wellformed_frames_with_hostile_content(wire, batch):
    for m in batch:
        wire.send_raw(frame(_body(m)))
    FIGURES["messages_fuzzed"] += len(batch)
    probe(wire)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(batch=st.lists(raw_frame(), min_size=1, max_size=6))
def test_broken_framing_and_raw_bytes(wire, batch):
    for data in batch:
        wire.send_raw(data)
    # A header line left open by the batch ends at our own newline.
    wire.send_raw(b"\r\n\r\n")
    FIGURES["messages_fuzzed"] += len(batch)
    probe(wire)


def test_oversize_message_is_refused_without_reading_it_whole(wire):
    h = wire.health()
    before, docs = h["rss_kb"], h["documents"]
    big = b'{"jsonrpc":"2.0","id":77,"method":"textDocument/didOpen","params":{"textDocument":{"uri":"file:///big.py","text":"' \
          + b"a" * (80 * 2**20) + b'"}}}'
    wire.send_raw(frame(big))
    got = wire.wait_response(77, timeout=60)
    assert got["error"]["code"] == -32600 and "refused" in got["error"]["message"]
    after = wire.health()
    assert after["documents"] == docs  # not opened
    assert after["rss_kb"] - before < 40_000, (before, after)  # 80 MB went by, < 40 MB stayed
    assert sum("too large" in m for m in wire.messages_shown()) == 1
    FIGURES["messages_fuzzed"] += 1
    probe(wire)


def test_edge_positions_and_edits_through_the_server(wire):
    """The hand-picked cases, each checked for its own answer, not just survival."""
    uri = "file:///fuzz/edges.py"
    docs = wire.health()["documents"]  # the fuzz batches open and close documents too
    wire.open(uri, "s = '😀'\n")
    for line, ch in [(0, -1), (-1, 0), (0, 6), (9, 0), (0, 10_000)]:
        got = wire.inline(uri, line, ch)
        assert got is not None and got.get("result") is None, (line, ch, got)  # empty answer, not an error
    # didChange: a split surrogate, an out-of-bounds range, a version going backwards, an unopened doc
    for ch in [{"range": {"start": {"line": 0, "character": 6}, "end": {"line": 0, "character": 6}}, "text": "!"},
               {"range": {"start": {"line": 0, "character": 3}, "end": {"line": 40, "character": 99}}, "text": "Z"}]:
        wire.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 1}, "contentChanges": [ch]})
    wire.notify("textDocument/didChange", {"textDocument": {"uri": "file:///never-opened.py", "version": 1},
                                           "contentChanges": [{"text": "x"}]})
    assert wire.health()["documents"] == docs + 1  # the unopened one was not added
    got = wire.inline(uri, 0, 4)  # "s = Z" now: a real position in the edited text
    assert got is not None and "error" not in got, got
    FIGURES["messages_fuzzed"] += 10
    probe(wire)
    # pygls would show "Error in server" per bad message; ours are logged, and shown at most once
    assert not any("Error in server" in m for m in wire.messages_shown())
