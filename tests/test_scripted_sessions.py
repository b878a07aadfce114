"""Scripted editing sessions with known labels through the real feedback inference: the
confusion table must agree ≥ 98 %, and each behaviour the issue names is in the corpus."""

import json
import random

import pytest

from ghost_lsp.feedback.infer import Tracker
from ghost_lsp.tools.evals.scripted import (LONG_WAITS, SCENARIOS, Change, Command, build, confusion, corpus,
                                         format_confusion, replay)
from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

FILES = [("sample.py", TINY_CORPUS)]


@pytest.fixture(scope="module")
def result():
    return confusion([replay(s) for s in corpus(FILES, per_scenario=15, seed=3)])


def test_every_scenario_is_played_and_labels_agree(result):
    assert set(result["per_scenario"]) == set(SCENARIOS)
    assert all(v["n"] == 15 for v in result["per_scenario"].values())
    assert result["agreement"] >= 0.98, format_confusion(result)
    assert result["survival"]["checked"] >= 45 and result["survival"]["rate"] >= 0.98
    # every label the issue names shows up as meant and as inferred
    for label in ("accepted", "partially_accepted", "typed_anyway", "rejected"):
        assert result["table"][label][label] > 0


def test_a_wrong_inference_shows_in_the_table():
    """The table is computed, not assumed: a tracker that never labels is all disagreement."""
    s = build("typed_anyway", "def f():\n    \n", 13, "return 1", "pass", random.Random(0))
    s.actions = [a for a in s.actions if not isinstance(a, Change)]  # nothing typed: it expires
    r = confusion([replay(s)])
    assert r["agreement"] == 0.0 and r["table"]["typed_anyway"]["rejected"] == 1
    assert r["disagreements"][0]["scenario"] == "typed_anyway"


def test_sessions_drive_the_document_like_an_editor():
    doc = "def f(x):\n    \n"
    s = build("typed_anyway", doc, 14, "return g(x[0])", "pass", random.Random(1))
    s2 = build("accept_command", doc, 14, "return g(x[0])", "pass", random.Random(1))
    text = doc
    for a in s.actions:
        if isinstance(a, Change):
            text = text[:a.start] + a.text + text[a.end:]
    assert text == "def f(x):\n    return g(x[0])\n"  # auto-closed brackets overtyped, not doubled
    assert any(isinstance(a, Command) for a in s2.actions)
    assert not any(isinstance(a, Command) for a in s.actions)


def test_typo_fixed_with_backspace_and_trailing_opener_are_typed_anyway():
    events = []
    tr = Tracker(lambda *e: events.append(e), clock=lambda: 0.0)
    doc = "x = 1\n"
    tr.shown("u", "a", "foo(bar[", doc, 6)
    for t in ["f", "fq", "f", "fo", "foo", "foo()", "foo(b)", "foo(ba)", "foo(bar)", "foo(bar[])"]:
        tr.changed("u", doc + t)
    assert [e[1] for e in events] == ["typed_anyway"]


def test_two_wrong_characters_are_typing_something_else():
    events = []
    tr = Tracker(lambda *e: events.append(e), clock=lambda: 0.0)
    tr.shown("u", "a", "return x", "", 0)
    for t in ["r", "re", "rex", "rexy"]:
        tr.changed("u", t)
    assert events == [("a", "rejected", {"reason": "typed_other", "typed_matching": 2})]


def test_long_wait_scenarios_are_marked():
    s = corpus(FILES, per_scenario=1, seed=0)
    assert {x.scenario for x in s if x.long_waits} == LONG_WAITS


def test_sessions_command_prints_the_table(capsys):
    from ghost_lsp.cli import main

    assert main(["sessions", "--per-scenario", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sessions"] == 3 * len(SCENARIOS) and out["agreement"] >= 0.98
    assert main(["sessions", "--project", "/nonexistent-dir-for-test"]) == 1
