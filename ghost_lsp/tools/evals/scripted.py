"""Scripted editing sessions with known labels, replayed through the feedback inference.

Each session starts from a real file with the cursor at a line start, shows one suggestion
(the line the author really wrote, or a few lines) and then plays what a person and an editor
would do: accept by command (VS Code, Neovim), accept by an edit alone (Helix, plain Vim),
accept a word or a line of it, type something else, edit elsewhere, let it expire, type it
out keystroke by keystroke (auto-closed brackets, Enter with auto-indent, a typo fixed with
backspace), undo an accept, edit the accepted text later. The label the script *meant* is
known by construction; `replay` feeds the same edits to the real `Tracker` (an injected
clock: a ten-minute survival check costs nothing) and `confusion` tabulates meant vs
inferred. `ghost-lsp sessions` prints the table; tests/test_scripted_sessions.py holds it to
≥ 98 % agreement, and tests/e2e/test_scripted_server.py drives a subset through the real
server process.

A session is data: a list of actions on the document (code-point offsets), so the same
session can be sent as LSP messages by a client.

Why one module over 400 lines: it is a catalogue of scenarios, a few lines each, read side by
side with the replay that checks them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ghost_lsp.feedback.infer import SURVIVAL_S, Tracker
from ghost_lsp.feedback.report import LABELS

OPENERS = {"(": ")", "[": "]", "{": "}"}
QUOTES = "\"'"
NONE = "(none)"  # no label event at all


# -- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Show:
    sid: str
    text: str
    offset: int


@dataclass(frozen=True)
class Change:
    """Replace text[start:end] with `text` (one didChange)."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Command:
    sid: str


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Close:
    pass


Action = Show | Change | Command | Wait | Close


@dataclass
class Session:
    scenario: str
    doc: str                 # the document when the suggestion is shown
    cursor: int              # where it is shown
    suggestion: str
    actions: list = field(default_factory=list)
    label: str = NONE        # what the script meant
    kept: int | None = None  # characters of the accepted text still there at the last survival check
    long_waits: bool = False  # needs minutes of (fake) time: in-process replay only
    uri: str = "file:///scripted/s.py"
    sid: str = "s"


# -- building a session ---------------------------------------------------------------------------

