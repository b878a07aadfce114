"""Event inference from document edits, with a hand-driven clock, into a real SQLite file."""

import json
import sqlite3

import pytest

from ghost_lsp.feedback import FeedbackStore
from ghost_lsp.feedback.infer import Tracker, diff

URI = "file:///w/a.py"
DOC = "def add(a, b):\n    \n\nprint(add(1, 2))\n"
AT = DOC.index("    \n") + 4  # cursor at the end of the indented empty line
SUGG = "return a + b"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def env(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    clock = Clock()
    tracker = Tracker(store.record_event, clock=clock)
    yield store, clock, tracker, tmp_path / "f.db"
    store.close()


def events(store, path):
    assert store.flush(5)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT suggestion_id, kind, detail FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(s, k, json.loads(d) if d else None) for s, k, d in rows]


def insert(text, at, s):
    return text[:at] + s + text[at:]


def type_chars(tracker, clock, text, at, s):
    for ch in s:
        text = insert(text, at, ch)
        at += 1
        clock.t += 0.15
        tracker.changed(URI, text)
    return text


def test_diff_finds_the_single_edit():
    assert diff("abcdef", "abXYdef") == (2, 1, "XY")
    assert diff("abc", "abc") == (3, 0, "")
    assert diff("", "x") == (0, 0, "x")


