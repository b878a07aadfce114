"""What became of a suggestion, inferred on the server from the document's own edits.

The server tells the `Tracker` what it showed (suggestion text, document text, the
code-point offset it would be inserted at) and hands it every document version after a
`didChange`. The tracker diffs each version against the previous one and follows the text
typed at that offset since the suggestion was shown:

- the whole suggestion arrives and part of it came in a chunk no one types by hand (an
  editor inserting the item) → `accepted` ("how": "edit"), unless the accept command comes
  within `grace_s`, which makes it "how": "command" — the command stays the strongest signal
  and clients that run none (Helix, plain Vim) are still labelled;
- the whole suggestion arrives one keystroke at a time → `typed_anyway`;
- an editor-inserted prefix, then something else → `partially_accepted` (chars, lines);
- other text typed, an edit elsewhere ("moved away"), a new suggestion in its place, the
  document closed, or nothing for `window_s` → `rejected` with the reason.

Accepted text is then followed through later edits; at 30 s, 2 min and 10 min after the
accept a `survived` event says how much of it is still there. Nothing here waits: `tick()`
is called by a timer of the server's (and by every change), with an injected clock, so
tests drive time by hand.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Callable

Emit = Callable[[str, str, dict], None]  # (suggestion id, kind, detail)

SURVIVAL_S = (30.0, 120.0, 600.0)
_CLOSERS = ")]}\"'`"


@dataclass
class _Pending:
    """A shown suggestion not yet labelled."""

    id: str
    text: str
    anchor: int  # code-point offset where the suggestion would be inserted
    shown_at: float
    typed: str = ""  # what now stands at the anchor, typed (or inserted) since it was shown
    client_chars: int = 0  # characters that came in editor-sized chunks, not keystrokes

    @property
    def end(self) -> int:
        return self.anchor + len(self.typed)


@dataclass
class _Watch:
    """Accepted text followed through later edits, for the survival checks."""

    id: str
    text: str
    start: int
    end: int
    accepted_at: float
    label_due: float | None = None  # accepted by edit: labelled then, unless the command comes
    checks: list[float] = field(default_factory=lambda: list(SURVIVAL_S))


@dataclass
class _Doc:
    text: str
    pending: list[_Pending] = field(default_factory=list)
    watches: list[_Watch] = field(default_factory=list)
    closed: bool = False


def _common_prefix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, limit  # binary search on slice equality: C-speed compares on big files
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def diff(old: str, new: str) -> tuple[int, int, str]:
    """One edit turning `old` into `new`: (start, characters removed, text inserted)."""
    n = min(len(old), len(new))
    p = _common_prefix(old, new, n)
    s = _common_prefix(old[::-1], new[::-1], n - p) if n > p else 0
    return p, len(old) - p - s, new[p:len(new) - s]


def _keystroke(chunk: str) -> bool:
    """Could a person have typed this in one key? (Enter + auto-indent, an auto-closed pair.)"""
    return len(chunk) <= 1 or not chunk.strip() or (len(chunk) == 2 and chunk[1] in _CLOSERS)


def _agrees(text: str, typed: str) -> bool:
    """Is `typed` still on the way to `text`? Closers an editor auto-inserted may trail (in
    the order the text closes them later: `f(x[` typed as `f(x[])` is on the way to `f(x[1])`)."""
    if text.startswith(typed):
        return True
    head = typed.rstrip(_CLOSERS)
    if not text.startswith(head):
        return False
    tail = typed[len(head):]
    rest = iter(text[len(head):])
    # a subsequence of what follows, or the closers of what `head` left open (a line that goes on)
    return all(c in rest for c in tail) or _unclosed(head).startswith(tail)


def _unclosed(code: str) -> str:
    """The closers an editor would have put in for the brackets and quotes `code` leaves open,
    innermost first (a rough scan: enough to recognise auto-inserted closers)."""
    stack: list[str] = []
    for ch in code:
        if stack and stack[-1] in "\"'":
            if ch == stack[-1]:
                stack.pop()
        elif ch in "([{":
            stack.append(")]}"["([{".index(ch)])
        elif stack and ch == stack[-1]:
            stack.pop()
        elif ch in "\"'":
            stack.append(ch)
    return "".join(reversed(stack))


# A typo the user fixes with backspace is still "typing the suggestion": this many wrong
# characters at the end are followed before it counts as typing something else.
TYPO_SLACK = 1


def _on_track(text: str, typed: str) -> bool:
    head = typed.rstrip(_CLOSERS)  # the typo sits before any auto-inserted closers
    tail = typed[len(head):]
    return any(_agrees(text, head[:len(head) - k] + tail) for k in range(min(TYPO_SLACK, len(head)) + 1))


def _complete(text: str, typed: str) -> bool:
    """All of `text` is there; a suggestion ending in an opener leaves the editor's closer after it."""
    return typed == text or (typed.startswith(text) and all(c in _CLOSERS for c in typed[len(text):]))