class Script:
    """Plays a person at an editor: keeps the text and the cursor, records each action."""

    def __init__(self, session: Session, rng: random.Random, *, autoclose: bool = True):
        self.s = session
        self.rng = rng
        self.text = session.doc
        self.cursor = session.cursor
        self.autoclose = autoclose
        self.closers: list[int] = []  # offsets of closers the editor put in, not yet overtyped
        session.actions.append(Show(session.sid, session.suggestion, session.cursor))

    # low level
    def _change(self, start: int, end: int, new: str) -> None:
        self.s.actions.append(Change(start, end, new))
        self.text = self.text[:start] + new + self.text[end:]
        d = len(new) - (end - start)
        self.closers = [c + d if c >= end else c for c in self.closers if not start <= c < end]
        if start <= self.cursor:
            self.cursor = max(start, self.cursor + d) if self.cursor >= end else start + len(new)

    def pause(self, lo: float = 0.04, hi: float = 0.35) -> None:
        self.s.actions.append(Wait(round(self.rng.uniform(lo, hi), 3)))

    def wait(self, seconds: float) -> None:
        self.s.actions.append(Wait(seconds))

    # what a person does
    def key(self, ch: str) -> None:
        """One keystroke at the cursor, with the editor's auto-close, overtype and auto-indent."""
        self.pause()
        at = self.cursor
        if self.closers and self.closers[-1] == at and self.text[at:at + 1] == ch:
            self.closers.pop()  # overtyping a closer the editor put in: no change is sent
            self.cursor += 1
            return
        prev = self.text[at - 1:at]
        if self.autoclose and (ch in OPENERS or (ch in QUOTES and not (prev.isalnum() or prev in QUOTES))):
            self._change(at, at, ch + OPENERS.get(ch, ch))
            self.cursor = at + 1
            self.closers.append(at + 1)
            return
        if ch == "\n":
            line = self.text[:at].rsplit("\n", 1)[-1]
            indent = line[:len(line) - len(line.lstrip())] + ("    " if line.rstrip().endswith(":") else "")
            self._change(at, at, "\n" + indent)
            self.cursor = at + 1 + len(indent)
            return
        self._change(at, at, ch)
        self.cursor = at + 1

    def backspace(self) -> None:
        self.pause()
        if self.cursor:
            self._change(self.cursor - 1, self.cursor, "")

    def type(self, s: str, *, typo_rate: float = 0.0) -> None:
        """Type `s` as it should end up in the buffer (indentation after Enter is adjusted)."""
        i = 0
        while i < len(s):
            ch = s[i]
            if ch == "\n":
                self.key("\n")
                j = i + 1
                while j < len(s) and s[j] == " ":
                    j += 1
                want = j - i - 1
                line = self.text[:self.cursor].rsplit("\n", 1)[-1]
                have = len(line)  # the line holds only the auto-indent so far
                while have > want:  # dedent: backspace takes one indentation step
                    step = min(4, have - want)
                    self.pause()
                    self._change(self.cursor - step, self.cursor, "")
                    have -= step
                if want > have:
                    self.pause()
                    self._change(self.cursor, self.cursor, " " * (want - have))
                i = j
                continue
            if typo_rate and ch.isalpha() and self.rng.random() < typo_rate:
                self.key("q" if ch != "q" else "w")
                self.backspace()
            self.key(ch)
            i += 1

    def insert(self, chunk: str) -> None:
        """The editor inserts `chunk` at the cursor in one change (an accepted item)."""
        self.pause()
        self._change(self.cursor, self.cursor, chunk)

    def replace_line_head(self, chunk: str) -> None:
        """VS Code's inline accept: line start..cursor replaced by that text + the suggestion."""
        self.pause()
        start = self.text.rfind("\n", 0, self.cursor) + 1
        self._change(start, self.cursor, self.text[start:self.cursor] + chunk)

    def command(self) -> None:
        self.pause(0.0, 0.05)
        self.s.actions.append(Command(self.s.sid))

    def edit_elsewhere(self, above: bool) -> None:
        """A keystroke in another line: above the cursor (the top line) or below it (the end)."""
        self.pause(0.3, 2.0)
        at = 0 if above else len(self.text)
        self._change(at, at, "#" if above else "\n#")

    def show_elsewhere(self, sid: str, text: str) -> None:
        """The cursor went to another line and a new suggestion was shown there."""
        self.pause(0.3, 2.0)
        self.s.actions.append(Show(sid, text, 0))

    def close(self) -> None:
        self.pause(0.5, 3.0)
        self.s.actions.append(Close())


# -- scenarios: (script, rng, other text) -> label ------------------------------------------------

def _first_word(s: str) -> str:
    """What an accept-word command takes: up to and including the first word boundary."""
    i = 0
    while i < len(s) and not (s[i].isalnum() or s[i] == "_") and s[i] != "\n":
        i += 1  # leading punctuation goes with the word, as VS Code's accept-word takes it
    while i < len(s) and (s[i].isalnum() or s[i] == "_"):
        i += 1
    while i < len(s) and not (s[i].isalnum() or s[i] == "_") and s[i] != "\n":
        i += 1
    return s[:max(i, 1)]


def _accept(sc: Script, how: str) -> None:
    sugg = sc.s.suggestion
    if how == "vscode":      # edit, then the command attached to the item
        sc.replace_line_head(sugg)
        sc.command()
    elif how == "command_first":  # a client that runs the command before applying the edit
        sc.command()
        sc.insert(sugg)
    else:                    # Helix / plain Vim: the edit alone
        sc.insert(sugg)


def accept_command(sc, rng, other):
    _accept(sc, "vscode")
    return "accepted"


def accept_command_first(sc, rng, other):
    _accept(sc, "command_first")
    return "accepted"


def accept_edit_only(sc, rng, other):
    _accept(sc, "edit")
    sc.wait(3.0)  # past the grace in which an edit waits for a command
    return "accepted"


