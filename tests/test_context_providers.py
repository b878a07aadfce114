"""Context providers, the fan-out, the project index and its caps (context/)."""

import logging
import os
import time
from pathlib import Path

import pytest

from ghost_lsp.context import ContextRequest, FanOut, gather, make_providers
from ghost_lsp.context.cleaner import StripComments
from ghost_lsp.context.index import IgnoreRules, ProjectIndex
from ghost_lsp.context.outline import outline_module
from ghost_lsp.context.neighbours import OpenFiles
from ghost_lsp.context.project import ProjectDefinitions, parse_imports
from ghost_lsp.types import Context, Snippet


def req(text, line, col=0, path="/p/cur.py", **kw):
    return ContextRequest(text=text, line=line, character=col, path=path, language="python", **kw)


# -- fan-out ------------------------------------------------------------------------------------


class Boom:
    name = "boom"

    def provide(self, req, ctx, deadline):
        raise RuntimeError("broken provider")


class Slow:
    name = "slow"

    def provide(self, req, ctx, deadline):
        time.sleep(0.05)
        return [Snippet("late.py", "late = 1\n")]


class Good:
    name = "good"

    def provide(self, req, ctx, deadline):
        return [Snippet("g.py", "good = 1\n")]


def test_fanout_skips_failing_and_late_providers_and_keeps_the_rest(caplog):
    reports = []
    with caplog.at_level(logging.WARNING):
        ctx = gather(req("x = 1\n", 1), FanOut([Boom(), Slow(), Good()], slice_ms=5), reports=reports)
    assert [s.text for s in ctx.snippets] == ["good = 1\n"]
    assert ctx.snippets[0].source == "good"
    status = {r.name: r.status for r in reports}
    assert status["boom"].startswith("failed") and status["slow"] == "late" and status["good"] == "ok"
    assert "boom failed: RuntimeError: broken provider" in caplog.text and "over its 5 ms slice" in caplog.text


def test_bad_position_still_raises_value_error():
    with pytest.raises(ValueError):
        gather(req("x = 1\n", 5), FanOut([Good()]))


# -- open files -------------------------------------------------------------------------------


ORDERS = "\n".join(["import json", "", "def total_price(order, tax_rate):",
                    "    subtotal = sum(item.price * item.quantity for item in order.items)",
                    "    return subtotal * (1 + tax_rate)", ""] + [f"unrelated_{i} = {i}" for i in range(40)])


def test_open_files_finds_the_most_similar_window_and_skips_the_current_file():
    cur = "def invoice(order):\n    subtotal = sum(item.price for item in order.items)\n    "
    docs = {"/p/cur.py": cur, "/p/orders.py": ORDERS, "/p/other.py": "\n".join(f"zzz_{i} = 0" for i in range(50))}
    r = req(cur, 2, 4, open_docs=docs)
    ctx = gather(r, FanOut([OpenFiles()]))
    assert len(ctx.snippets) == 1
    s = ctx.snippets[0]
    assert s.path == "orders.py" and "def total_price" in s.text and s.source == "open_files"
    assert "unrelated_39" not in s.text  # a window, not the whole file


def test_open_files_prefers_the_same_language_and_obeys_the_deadline():
    cur = "subtotal = order.items\n"
    docs = {"/p/a.js": "const subtotal = order.items;\n", "/p/b.py": "subtotal = order.items + 1\n"}
    p = OpenFiles(top=1)
    ctx = Context(prefix=cur, suffix="", path="/p/cur.py", language="python")
    got = p.provide(req(cur, 1, open_docs=docs), ctx, time.monotonic() + 1)
    assert got[0].path == "b.py"
    assert p.provide(req(cur, 1, open_docs=docs), ctx, time.monotonic() - 1) == []


# -- project index and definitions ---------------------------------------------------------------


@pytest.fixture
def project(tmp_path):
    pkg = tmp_path / "src" / "shop"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .models import Order\nfrom . import util\n")
    (pkg / "models.py").write_text(
        'class Order:\n    """An order of items."""\n    currency = "EUR"\n    _secret = 1\n\n'
        "    def __init__(self, items, *, customer=None):\n        self.items = items\n\n"
        "    def total(self) -> float:\n        return sum(self.items)\n\n"
        "    def _helper(self):\n        pass\n")
    (pkg / "util.py").write_text("def money(value: float, currency: str = 'EUR') -> str:\n"
                                 '    """Format money."""\n    return f"{value} {currency}"\n\nRATE = 0.2\n')
    (tmp_path / "app.py").write_text("from shop import Order\nimport shop.util as u\n")
    return tmp_path


def test_outline_keeps_signatures_and_public_members():
    out = outline_module(Path(__file__).read_text())
    assert "req" in out.defs and out.defs["req"].startswith("def req(text, line, col=0")
    info = outline_module("class A(B):\n    x: int = 1\n    def f(self, a):\n        return a\n    def _g(self):\n"
                          "        pass\n")
    assert info.defs["A"] == "class A(B):\n    x: int = 1\n    def f(self, a):"
    assert outline_module("def broken(:\n").defs == {}


def test_index_resolves_re_exports_and_submodules(project):
    idx = ProjectIndex(project)
    idx.build()
    assert idx.module("shop.models") is not None and idx.module("app") is not None
    path, text = idx.definition("shop", "Order")
    assert path.endswith("models.py") and "class Order:" in text and "def total(self) -> float:" in text
    assert "_helper" not in text and "_secret" not in text and "currency" in text
    assert "def money(" in idx.definition("shop", "util")[1]
    assert idx.definition("shop", "Nope") is None


