"""`ghost-lsp eval holes` on a tiny project with its own tests (tests/data/holes_project)."""

import ast
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from ghost_lsp import cli
from ghost_lsp.cli import common
from ghost_lsp.tools.evals import holes as H
from ghost_lsp.tools.evals.sandbox import Limits
from ghost_lsp.types import Candidate, Completion

PROJECT = Path(__file__).parent / "data" / "holes_project"
LIMITS = Limits(timeout_s=60, memory_mb=1024)  # wall-clock: generous on a loaded 2-core machine


@pytest.fixture(scope="module")
def traced():
    project = H.load_project(PROJECT)
    return project, H.trace(project, LIMITS)


def _core_function(name):
    text = (PROJECT / "minilib" / "core.py").read_text()
    node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == name)
    return text, node


def test_a_hole_keeps_signature_and_docstring_and_hides_the_body():
    text, node = _core_function("fib")
    hole = H.cut("minilib/core.py", text, "fib", node, ("tests/check_core.py",))
    assert hole.prefix.endswith('def fib(n):\n    """The n-th Fibonacci number (fib(0) == 0)."""\n')
    assert hole.body == "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    assert "a, b = 0, 1" not in hole.prefix + hole.suffix and "class Tally" in hole.suffix
    assert hole.filled(hole.body) == text and hole.indent == "    "
    # nothing to cut: a docstring-only body, or a body on the `def` line
    for src in ('def f():\n    """Only a docstring."""\n', "def f(): return 1\n"):
        f = ast.parse(src).body[0]
        assert H.cut("m.py", src, "f", f, ()) is None


class _Scripted:
    """A pipeline that answers from a script and keeps what it was asked."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def complete(self, text, line, character, **kw):
        self.seen.append((text, line, character, kw["path"]))
        t, reasons = self.answers.pop(0)
        return Completion(id="x", text=t, candidate=Candidate(t, finish_reason="length"), cut_reasons=reasons)


def test_the_model_is_asked_at_the_hole_with_the_rest_of_the_file_after_it():
    text, node = _core_function("clamp")
    hole = H.cut("minilib/core.py", text, "clamp", node, ())
    pipe = _Scripted([("if lo > hi:", ["end_of_line"]), ("raise ValueError", ["max_lines"]),
                      ("return max(lo, min(x, hi))", ["end_of_block"])])
    body = H.fill(pipe, hole, rounds=4)
    assert body == "    if lo > hi:\n        raise ValueError\n        return max(lo, min(x, hi))\n"
    doc, line, character, path = pipe.seen[0]
    assert path == "minilib/core.py" and character == 4
    assert doc == hole.prefix + "    \n" + hole.suffix[1:]
    assert doc.splitlines()[line] == "    "
    assert 'ValueError("lo > hi")' not in doc  # the answer is not in the document


def test_original_bodies_pass_and_empty_bodies_fail(traced):
    project, tr = traced
    # the test that opens a socket fails in the sandbox on the original code: left out, named
    assert tr.broken == ["tests/check_core.py::test_needs_the_network"] and tr.passed == 4
    holes = H.find_holes(project, tr)
    # not `unused` (no test calls it) nor `address` (only the left-out test does)
    _, addr = _core_function("address")
    assert tr.calls[f"minilib/core.py:{addr.lineno}"] == ["tests/check_core.py::test_needs_the_network"]
    assert [h.name for h in holes] == ["clamp", "words", "fib", "Tally.__init__", "Tally.add"]
    assert next(h for h in holes if h.name == "words").tests == ()  # called at import: the whole suite
    for kind, rate in (("original", 1.0), ("pass", 0.0), ("raise", 0.0)):
        results = H.execute(project, holes, [H.placeholder(h, kind) for h in holes], LIMITS, workers=2,
                            deselect=tr.deselect())
        assert H.summarise(results)["pass_rate"] == rate, (kind, [(r.hole.name, r.result) for r in results])
    # no suggestion and code that does not parse fail without starting pytest
    assert H.run_hole(project, holes[0], "", LIMITS).result.detail == "no suggestion"
    bad = H.run_hole(project, holes[0], "    return (\n", LIMITS)
    assert not bad.result.passed and not bad.parses


def test_sdists_are_unpacked_to_their_project_folder(tmp_path):
    archive = tmp_path / "minilib-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(PROJECT, arcname="minilib-1.0")
    root = H.unpack(archive, tmp_path / "unpacked")
    assert root.name == "minilib-1.0" and H.load_project(root).sources == H.load_project(PROJECT).sources
    with pytest.raises(ValueError, match="no Python source"):
        H.load_project(tmp_path / "unpacked" / "minilib-1.0" / "tests")


def test_holes_smoke_on_a_real_model_records_history(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "setup_logging", lambda *a: None)
    db = tmp_path / "h.db"
    samples = tmp_path / "s.jsonl"
    rc = cli.main(["eval", "holes", "--model", str(tiny_model_dir), "--source", str(PROJECT), "--limit", "2",
                   "--max-new-tokens", "8", "--rounds", "2", "--history", str(db), "--samples-out", str(samples),
                   "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    m = rec["metrics"]
    assert rec["kind"] == "holes" and rec["model_id"] == "tiny-llama:int8-dynamic"
    assert m["holes"] == 2 and 0 <= m["pass_rate"] <= 1
    assert {"loop_rate", "nonsense_rate", "latency_p50_ms", "latency_p95_ms", "syntax_error_rate"} <= set(m)
    assert m["requests"] >= 2 and m["latency_p95_ms"] >= m["latency_p50_ms"] > 0
    assert rec["details"]["held_out"] is False and len(rec["details"]["holes"]) == 2
    assert [json.loads(x)["status"] for x in samples.read_text().splitlines()] == \
        [h["status"] for h in rec["details"]["holes"]]
    (row,) = sqlite3.connect(db).execute("SELECT kind, model_id FROM runs").fetchall()
    assert row == ("holes", "tiny-llama:int8-dynamic")


def test_bad_input_gets_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "setup_logging", lambda *a: None)
    assert cli.main(["eval", "holes", "--no-history"]) == 1
    assert "--package NAME or --source PATH" in capsys.readouterr().err
    assert cli.main(["eval", "holes", "--source", str(tmp_path / "nowhere"), "--no-history"]) == 1
    assert "nowhere" in capsys.readouterr().err
    notests = tmp_path / "p"
    (notests / "pkg").mkdir(parents=True)
    (notests / "pkg" / "__init__.py").write_text("def f():\n    return 1\n")
    assert cli.main(["eval", "holes", "--source", str(notests), "--no-history"]) == 1
    assert "no test of its own passes" in capsys.readouterr().err


def test_sandbox_copies_a_project_in_and_reads_one_file_back(tmp_path):
    from ghost_lsp.tools.evals.sandbox import run_program

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("X = 1\n")
    prog = "import sys, os\nsys.path.insert(0, os.getcwd())\nfrom pkg.m import X\nopen('out.txt', 'w').write(str(X))"
    r = run_program(prog, LIMITS, tree=tmp_path, files={"pkg/m.py": "X = 2\n"}, read_back="out.txt")
    assert r.passed and r.output == "2"  # the file given replaced the tree's copy
    assert (tmp_path / "pkg" / "m.py").read_text() == "X = 1\n"  # the original is untouched
    r = run_program("pass", LIMITS, files={"../escape.py": ""})
    assert r.status == "error" and "outside the scratch folder" in r.detail
