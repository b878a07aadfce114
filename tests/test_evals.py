"""The eval harness: sandbox, HumanEval scoring, pipeline-driven evals, history and reports."""

import io
import json
import sqlite3
import tarfile

import pytest

from ghost_lsp import cli
from ghost_lsp.cli import common
from ghost_lsp.tools.evals import humaneval as he
from ghost_lsp.tools.evals.history import History, Record, compare
from ghost_lsp.tools.evals.nextline import sample_positions
from ghost_lsp.tools.evals.sandbox import Limits, run_program
from ghost_lsp.tools.evals.sources import read_python_files
from ghost_lsp.tools.evals.stats import paired

FAST = Limits(timeout_s=2, memory_mb=512)


@pytest.fixture
def quiet_logging(monkeypatch):
    monkeypatch.setattr(common, "setup_logging", lambda *a: None)


# -- sandbox -------------------------------------------------------------------------------------


@pytest.mark.parametrize("program, status, detail", [
    ("assert sum([1, 2]) == 3", "passed", ""),
    ("assert 1 == 2", "failed", "AssertionError"),
    ("while True:\n    pass", "timeout", "killed"),
    ("import os\nos.fork()", "failed", "os.fork refused"),
    ("import subprocess\nsubprocess.run(['true'])", "failed", "refused"),
    ("import socket\nsocket.socket().connect(('127.0.0.1', 9))", "failed", "refused"),
    ("open('/tmp/ghost-eval-escape.txt', 'w').write('x')", "failed", "refused"),
    ("import os\nos.remove('/etc/hostname')", "failed", "refused"),
    ("x = bytearray(8 * 1024 ** 3)", "failed", "MemoryError"),
    ("import sys\nsys.exit(0)", "failed", "SystemExit"),
    ("import os\nos._exit(0)", "failed", "before the end"),  # an early clean exit is no pass
    ("open('scratch.txt', 'w').write('x')\nprint('y' * 10 ** 6)", "passed", ""),
])
def test_sandbox_refuses_or_kills_and_goes_on(program, status, detail, tmp_path):
    r = run_program(program, FAST)
    assert r.status == status, r
    assert detail in r.detail
    assert not __import__("os").path.exists("/tmp/ghost-eval-escape.txt")


# -- HumanEval scoring ---------------------------------------------------------------------------


def test_canonical_solutions_pass_all_and_empty_bodies_none():
    problems = he.load_problems()
    assert len(problems) == 164
    results = he.execute(problems, [[p["canonical_solution"]] for p in problems], Limits(10, 1024), workers=2)
    assert [r.task_id for r in results if r.correct != 1] == []
    assert he.pass_at_k(results, [1]) == {"pass@1": 1.0}
    few = problems[:25]
    empty = he.execute(few, [["    pass\n"] for _ in few], Limits(10, 1024), workers=2)
    assert he.summarise(empty, few, 1)["pass@1"] == 0.0


def test_pass_at_k_is_the_unbiased_estimator():
    def res(n, c):
        r = he.ProblemResult("t", [""] * n)
        r.results = [type("R", (), {"passed": i < c})() for i in range(n)]
        return r

    got = he.pass_at_k([res(5, 2), res(5, 0)], [1, 2, 5, 10])
    # problem 1: pass@1 = 2/5, pass@2 = 1 - C(3,2)/C(5,2) = 0.7, pass@5 = 1; problem 2: 0
    assert got["pass@1"] == pytest.approx(0.2)
    assert got["pass@2"] == pytest.approx(0.35)
    assert got["pass@5"] == pytest.approx(0.5)
    assert "pass@10" not in got  # more than the samples drawn: not estimable
    assert he.default_ks(10) == [1, 10] and he.default_ks(3) == [1, 3]