def _matched(text: str, typed: str) -> int:
    i = 0
    while i < min(len(text), len(typed)) and text[i] == typed[i]:
        i += 1
    return i


class Tracker:
    """Per-document state for the suggestions shown in it. Not thread-safe: the server
    calls it from its event loop only."""

    def __init__(self, emit: Emit, *, clock: Callable[[], float] = time.monotonic,
                 window_s: float = 120.0, grace_s: float = 2.0, max_pending: int = 16,
                 survival_s: tuple[float, ...] = SURVIVAL_S):
        self.emit = emit
        self.clock = clock
        self.window_s = window_s
        self.grace_s = grace_s
        self.max_pending = max_pending
        self.survival_s = survival_s
        self.docs: dict[str, _Doc] = {}
        self._labelled: OrderedDict[str, None] = OrderedDict()  # one accept per suggestion

    # -- what the server reports --------------------------------------------------------------

    def shown(self, uri: str, suggestion_id: str, text: str, doc_text: str, offset: int) -> None:
        if not text or not 0 <= offset <= len(doc_text):
            return
        now = self.clock()
        doc = self.docs.get(uri)
        if doc is None or doc.closed:
            doc = self.docs[uri] = _Doc(doc_text, watches=doc.watches if doc else [])
        else:
            self._changed(doc, doc_text, now)
        for p in list(doc.pending):
            # A suggestion the user is typing through stays followed: the next one is asked
            # for right where its typed part ends.
            if not (p.typed and offset == p.end and _on_track(p.text, p.typed)):
                self._resolve(doc, p, "replaced")
        doc.pending.append(_Pending(suggestion_id, text, offset, now))
        while len(doc.pending) > self.max_pending:
            self._resolve(doc, doc.pending[0], "replaced")

    def changed(self, uri: str, text: str) -> None:
        doc = self.docs.get(uri)
        if doc is None or doc.closed:
            return  # nothing shown there: no copy of the text is kept
        now = self.clock()
        self._changed(doc, text, now)
        self.tick(now)

    def closed(self, uri: str) -> None:
        doc = self.docs.get(uri)
        if doc is None:
            return
        for p in list(doc.pending):
            self._resolve(doc, p, "closed")
        doc.closed = True  # accepted text is frozen as it was; its checks still run
        if not doc.watches:
            del self.docs[uri]

    def accept_command(self, suggestion_id: str) -> None:
        """The client ran the accept command attached to the item."""
        now = self.clock()
        for doc in self.docs.values():
            for w in doc.watches:
                if w.id == suggestion_id and w.label_due is not None:
                    w.label_due = None
                    self._label(w.id, w.text, "command")
                    return
            for p in doc.pending:
                if p.id == suggestion_id:
                    # The command may come before the edit: an empty region fills with it.
                    doc.pending.remove(p)
                    doc.watches.append(_Watch(p.id, p.text, p.anchor, p.end, now))
                    self._label(p.id, p.text, "command")
                    return
        self._label(suggestion_id, None, "command")  # not followed (any more): still the truth

    def tick(self, now: float | None = None) -> None:
        """Labels whose grace ran out, expired suggestions, due survival checks."""
        now = self.clock() if now is None else now
        for uri, doc in list(self.docs.items()):
            for p in list(doc.pending):
                if now - p.shown_at >= self.window_s:
                    self._resolve(doc, p, "expired")
            for w in list(doc.watches):
                if w.label_due is not None and now >= w.label_due:
                    w.label_due = None
                    self._label(w.id, w.text, "edit")
                while w.checks and now >= w.accepted_at + w.checks[0]:
                    after = w.checks.pop(0)
                    self._survival(doc, w, after, final=not w.checks)
                if not w.checks and w.label_due is None:
                    doc.watches.remove(w)
            if doc.closed and not doc.watches:
                del self.docs[uri]

    def flush(self) -> None:
        """At shutdown: label what the grace period still held back."""
        for doc in self.docs.values():
            for w in doc.watches:
                if w.label_due is not None:
                    w.label_due = None
                    self._label(w.id, w.text, "edit")

    # -- inference ------------------------------------------------------------------------------

    def _changed(self, doc: _Doc, new: str, now: float) -> None:
        old = doc.text
        if new == old:
            return
        doc.text = new
        start, removed, inserted = self._locate(doc, old, new)
        for w in doc.watches:
            _move(w, start, removed, inserted)
        if inserted and not removed and not _keystroke(inserted) and len(doc.pending) > 1:
            # An editor accepting an item inserts the newest suggestion shown at that point;
            # older ones the user was typing through were replaced by it: they get no credit
            # for its characters (nor a second accept).
            owner = next((p for p in reversed(doc.pending) if p.end == start and (
                _complete(p.text, p.typed + inserted) or _on_track(p.text, p.typed + inserted))), None)
            if owner is not None:
                for p in [q for q in doc.pending if q is not owner]:
                    self._resolve(doc, p, "replaced")
        for p in list(doc.pending):
            self._follow(doc, p, start, removed, inserted, now)

    @staticmethod
    def _locate(doc: _Doc, old: str, new: str) -> tuple[int, int, str]:
        """The edit, placed at a followed suggestion's typing point when it fits there too:
        typing "e" after "e" is ambiguous to a plain diff."""
        k = len(new) - len(old)
        for p in doc.pending:
            e = p.end
            if k > 0 and new[:e] == old[:e] and new[e + k:] == old[e:]:
                return e, 0, new[e:e + k]
            if k < 0 and e + k >= p.anchor and new[:e + k] == old[:e + k] and new[e + k:] == old[e:]:
                return e + k, -k, ""
        return diff(old, new)

    def _follow(self, doc: _Doc, p: _Pending, start: int, removed: int, inserted: str, now: float) -> None:
        if start + removed <= p.anchor and not (start == p.anchor and removed == 0):
            # Before the suggestion: it moves along, but the user went elsewhere.
            delta = len(inserted) - removed
            p.anchor += delta
            self._resolve(doc, p, "moved_away")
            return
        if start < p.anchor or start + removed > p.end:
            self._resolve(doc, p, "moved_away")
            return
        i = start - p.anchor
        p.typed = p.typed[:i] + inserted + p.typed[i + removed:]
        if inserted and not _keystroke(inserted):
            p.client_chars += len(inserted)
        if _complete(p.text, p.typed):
            doc.pending.remove(p)
            if p.client_chars:
                doc.watches.append(_Watch(p.id, p.text, p.anchor, p.end, now, label_due=now + self.grace_s,
                                          checks=list(self.survival_s)))
            else:
                self.emit(p.id, "typed_anyway", {"chars": len(p.text), "lines": p.text.count("\n") + 1,
                                                 "after_s": round(now - p.shown_at, 3)})
        elif not _on_track(p.text, p.typed):
            self._resolve(doc, p, "typed_other")

    def _resolve(self, doc: _Doc, p: _Pending, reason: str) -> None:
        """Label a suggestion that will not be completed."""
        doc.pending.remove(p)
        m = _matched(p.text, p.typed)
        if p.client_chars and m:
            part = p.text[:m]
            self.emit(p.id, "partially_accepted", {"chars": m, "of_chars": len(p.text),
                                                   "lines": part.count("\n") + 1, "then": reason})
            doc.watches.append(_Watch(p.id, part, p.anchor, p.anchor + m, self.clock(),
                                      checks=list(self.survival_s)))
        else:
            self.emit(p.id, "rejected", {"reason": reason, "typed_matching": m})

    def _label(self, sid: str, text: str | None, how: str) -> None:
        if sid in self._labelled:
            return
        self._labelled[sid] = None
        if len(self._labelled) > 4096:
            self._labelled.popitem(last=False)
        detail: dict = {"how": how}
        if text is not None:
            detail.update(chars=len(text), lines=text.count("\n") + 1)
        self.emit(sid, "accepted", detail)

    def _survival(self, doc: _Doc, w: _Watch, after: float, *, final: bool) -> None:
        now_text = doc.text[w.start:w.end]
        kept = sum(b.size for b in SequenceMatcher(None, w.text, now_text, autojunk=False).get_matching_blocks())
        detail = {"after_s": after, "chars": kept, "of_chars": len(w.text),
                  "ratio": round(kept / len(w.text), 4) if w.text else 0.0}
        if final:
            detail["final_text"] = now_text  # what the user kept: the export's target
        self.emit(w.id, "survived", detail)


def _move(w: _Watch, start: int, removed: int, inserted: str) -> None:
    """Carry an accepted region through one edit."""
    end_of_edit = start + removed
    if w.start == w.end and start == w.start and removed == 0:
        w.end = start + len(inserted)  # accepted by command before the edit arrived
        return
    if end_of_edit <= w.start:
        d = len(inserted) - removed
        w.start += d
        w.end += d
        return
    if start >= w.end:
        return
    new_start = min(w.start, start)
    new_end = w.end + len(inserted) - removed if end_of_edit <= w.end else start + len(inserted)
    w.start, w.end = new_start, max(new_start, new_end)