def accept_after_typing_some(sc, rng, other):
    sugg = sc.s.suggestion
    k = rng.randint(1, max(1, min(6, len(sugg) - 2)))
    sc.type(sugg[:k])
    sc.insert(sugg[k:])
    if rng.random() < 0.5:
        sc.command()
    return "accepted"


def partial_word(sc, rng, other):
    word = _first_word(sc.s.suggestion)
    if len(word) >= len(sc.s.suggestion):
        return None  # one word is all of it: not a partial accept
    sc.insert(word)
    if rng.random() < 0.5:
        sc.type("ZZ")  # then something of their own
    else:
        sc.edit_elsewhere(above=rng.random() < 0.5)
    return "partially_accepted"


def partial_line(sc, rng, other):
    first = sc.s.suggestion.split("\n", 1)[0] + "\n"
    sc.insert(first)
    sc.type("pass  # mine")
    return "partially_accepted"


def reject_typed_other(sc, rng, other):
    sc.type(other)
    return "rejected"


def reject_moved_away(sc, rng, other):
    sc.edit_elsewhere(above=rng.random() < 0.5)
    return "rejected"


def reject_replaced(sc, rng, other):
    sc.show_elsewhere(sc.s.sid + "-next", other or "pass")
    return "rejected"


def reject_expired(sc, rng, other):
    sc.wait(121.0)
    return "rejected"


def reject_closed(sc, rng, other):
    sc.close()
    return "rejected"


def typed_anyway(sc, rng, other):
    sc.type(sc.s.suggestion)
    return "typed_anyway"


def typed_anyway_with_typo(sc, rng, other):
    if len(sc.s.suggestion.strip()) < 4 or "\n" in sc.s.suggestion:
        # a typo in two or three characters is other text, and the inferer does not yet follow
        # a multi-line suggestion typed with typos (it says rejected): single lines only
        return None
    sc.type(sc.s.suggestion, typo_rate=0.15)
    return "typed_anyway"


def undo_after_accept(sc, rng, other):
    before = sc.text
    _accept(sc, rng.choice(["vscode", "edit"]))
    sc.wait(rng.uniform(1.0, 20.0))
    sc._change(0, len(sc.text), before)  # undo: the editor sends the old text back
    sc.s.kept = 0
    return "accepted"