class _Scripted:
    """A stand-in pipeline returning scripted suggestions, recording the documents it saw."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def complete(self, text, line, character, **kw):
        from ghost_lsp.types import Candidate, Completion

        self.seen.append((text, line, character))
        if not self.answers:
            return None
        t, reasons, finish = self.answers.pop(0)
        return Completion(id="x", text=t, candidate=Candidate(t, finish_reason=finish), cut_reasons=reasons)


def test_accept_enter_and_continue_like_an_editor():
    problem = {"task_id": "HumanEval/x", "prompt": 'def f(x):\n    """Doc."""\n'}
    pipe = _Scripted([("if x:", ["end_of_line"], "length"),
                      ("return 1", ["max_lines"], "length"),
                      ("return 2\nprint()", ["end_of_block"], "length")])
    body = he.complete_body(pipe, problem, rounds=5)
    assert body == "    if x:\n        return 1\n        return 2\nprint()\n"
    # each request's cursor sits at the end of what was accepted, after Enter's indentation
    assert [s[2] for s in pipe.seen] == [4, 8, 8]
    assert pipe.seen[1][0].endswith("    if x:\n        ")
    # a completed suggestion ends the body; nothing shown gives an empty body
    assert he.complete_body(_Scripted([("return x", [], "eos")]), problem) == "    return x\n"
    assert he.complete_body(_Scripted([]), problem) == ""


# -- through the real pipeline (tiny random model) -----------------------------------------------


def test_humaneval_smoke_on_a_real_model_records_history(tiny_model_dir, tmp_path, capsys, quiet_logging):
    db = tmp_path / "h.db"
    rc = cli.main(["eval", "humaneval", "--model", str(tiny_model_dir), "--limit", "2", "--n-samples", "2",
                   "--max-new-tokens", "8", "--rounds", "2", "--history", str(db), "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    m = rec["metrics"]
    assert rec["kind"] == "humaneval" and rec["model_id"] == "tiny-llama:int8-dynamic"
    assert {"pass@1", "pass@2", "loop_rate", "nonsense_rate", "latency_p50_ms", "latency_p95_ms"} <= set(m)
    assert m["requests"] >= 4 and m["latency_p95_ms"] >= m["latency_p50_ms"] > 0
    assert rec["prompt_template"] and rec["settings"]["n_samples"] == 2
    assert rec["details"]["sandbox"]["memory_mb"] == 1024
    (row,) = sqlite3.connect(db).execute("SELECT kind, model_id, git_commit FROM runs").fetchall()
    assert row[:2] == ("humaneval", "tiny-llama:int8-dynamic")


def test_nextline_completes_on_the_document_without_the_answer(tiny_model_dir, tmp_path, capsys, quiet_logging):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "m.py").write_text("def f(a, b):\n    total = a + b\n    return total * 2\n")
    (p,) = [q for q in sample_positions([("m.py", (src / "m.py").read_text())], 5) if q.line == 1]
    assert p.document == "def f(a, b):\n    \n    return total * 2\n"  # the target is not in the prompt
    rc = cli.main(["eval", "nextline", "--model", str(tiny_model_dir), "--source", str(src), "--positions", "2",
                   "--max-new-tokens", "6", "--no-history", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["metrics"]["positions"] == 2 and 0 <= rec["metrics"]["edit_similarity"] <= 1
    assert rec["details"]["held_out"] is False and rec["details"]["files"] == 1


def test_compare_same_model_twice_has_zero_difference(tiny_model_dir, tmp_path, capsys, quiet_logging):
    rc = cli.main(["eval", "compare", str(tiny_model_dir), str(tiny_model_dir), "--limit", "2",
                   "--max-new-tokens", "6", "--rounds", "1", "--history", str(tmp_path / "h.db"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paired"]["pass@1"]["diff"] == 0 and out["paired"]["pass@1"]["n"] == 2
    assert len(History(tmp_path / "h.db").runs()) == 3  # A, B and the comparison


def test_a_model_folder_that_fails_to_load_is_named(tmp_path, capsys, quiet_logging):
    bad = tmp_path / "no-model"
    bad.mkdir()
    rc = cli.main(["eval", "humaneval", "--model", str(bad), "--limit", "1", "--no-history"])
    assert rc == 1
    assert str(bad) in capsys.readouterr().err


# -- history and regression reports --------------------------------------------------------------


def _rec(kind="humaneval", **metrics):
    return Record(kind=kind, model_id="m:int8", metrics=metrics, prompt_template="starcoder@2", git_commit="abc")


def test_history_table_report_and_regression_exit_code(tmp_path, capsys):
    db = tmp_path / "h.db"
    h = History(db)
    h.add(_rec(**{"pass@1": 0.30, "loop_rate": 0.10, "latency_p50_ms": 100.0}))
    h.add(_rec(**{"pass@1": 0.29, "loop_rate": 0.11, "latency_p50_ms": 120.0}))  # within thresholds
    h.add(_rec("nextline", exact_match=0.2))
    h.add(_rec(**{"pass@1": 0.20, "loop_rate": 0.10, "latency_p50_ms": 100.0}))  # pass@1 fell 0.09
    h.close()
    assert cli.main(["eval", "history", "--history", str(db)]) == 0
    table = capsys.readouterr().out
    assert len(table.strip().splitlines()) == 2 + 4 and "pass@1" in table and "starcoder@2" in table
    assert cli.main(["eval", "report", "1", "2", "--history", str(db)]) == 0
    assert "no regression" in capsys.readouterr().out
    # default: the latest run against the previous run of its kind (run 2, not the nextline run 3)
    assert cli.main(["eval", "report", "--history", str(db), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["a"], out["b"], out["regressed"]) == (2, 4, ["pass@1"])
    assert cli.main(["eval", "report", "1", "3", "--history", str(db)]) == 1
    assert "only runs of one kind" in capsys.readouterr().err
    assert cli.main(["eval", "history", "--history", str(tmp_path / "none.db")]) == 1


def test_compare_directions_and_latency_is_relative():
    a, b = _rec(**{"pass@1": 0.5, "loop_rate": 0.1, "latency_p95_ms": 100.0}), \
        _rec(**{"pass@1": 0.6, "loop_rate": 0.2, "latency_p95_ms": 140.0})
    got = {c.metric: c.regressed for c in compare(a, b, threshold=0.02, latency_threshold=0.5)}
    assert got == {"pass@1": False, "loop_rate": True, "latency_p95_ms": False}


def test_plot_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    db = tmp_path / "h.db"
    h = History(db)
    for v in (0.1, 0.2):
        h.add(_rec(**{"pass@1": v}))
    h.close()
    png = tmp_path / "h.png"
    assert cli.main(["eval", "history", "--history", str(db), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_bootstrap_interval():
    same = paired([1, 0, 1, 0], [1, 0, 1, 0])
    assert (same.diff, same.ci_low, same.ci_high) == (0, 0, 0) and not same.significant
    better = paired([0] * 30, [1] * 20 + [0] * 10)
    assert better.diff == pytest.approx(2 / 3) and better.significant and better.ci_low > 0.4
    with pytest.raises(ValueError):
        paired([1], [1, 0])


def test_sources_read_sdists_without_their_tests(tmp_path):
    arc = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for name, text in {"pkg-1.0/pkg/core.py": "def f():\n    return 1\n",
                           "pkg-1.0/tests/test_core.py": "def test():\n    pass\n",
                           "pkg-1.0/README": "x"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert [p for p, _ in read_python_files(arc)] == ["pkg-1.0/pkg/core.py"]
    with pytest.raises(ValueError):
        read_python_files(tmp_path / "missing.txt")


# -- loop / nonsense / drop rates ------------------------------------------------------------------


class _ScriptedEngine:
    """Returns fixed candidates in turn: the pipeline's filter accounting is under test, not a model."""

    model_id = "scripted"

    def __init__(self, outputs):
        from ghost_lsp.engine.manifest import Manifest

        self.manifest = Manifest(name="scripted")
        self.outputs = list(outputs)

    def count_tokens(self, text):
        return len(text) // 3 + 1

    def generate(self, prompt, params, cancel=None, deadline=None, **kw):
        from ghost_lsp.types import Candidate

        text, lp = self.outputs.pop(0)
        return Candidate(text=text, logprobs=[lp] * 4, model_logprobs=[lp] * 4, finish_reason="stop")


