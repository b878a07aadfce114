"""stats and export over a real feedback file written by the store and the tracker."""

import json
import math

import pytest

from ghost_lsp.cli import main
from ghost_lsp.feedback import FeedbackStore
from ghost_lsp.settings.ab import assign, choose, parse_variants
from ghost_lsp.feedback.report import load, parse_since, two_proportion_p, wilson
from ghost_lsp.settings.core import Settings
from ghost_lsp.types import Candidate, Completion, CompletionRequest

REQ = CompletionRequest(uri="file:///w/a.py", version=1, line=0, character=0)


def shown(store, sid, variant, text="return x", prompt="def f(x):\n    ", cuts=(), latency=10.0):
    c = Completion(id=sid, text=text, candidate=Candidate(text=text, logprobs=[-1.0]), cut_reasons=list(cuts),
                   timings_ms={"total_ms": latency}, prompt_template="starcoder@2", prompt_hash="h" + sid,
                   model_id="m", prompt=prompt, variant=variant)
    store.record_shown(c, REQ)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "f.db"
    store = FeedbackStore(path)
    # variant A: 60 of 100 accepted; variant B: 20 of 100
    for i in range(100):
        shown(store, f"a{i}", "A", cuts=("cycle",) if i < 10 else (), latency=float(i))
        store.record_event(f"a{i}", "accepted" if i < 60 else "rejected", {"how": "command"})
        shown(store, f"b{i}", "B", latency=100.0 + i)
        store.record_event(f"b{i}", "typed_anyway" if i < 5 else ("accepted" if i < 25 and i >= 5 else "rejected"))
    store.record_event("a0", "survived", {"after_s": 30.0, "ratio": 1.0})
    store.record_event("a0", "survived", {"after_s": 600.0, "ratio": 0.5, "final_text": "return x + 1"})
    # a partial accept and a duplicate (same prompt hash and text) for the export
    shown(store, "p1", "A", text="return x + 1", prompt="API_KEY=letmein123\ndef g(x):\n    ")
    store.record_event("p1", "partially_accepted", {"chars": 8})
    store.close()
    return path


def test_wilson_and_z_test():
    lo, hi = wilson(60, 100)
    assert lo < 0.6 < hi and math.isclose(lo, 0.502, abs_tol=0.002) and math.isclose(hi, 0.691, abs_tol=0.002)
    assert two_proportion_p(60, 100, 20, 100) < 1e-6
    assert two_proportion_p(50, 100, 52, 100) > 0.5


def test_stats_per_variant_with_verdict(db, capsys):
    assert main(["stats", "--db", str(db), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    a, b = r["variant"]["A"], r["variant"]["B"]
    assert a["shown"] == 101 and a["accepted"] == 60 and a["partially_accepted"] == 1
    assert math.isclose(a["acceptance_rate"], 61 / 101)
    assert b["typed_anyway"] == 5 and math.isclose(b["typed_anyway_rate"], 0.05)
    assert math.isclose(a["loop_cut_rate"], 10 / 101)
    assert a["survival"]["30s"] == {"n": 1, "mean_ratio": 1.0}
    assert r["ab"]["significant"] and r["ab"]["verdict"].startswith("A has the higher")
    assert r["overall"]["shown"] == 201 and r["model_id"]["m"]["shown"] == 201
    assert main(["stats", "--db", str(db)]) == 0
    assert "per A/B variant" in capsys.readouterr().out


def test_export_jsonl(db, tmp_path, capsys):
    out = tmp_path / "ft.jsonl"
    assert main(["export", "--db", str(db), "--out", str(out), "--kinds", "accepted,partially_accepted"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 60 + 20 + 1
    a0 = next(r for r in recs if r["id"] == "a0")
    assert a0["completion"] == "return x" and a0["final_text"] == "return x + 1" and a0["label"] == "accepted"
    p1 = next(r for r in recs if r["id"] == "p1")
    assert p1["completion"] == "return x" and p1["label"] == "partially_accepted"
    assert "letmein123" not in out.read_text()
    assert {tuple(sorted(r)) for r in recs} == {tuple(sorted(a0))}  # one schema: loads as a table
    assert main(["export", "--db", str(db), "--out", str(out), "--kinds", "bogus"]) == 2
    assert main(["export", "--db", str(tmp_path / "none.db"), "--out", str(out)]) == 1
    assert "no feedback database" in capsys.readouterr().err


def test_since(db):
    assert len(load(db, parse_since("1h"))) == 201
    assert load(db, parse_since("2999-01-01")) == []
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_ab_assignment_is_deterministic_and_weighted():
    vs, warnings = parse_variants([{"name": "A", "weight": 3}, {"name": "B", "weight": 1, "temperature": 0.2},
                                   {"name": ""}, {"name": "C", "weight": -1}, "x"])
    assert [v.name for v in vs] == ["A", "B"] and len(warnings) == 3
    picks = [assign(vs, f"/ws/{i}").name for i in range(2000)]
    assert picks == [assign(vs, f"/ws/{i}").name for i in range(2000)]
    assert 0.70 < picks.count("A") / 2000 < 0.80
    s = Settings(variants=({"name": "A", "weight": 0}, {"name": "B", "temperature": 0.2, "prompts": "/p"}))
    s2, name, w = choose(s, "/ws/1")
    assert name == "B" and s2.temperature == 0.2 and s2.prompts == "/p" and w == []
    assert choose(Settings(), "/ws")[1] == ""