def test_project_definitions_follow_imports_nearest_use_first(project):
    idx = ProjectIndex(project)
    idx.build()
    text = "from shop import Order\nimport shop.util as u\n\ndef f(items):\n    o = Order(items)\n    s = u.money(1)\n    "
    r = req(text, 6, 4, path=str(project / "app.py"), index=idx)
    ctx = gather(r, FanOut([ProjectDefinitions()]))
    assert [s.text.split("\n")[0] for s in ctx.snippets] == [
        "def money(value: float, currency: str = 'EUR') -> str:", "class Order:"]
    assert ctx.snippets[0].path == os.path.join("src", "shop", "util.py")


def test_parse_imports_handles_relative_parenthesised_and_aliases():
    names, modules = parse_imports("from . import (a,\n  b as c)\nfrom ..x.y import z\nimport p.q as r, s\n",
                                   "pkg.sub.mod")
    assert names == {"a": ("pkg.sub", "a"), "c": ("pkg.sub", "b"), "z": ("pkg.x.y", "z")}
    assert modules["r"] == "p.q" and modules["s"] == "s"


def test_index_updates_and_removes_files(project):
    idx = ProjectIndex(project)
    idx.build()
    util = project / "src" / "shop" / "util.py"
    util.write_text("def money(value, precision=2):\n    return value\n")
    assert idx.update(util)
    assert idx.definition("shop.util", "money")[1].startswith("def money(value, precision=2):")
    idx.remove(util)
    assert idx.module("shop.util") is None
    assert not idx.update(project / "notes.txt")


def test_gitignore_rules():
    rules = IgnoreRules()
    rules.add("", "build/\n*.log\n!keep.log\n/top.py\n# comment\n")
    rules.add("sub", "local.py\ndeep/**/x.py\n")
    assert rules.ignored("build", True) and not rules.ignored("build", False)
    assert rules.ignored("a/b/c.log", False) and not rules.ignored("a/keep.log", False)
    assert rules.ignored("top.py", False) and not rules.ignored("a/top.py", False)
    assert rules.ignored("sub/local.py", False) and rules.ignored("sub/q/local.py", False)
    assert not rules.ignored("local.py", False)
    assert rules.ignored("sub/deep/x.py", False) and rules.ignored("sub/deep/a/b/x.py", False)


def test_index_respects_gitignore_and_exclusions(tmp_path):
    (tmp_path / ".gitignore").write_text("gen/\n")
    for rel in ("gen/a.py", "ok/b.py", "secrets/c.py"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("def f():\n    pass\n")
    idx = ProjectIndex(tmp_path, exclude=("**/secrets/**",))
    idx.build()
    assert idx.module("ok.b") is not None
    assert idx.module("gen.a") is None and idx.module("secrets.c") is None


def test_bad_trees_make_the_index_cap_itself_and_say_so(tmp_path, caplog):
    (tmp_path / "loop").mkdir()
    os.symlink(tmp_path, tmp_path / "loop" / "back")  # a symlink loop
    (tmp_path / "bin.py").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin.py").write_bytes(b"x = '\xff'\n")
    (tmp_path / "huge.py").write_text("x = 1\n" * 2000)  # over the test's 1 kB file cap
    for i in range(30):
        (tmp_path / f"m{i:02d}.py").write_text(f"def f{i}():\n    pass\n")
    idx = ProjectIndex(tmp_path, max_files=20, max_file_bytes=1000)
    with caplog.at_level(logging.INFO):
        t0 = time.monotonic()
        idx.build()
        assert time.monotonic() - t0 < 5
    s = idx.stats
    assert s.capped == "more than 20 files" and s.skipped_large == 1 and s.skipped_binary == 2
    assert 0 < len(idx) < 20
    assert "capped itself: more than 20 files" in caplog.text
    assert "1 over 1 kB" in caplog.text and "2 binary" in caplog.text


def test_unreadable_files_are_counted_not_fatal(tmp_path, monkeypatch):
    idx = ProjectIndex(tmp_path)
    monkeypatch.setattr(idx, "_walk", lambda: iter([(str(tmp_path / "gone.py"), "gone.py")]))
    idx.build()
    assert idx.stats.skipped_unreadable == 1 and len(idx) == 0


def test_background_build_sets_ready_even_when_the_root_is_missing(tmp_path):
    idx = ProjectIndex(tmp_path / "missing").start()
    assert idx.ready.wait(5) and len(idx) == 0


def test_requests_stay_fast_on_a_huge_document_with_everything_on(project):
    idx = ProjectIndex(project)
    idx.build()
    big = "from shop import Order\n" + "value = Order([1, 2, 3]).total()\n" * 200_000  # ~6.6 MB
    r = req(big, 150_000, 0, path=str(project / "big.py"), index=idx, open_docs={"/p/o.py": big})
    gather(r, FanOut(make_providers()))  # first call tokenizes the open document's windows
    t0 = time.perf_counter()
    ctx = gather(r, FanOut(make_providers()))
    assert (time.perf_counter() - t0) < 0.5
    assert any("class Order" in s.text for s in ctx.snippets)


# -- cleaner ----------------------------------------------------------------------------------


def test_strip_cleaner_drops_comment_and_blank_lines_from_snippets_only():
    ctx = Context(prefix="# keep me\nx = ", suffix="", path="a.py", language="python",
                  snippets=[Snippet("b.py", "# note\n\ndef f():\n    # inner\n    return 1\n"), Snippet("c.py", "# only\n")])
    out = StripComments().clean(ctx)
    assert out.prefix == "# keep me\nx = "
    assert [s.text for s in out.snippets] == ["def f():\n    return 1\n"]