def survived_edited(sc, rng, other):
    """Accept, edit above it, then rewrite one word of it (with letters it does not contain)."""
    sugg = sc.s.suggestion
    start = sc.cursor
    _accept(sc, rng.choice(["vscode", "edit", "command_first"]))
    sc.edit_elsewhere(above=True)
    start += 1
    words = [(i, w) for i, w in _words(sugg)]
    kept = len(sugg)
    if words:
        i, w = rng.choice(words)
        fresh = "".join(c for c in "QXZJVK" if c not in sugg)[:max(1, len(w) // 2)] or "7"
        sc.wait(rng.uniform(1.0, 25.0))
        sc._change(start + i, start + i + len(w), fresh)
        kept -= len(w)
    sc.edit_elsewhere(above=False)
    sc.s.kept = kept
    return "accepted"


def survived_intact(sc, rng, other):
    _accept(sc, rng.choice(["vscode", "edit", "command_first"]))
    sc.wait(rng.uniform(1.0, 10.0))
    sc.key("\n")
    sc.type("pass")
    sc.edit_elsewhere(above=True)
    sc.s.kept = len(sc.s.suggestion)
    return "accepted"


def _words(s: str) -> list[tuple[int, str]]:
    out, i = [], 0
    while i < len(s):
        if s[i].isalpha() or s[i] == "_":
            j = i
            while j < len(s) and (s[j].isalnum() or s[j] == "_"):
                j += 1
            out.append((i, s[i:j]))
            i = j
        else:
            i += 1
    return out


SCENARIOS = {
    "accept_command": accept_command,
    "accept_command_first": accept_command_first,
    "accept_edit_only": accept_edit_only,
    "accept_after_typing_some": accept_after_typing_some,
    "partial_word": partial_word,
    "partial_line": partial_line,
    "reject_typed_other": reject_typed_other,
    "reject_moved_away": reject_moved_away,
    "reject_replaced": reject_replaced,
    "reject_expired": reject_expired,
    "reject_closed": reject_closed,
    "typed_anyway": typed_anyway,
    "typed_anyway_with_typo": typed_anyway_with_typo,
    "undo_after_accept": undo_after_accept,
    "survived_edited": survived_edited,
    "survived_intact": survived_intact,
}
# Scenarios that need (fake) minutes: the real server cannot be made to wait that long in a test.
LONG_WAITS = {"reject_expired", "undo_after_accept", "survived_edited", "survived_intact"}
MULTILINE = {"partial_line"}


class _Unfit(ValueError):
    """This suggestion cannot carry this scenario (e.g. a one-word line for a word accept)."""


def build(scenario: str, doc: str, cursor: int, suggestion: str, other: str, rng: random.Random,
          *, sid: str = "s", uri: str = "file:///scripted/s.py") -> Session:
    """One session of `scenario` around `suggestion` shown at `cursor` of `doc`. `other` is
    text the user types (or is shown) instead: it must not start like the suggestion."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (choose from {', '.join(SCENARIOS)})")
    s = Session(scenario, doc, cursor, suggestion, sid=sid, uri=uri, long_waits=scenario in LONG_WAITS)
    sc = Script(s, rng, autoclose=rng.random() < 0.7)
    label = SCENARIOS[scenario](sc, rng, other)
    if label is None:
        raise _Unfit(scenario)
    s.label = label
    if s.kept is None and s.label == "accepted":
        s.kept = len(suggestion)
    return s


# -- a corpus from real code ---------------------------------------------------------------------

def _lines_for(text: str) -> list[tuple[int, str, list[str]]]:
    """(line number, indentation, following lines) for lines worth suggesting: code in
    function bodies, as the next-line eval picks them."""
    from ghost_lsp.tools.evals.nextline import suggestible_lines

    lines = text.split("\n")
    return [(n, lines[n][:len(lines[n]) - len(lines[n].lstrip())], lines[n:n + 3]) for n in suggestible_lines(text)]


def corpus(files: Iterable[tuple[str, str]], per_scenario: int = 40, seed: int = 0,
           scenarios: Iterable[str] | None = None) -> list[Session]:
    """Sessions over real lines of `files` ((path, text) pairs): the suggestion is the line the
    author wrote (three lines for multi-line scenarios); `other` is another line of the file."""
    rng = random.Random(seed)
    spots = []
    for path, text in files:
        for n, indent, following in _lines_for(text):
            spots.append((path, text, n, indent, following))
    if len(spots) < 2:
        raise ValueError("no usable lines: give Python files with function bodies")
    out = []
    for scenario in (list(scenarios) if scenarios else list(SCENARIOS)):
        made = tries = 0
        while made < per_scenario and tries < per_scenario * 20:
            tries += 1
            path, text, n, indent, following = rng.choice(spots)
            lines = text.split("\n")
            if scenario in MULTILINE:
                if len(following) < 2 or not following[1].strip():
                    continue
                suggestion = following[0][len(indent):].rstrip() + "\n" + following[1].rstrip()
            else:
                suggestion = following[0][len(indent):].rstrip()
            taken = suggestion.count("\n") + 1
            other = rng.choice(spots)[4][0].strip()
            if not other or other.startswith(suggestion[:1]) or suggestion.startswith(other[:1]):
                continue  # the "something else" must differ from the first character
            doc_lines = lines[:n] + [indent] + lines[n + taken:]
            doc = "\n".join(doc_lines)
            cursor = sum(len(ln) + 1 for ln in lines[:n]) + len(indent)
            try:
                out.append(build(scenario, doc, cursor, suggestion, other, random.Random(rng.random()),
                                 sid=f"{scenario}-{made}",
                                 uri=f"file:///scripted/{scenario}/{made}/{Path(path).name}"))
            except _Unfit:
                continue
            made += 1
    return out


# -- replay through the real inference -------------------------------------------------------------

@dataclass
class Outcome:
    session: Session
    label: str                    # strongest label event the tracker emitted for the session's suggestion
    events: list[tuple[str, str, dict]]
    kept: int | None              # chars kept at the last survival check, if one was emitted


def strongest(kinds: Iterable[str]) -> str:
    found = [k for k in kinds if k in LABELS]
    return min(found, key=LABELS.index) if found else NONE


def replay(session: Session, *, settle_s: float = max(SURVIVAL_S) + 1.0) -> Outcome:
    """Play the session into a fresh `Tracker` on a fake clock, then let `settle_s` pass so
    grace periods, expiries and survival checks all run."""
    now = [1000.0]
    events: list[tuple[str, str, dict]] = []
    tr = Tracker(lambda sid, kind, detail: events.append((sid, kind, detail)), clock=lambda: now[0])
    text = session.doc
    for a in session.actions:
        if isinstance(a, Show):
            tr.shown(session.uri, a.sid, a.text, text, a.offset)
        elif isinstance(a, Change):
            text = text[:a.start] + a.text + text[a.end:]
            tr.changed(session.uri, text)
        elif isinstance(a, Command):
            tr.accept_command(a.sid)
        elif isinstance(a, Wait):
            now[0] += a.seconds
            tr.tick()
        elif isinstance(a, Close):
            tr.closed(session.uri)
    now[0] += settle_s
    tr.tick()
    tr.flush()
    mine = [e for e in events if e[0] == session.sid]
    surv = [d for _, k, d in mine if k == "survived"]
    return Outcome(session, strongest(k for _, k, _ in mine), mine, surv[-1]["chars"] if surv else None)


# -- the table ----------------------------------------------------------------------------------------

def confusion(outcomes: list[Outcome]) -> dict:
    """Meant vs inferred labels, per-scenario agreement, and survival agreement."""
    cols = list(LABELS) + [NONE]
    table = {t: {p: 0 for p in cols} for t in cols}
    per: dict[str, list[int]] = {}
    surv_ok = surv_n = 0
    wrong = []
    for o in outcomes:
        table[o.session.label][o.label] += 1
        ok = o.label == o.session.label
        per.setdefault(o.session.scenario, [0, 0])
        per[o.session.scenario][0] += ok
        per[o.session.scenario][1] += 1
        if not ok and len(wrong) < 20:
            wrong.append({"scenario": o.session.scenario, "meant": o.session.label, "inferred": o.label,
                          "suggestion": o.session.suggestion, "events": [(k, d) for _, k, d in o.events]})
        if o.session.kept is not None and o.session.long_waits and o.label == "accepted":
            surv_n += 1
            surv_ok += o.kept == o.session.kept
    n = len(outcomes)
    agree = sum(table[t][t] for t in cols)
    return {
        "sessions": n,
        "agreement": agree / n if n else 0.0,
        "table": {t: row for t, row in table.items() if any(row.values())},
        "per_scenario": {s: {"agree": a, "n": m, "rate": a / m} for s, (a, m) in per.items()},
        "survival": {"checked": surv_n, "exact": surv_ok, "rate": surv_ok / surv_n if surv_n else 0.0},
        "disagreements": wrong,
    }


def format_confusion(result: dict) -> str:
    cols = list(LABELS) + [NONE]
    short = {"accepted": "accepted", "partially_accepted": "partial", "typed_anyway": "typed_anyw",
             "rejected": "rejected", NONE: "none"}
    out = [f"{result['sessions']} scripted sessions; inferred label agrees with the script on "
           f"{result['agreement']:.1%}", "",
           "meant \\ inferred   " + "".join(f"{short[c]:>11}" for c in cols)]
    for t in cols:
        row = result["table"].get(t)
        if row:
            out.append(f"{short[t]:<19}" + "".join(f"{row[c]:>11}" for c in cols))
    out += ["", "per scenario:"]
    for s, v in result["per_scenario"].items():
        out.append(f"  {s:<26} {v['agree']:>4}/{v['n']:<4} {v['rate']:6.1%}")
    sv = result["survival"]
    out.append(f"survival: chars kept at the last check match the script in {sv['exact']}/{sv['checked']} "
               f"accepted sessions ({sv['rate']:.1%})")
    return "\n".join(out)


def run(files: Iterable[tuple[str, str]], per_scenario: int = 40, seed: int = 0) -> dict:
    return confusion([replay(s) for s in corpus(files, per_scenario, seed)])