def test_typed_anyway(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    type_chars(tr, clock, DOC, AT, SUGG)
    (ev,) = events(store, path)
    assert ev[:2] == ("s1", "typed_anyway") and ev[2]["chars"] == len(SUGG)


def test_typed_anyway_with_repeated_letters_and_auto_closed_pair(env):
    store, clock, tr, path = env
    sugg = "print(ee)"
    tr.shown(URI, "s1", sugg, DOC, AT)
    text = type_chars(tr, clock, DOC, AT, "print")
    text = insert(text, AT + 5, "()")  # the editor closes the bracket
    tr.changed(URI, text)
    text = type_chars(tr, clock, text, AT + 6, "ee")
    text = type_chars(tr, clock, text, AT + 8, "")  # (overtyping the ")" keeps the text)
    tr.changed(URI, text)
    assert [e[1] for e in events(store, path)] == ["typed_anyway"]


def test_accepted_by_edit_then_command_is_one_accept(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    tr.changed(URI, insert(DOC, AT, SUGG))  # the editor inserts the item in one change
    tr.accept_command("s1")
    clock.t += 5
    tr.tick()
    assert events(store, path) == [("s1", "accepted", {"how": "command", "chars": 12, "lines": 1})]


def test_accepted_by_edit_alone_is_labelled_after_the_grace(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    tr.changed(URI, insert(DOC, AT, SUGG))
    tr.tick()
    assert events(store, path) == []  # waiting for a command that may follow
    clock.t += 2.5
    tr.tick()
    assert events(store, path) == [("s1", "accepted", {"how": "edit", "chars": 12, "lines": 1})]


def test_vscode_style_accept_replacing_from_line_start(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    line_start = DOC.rindex("\n", 0, AT) + 1
    new = DOC[:line_start] + "    " + SUGG + DOC[AT:]  # range line start..cursor, text repeats the line
    tr.changed(URI, new)
    tr.accept_command("s1")
    assert events(store, path)[0][:2] == ("s1", "accepted")


def test_command_before_the_edit(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    tr.accept_command("s1")
    text = insert(DOC, AT, SUGG)
    tr.changed(URI, text)
    clock.t += 31
    tr.tick()
    ev = events(store, path)
    assert ev[0][:2] == ("s1", "accepted")
    assert ev[1][1] == "survived" and ev[1][2]["chars"] == len(SUGG)


def test_partially_accepted_then_typed_other(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    text = insert(DOC, AT, "return ")  # word-accept: one chunk
    tr.changed(URI, text)
    type_chars(tr, clock, text, AT + 7, "None")
    (ev,) = events(store, path)
    assert ev[:2] == ("s1", "partially_accepted")
    assert ev[2]["chars"] == 7 and ev[2]["lines"] == 1 and ev[2]["then"] == "typed_other"


def test_rejected_by_typing_something_else(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    type_chars(tr, clock, DOC, AT, "retry")
    assert events(store, path) == [("s1", "rejected", {"reason": "typed_other", "typed_matching": 3})]


def test_rejected_by_moving_away(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    tr.changed(URI, "# header\n" + DOC)
    assert events(store, path)[0][1:] == ("rejected", {"reason": "moved_away", "typed_matching": 0})


def test_rejected_when_replaced_but_not_when_typed_through(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    tr.shown(URI, "s2", "pass", DOC, AT)  # asked again at the same spot: s1 is gone
    text = type_chars(tr, clock, DOC, AT, "p")
    tr.shown(URI, "s3", "ass", text, AT + 1)  # typing through s2: it stays followed
    type_chars(tr, clock, text, AT + 1, "ass")
    kinds = [(e[0], e[1]) for e in events(store, path)]
    assert ("s1", "rejected") in kinds and ("s2", "typed_anyway") in kinds and ("s3", "typed_anyway") in kinds
    assert events(store, path)[0][2]["reason"] == "replaced"


def test_expired_and_closed(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    clock.t += 121
    tr.tick()
    tr.shown("file:///w/b.py", "s2", SUGG, DOC, AT)
    tr.closed("file:///w/b.py")
    assert [(e[0], e[2]["reason"]) for e in events(store, path)] == [("s1", "expired"), ("s2", "closed")]


def test_survival_after_edits_and_undo(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    text = insert(DOC, AT, SUGG)
    tr.changed(URI, text)
    tr.accept_command("s1")
    text = "import os\n" + text  # an edit above moves the text down
    tr.changed(URI, text)
    clock.t += 30
    tr.tick()
    at = AT + len("import os\n")
    text = text[:at + 9] + "-" + text[at + 10:]  # the user rewrites part of it: "a - b"
    tr.changed(URI, text)
    clock.t += 90
    tr.tick()
    text = text[:at] + text[at + len(SUGG):]  # then deletes it
    tr.changed(URI, text)
    clock.t += 480
    tr.tick()
    surv = [e[2] for e in events(store, path) if e[1] == "survived"]
    assert [s["after_s"] for s in surv] == [30.0, 120.0, 600.0]
    assert surv[0]["ratio"] == 1.0
    assert 0.5 < surv[1]["ratio"] < 1.0
    assert surv[2]["chars"] == 0 and surv[2]["final_text"] == ""
    assert tr.docs[URI].watches == []


def test_survival_of_a_closed_document_uses_its_last_text(env):
    store, clock, tr, path = env
    tr.shown(URI, "s1", SUGG, DOC, AT)
    tr.changed(URI, insert(DOC, AT, SUGG))
    tr.accept_command("s1")
    tr.closed(URI)
    clock.t += 601
    tr.tick()
    surv = [e[2] for e in events(store, path) if e[1] == "survived"]
    assert len(surv) == 3 and surv[-1]["final_text"] == SUGG
    assert URI not in tr.docs


def test_unknown_document_changes_keep_no_copy(env):
    store, clock, tr, path = env
    tr.changed("file:///w/other.py", "x = 1")
    assert tr.docs == {}
    tr.accept_command("never-shown")  # the command is still recorded
    assert events(store, path) == [("never-shown", "accepted", {"how": "command"})]


def test_accepting_the_newest_suggestion_gives_older_typed_through_ones_no_credit(env):
    """Typing through a suggestion keeps it followed while new ones are shown at the typing
    point; the editor inserting the newest one is its accept, not a partial accept (or a second
    accept) of the older ones."""
    store, clock, tracker, path = env
    tracker.shown(URI, "old", "return a + c", DOC, AT)
    text = type_chars(tracker, clock, DOC, AT, "re")
    tracker.shown(URI, "new", "turn a + b", text, AT + 2)
    clock.t += 0.2
    tracker.changed(URI, insert(text, AT + 2, "turn a + b"))  # the editor inserts the item
    tracker.accept_command("new")
    clock.t += 5
    tracker.tick()
    got = [(s, k, d) for s, k, d in events(store, path) if k != "survived"]
    assert [(s, k) for s, k, _ in got] == [("old", "rejected"), ("new", "accepted")]
    assert got[0][2]["reason"] == "replaced"