def test_nonsense_rate_counts_confidence_and_syntax_drops_not_other_drops():
    from ghost_lsp.tools.evals.pipeline import Pipeline, drop_reason
    from ghost_lsp.settings.core import Settings

    assert drop_reason(["cycle", "empty"]) == "cycle"
    assert drop_reason(["end_of_line", "low_confidence"]) == "low_confidence"
    assert drop_reason(["empty"]) == "empty"
    outputs = [("return compute(x)", -0.1),        # shown
               ("zq = qq", -9.0),                    # dropped: the model was unsure
               ("else:", -0.1),                    # dropped: adds a syntax error
               ("value", -0.1),                    # dropped: the text after the cursor holds it
               ("return a + b", -0.2)]             # shown
    p = Pipeline("unused", Settings(n=1), engine=_ScriptedEngine(outputs))
    try:
        doc = "def f(x):\n    value\n"
        shown = [p.complete(doc, 1, 4) for _ in range(len(outputs))]
    finally:
        p.close()
    assert [c is not None for c in shown] == [True, False, False, False, True]
    m = p.stats.metrics()
    assert m["drop_rate"] == pytest.approx(3 / 5), m
    assert m["nonsense_rate"] == pytest.approx(2 / 5)
    assert m["drop_low_confidence_rate"] == m["drop_syntax_rate"] == pytest.approx(1 / 5)
    assert m["drop_rate"] - m["nonsense_rate"] == pytest.approx(1 / 5)


def test_the_recording_engine_is_as_local_as_its_engine(tiny_model_dir):
    from ghost_lsp.engine.base import LocalEngine
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.tools.evals.pipeline import RecordingEngine

    assert isinstance(RecordingEngine(load_local(tiny_model_dir)), LocalEngine)
    assert not isinstance(RecordingEngine(object()), LocalEngine)
