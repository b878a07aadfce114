import re

import pytest

from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.completion.prompt import BUILTIN_PLAIN, TemplateError, build_prompt, load_template, render, template_for
from ghost_lsp.types import Context


def count_chars(text: str) -> int:
    """A stand-in tokenizer: one token per character (a sentinel is one token) keeps budgets easy to check."""
    return len(re.sub(r"<fim_(prefix|suffix|middle)>", "#", text))


def ctx(prefix, suffix=""):
    return Context(prefix=prefix, suffix=suffix, path="pkg/a.py", language="python")


def test_plain_template_renders_prefix_only():
    t = load_template("plain")
    p = render(t, ctx("x = 1\ny = ", "2\n"), count_chars, 100)
    assert p.text == "x = 1\ny = " and not p.fim and p.template == "plain@2"


def test_fim_template_uses_sentinels_and_suffix():
    t = load_template("starcoder")
    p = render(t, ctx("def f():\n    ", "\nprint(f())\n"), count_chars, 200)
    assert p.text == "<fim_prefix>def f():\n    <fim_suffix>\nprint(f())\n<fim_middle>"
    assert "<|endoftext|>" in p.stop and p.fim


@pytest.mark.parametrize("budget", [20, 35, 60, 200])
def test_budget_is_never_exceeded_and_lines_stay_whole(budget):
    prefix = "".join(f"v{i} = {i}\n" for i in range(30)) + "res = "
    suffix = "".join(f"w{i} = {i}\n" for i in range(30))
    t = load_template("starcoder")
    p = render(t, ctx(prefix, suffix), count_chars, budget)
    assert count_chars(p.text) <= budget
    body = p.text.removeprefix("<fim_prefix>")
    kept_prefix, _, rest = body.partition("<fim_suffix>")
    kept_suffix = rest.removesuffix("<fim_middle>")
    assert prefix.endswith(kept_prefix) and kept_prefix.endswith("res = ")
    # whole lines: the kept prefix starts at a line start of the original
    assert kept_prefix == "res = " or prefix[len(prefix) - len(kept_prefix) - 1] == "\n"
    assert suffix.startswith(kept_suffix) and (kept_suffix == "" or kept_suffix.endswith("\n") or kept_suffix == suffix)


def test_prefix_nearest_cursor_has_priority_over_suffix():
    prefix = "a = 1\nb = 2\nc = "
    p = render(load_template("starcoder"), ctx(prefix, "x\n" * 50), count_chars, 60)
    assert prefix in p.text


def test_broken_template_names_file_and_falls_back(tmp_path, caplog):
    (tmp_path / "broken.toml").write_text('name = "broken"\nversion = \n')
    with pytest.raises(TemplateError, match=r"broken\.toml.*line 2"):
        load_template("broken", str(tmp_path))
    m = Manifest(name="m", family="broken")
    assert template_for(m, str(tmp_path)) is BUILTIN_PLAIN


def test_fim_template_is_not_used_for_a_model_without_fim():
    assert template_for(Manifest(name="m", family="starcoder", fim=False)) is BUILTIN_PLAIN


def test_build_prompt_budget_leaves_room_for_generation():
    m = Manifest(name="m", family="plain", context_length=64)
    p = build_prompt(ctx("z = 0\n" * 40 + "q = "), m, count_chars, max_new_tokens=16)
    assert count_chars(p.text) <= 48


def test_braces_in_code_do_not_break_rendering():
    p = render(load_template("plain"), ctx("d = {'{prefix}': 1}\nf'{x}'"), count_chars, 100)
    assert p.text == "d = {'{prefix}': 1}\nf'{x}'"


# -- snippets and the budget --------------------------------------------------------------------

from ghost_lsp.completion.prompt import DROP_LINES, Template, render_parts  # noqa: E402
from ghost_lsp.types import Snippet  # noqa: E402

FIM = Template(name="t", version=1, fim=True, template="<fim_prefix>{snippets}{prefix}<fim_suffix>{suffix}<fim_middle>",
               prefix_share=0.4, suffix_share=0.2, snippet_share=0.35, snippet="{comment} path: {path}\n{code}",
               snippet_comment=True, comments={"default": "#"})


def sctx(prefix, suffix="", snippets=()):
    return Context(prefix=prefix, suffix=suffix, path="a.py", language="python", snippets=list(snippets))


def defn(name, n, score=1.0):
    return Snippet(f"{name}.py", "".join(f"def {name}_{i}(x): ...\n" for i in range(n)), score, "project")


def neigh(name, n, score=0.5):
    return Snippet(f"{name}.py", "".join(f"{name}_{i} = {i}\n" for i in range(n)), score, "open_files")


@pytest.mark.parametrize("budget", [30, 60, 120, 250, 600])
def test_with_snippets_budget_is_never_exceeded_and_snippet_lines_stay_whole(budget):
    prefix = "".join(f"v{i} = {i}\n" for i in range(40)) + "res = "
    snips = [defn("alpha", 6), neigh("beta", 8), defn("gamma", 3, 0.2)]
    p, parts = render_parts(FIM, sctx(prefix, "w = 1\n" * 20, snips), count_chars, budget)
    assert count_chars(p.text) <= budget
    assert p.text.startswith("<fim_prefix>") and "res = <fim_suffix>" in p.text
    for s in snips:
        lines = s.text.rstrip("\n").split("\n")
        shown = [ln[2:] for ln in p.text.split("\n") if ln.startswith("# ") and ln[2:] in lines]
        assert shown == lines[:len(shown)]  # a head of whole lines, never a cut line
    kept_tokens = sum(pt.tokens for pt in parts if pt.source not in ("prefix", "suffix"))
    assert kept_tokens <= int((budget - count_chars("<fim_prefix><fim_suffix><fim_middle>")) * 0.35)


def test_priorities_near_prefix_then_suffix_then_definitions_then_neighbours():
    prefix = "".join(f"v{i} = {i}\n" for i in range(200)) + "res = "
    budget = 200
    snips = [neigh("near", 3, score=0.9), defn("imp", 3, score=0.1)]
    p, parts = render_parts(FIM, sctx(prefix, "w = 1\n" * 100, snips), count_chars, budget)
    by = {pt.path: pt.status for pt in parts}
    room = budget - 36
    kept_prefix = p.text.split("<fim_suffix>")[0]
    assert kept_prefix.endswith("res = ") and count_chars(kept_prefix.split("# imp_2")[-1]) >= int(room * 0.4)
    assert "kept" in by["imp.py"]  # the definition comes before the better-scored neighbour
    imp_pos = p.text.index("# path: imp.py")
    assert "near.py" not in p.text[:imp_pos]
    # tight budget: neighbours go first, then definitions; the cursor line always stays
    p2, parts2 = render_parts(FIM, sctx(prefix, "w = 1\n" * 100, snips), count_chars, 60)
    assert "res = <fim_suffix>" in p2.text and "near.py" not in p2.text and count_chars(p2.text) <= 60


def test_no_snippet_twice_and_none_that_the_window_already_shows():
    prefix = "def alpha_0(x): ...\nres = "
    snips = [defn("alpha", 1), defn("alpha", 1), neigh("beta", 2), neigh("beta", 2), neigh("beta", 1)]
    p, parts = render_parts(FIM, sctx(prefix, "", snips), count_chars, 500)
    assert p.text.count("beta_0 = 0") == 1 and p.text.count("alpha_0") == 1
    assert [pt.status for pt in parts if pt.source != "prefix" and pt.source != "suffix"].count("dropped: duplicate") == 4


def test_unused_snippet_room_goes_to_the_prefix():
    prefix = "".join(f"v{i} = {i}\n" for i in range(100)) + "res = "
    alone = render(FIM, sctx(prefix), count_chars, 300)
    # no snippets: the prefix takes nearly everything (far lines go in steps of DROP_LINES lines)
    assert count_chars(alone.text) > 300 - DROP_LINES * len("v99 = 99\n")


def test_template_without_snippets_placeholder_reports_the_drop():
    p, parts = render_parts(load_template("codellama"), sctx("x = ", "", [defn("a", 1)]), count_chars, 200)
    assert "a_0" in p.text  # codellama does have the placeholder
    t = Template(name="bare", version=3, template="{prefix}")
    p, parts = render_parts(t, sctx("x = ", "", [defn("a", 1)]), count_chars, 200)
    assert p.text == "x = " and parts[-1].status == "dropped: bare@3 has no {snippets}"


@pytest.mark.parametrize("family,sentinel", [("starcoder", "<fim_prefix>"), ("codellama", "<PRE> "),
                                             ("deepseek", "<｜fim▁begin｜>"), ("qwen", "<|fim_prefix|>"),
                                             ("codegen", "<mask_1>"), ("plain", "")])
def test_every_family_template_loads_versioned_and_renders_snippets(family, sentinel):
    t = load_template(family)
    assert t.version >= 1 and t.id == f"{family}@{t.version}"
    p = render(t, sctx("def f():\n    ", "\nprint(f())\n", [defn("lib", 1)]), count_chars, 400)
    assert sentinel in p.text and "lib_0" in p.text and p.text.index("lib_0") < p.text.index("def f():")
    assert ("print(f())" in p.text) == t.fim


def test_template_with_bad_share_names_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text('name = "bad"\nversion = 1\ntemplate = "{prefix}"\nsnippet_share = 3\n')
    with pytest.raises(TemplateError, match=r"bad\.toml: snippet_share must be between 0 and 1"):
        load_template("bad", str(tmp_path))


# -- an anchored start, so consecutive prompts share their beginning (KV-cache reuse) ------------

from ghost_lsp.context import collect_context  # noqa: E402
from ghost_lsp.context.window import ANCHOR_CHARS  # noqa: E402


def count_words(text: str) -> int:
    """A tokenizer whose counts do not add up across a cut (as real BPE merges do not)."""
    return len(re.findall(r"\w+|\s+|[^\w\s]", text))


_VOCAB = {"value", "compute", "step"}


def count_merging(text: str) -> int:
    """A tokenizer whose count goes down as well as up while a word is typed: a known word is one
    token, any other word one per 3 characters ("comput" 2 tokens, "compute" 1), as BPE merges do."""
    return sum(1 if w in _VOCAB or not w[0].isalnum() else -(-len(w) // 3)
               for w in re.findall(r"[A-Za-z]+|\d+|\s+|[^\w\s]", text))


def _typed(doc_lines, first, last):
    """(document, line, character) for typing lines first..last-1 char by char, only the code
    above in the document (as an editor sends while one writes a file top to bottom)."""
    for i in range(first, last):
        for k in range(len(doc_lines[i]) + 1):
            yield "\n".join(doc_lines[:i]) + "\n" + doc_lines[i][:k], i, k


@pytest.mark.parametrize("template,count,budget", [(load_template("plain"), count_chars, 1500),
                                                   (load_template("plain"), count_words, 700),
                                                   (load_template("plain"), count_merging, 700),
                                                   (FIM, count_chars, 1500)])
def test_typing_moves_the_prompt_start_once_per_anchor_step_or_drop_step(template, count, budget):
    doc_lines = [f"value_{i} = compute({i}, {i * 7})  # step {i}" for i in range(400)]
    first, last = 200, 260
    typed_chars = sum(len(ln) + 1 for ln in doc_lines[first:last])
    restarts, heads, prev = 0, set(), None
    for doc, i, k in _typed(doc_lines, first, last):
        c = collect_context(doc, i, k, path="a.py", language="python")
        text = render(template, c, count, budget).text
        assert count(text) <= budget
        heads.add(text[:40])
        # The previous prompt less its last few lines (what the user is editing) is still the
        # new prompt's beginning: the engine reuses its KV cache for all of it.
        if prev is not None and not text.startswith(prev.rsplit("\n", 3)[0]):
            restarts += 1
        prev = text
    # The window's start moves once per ANCHOR_CHARS typed; the token fit's once per DROP_LINES
    # lines typed within one window (a slide with the cursor would move it on every line).
    bound = typed_chars // ANCHOR_CHARS + (last - first) // DROP_LINES + 2
    assert 1 <= restarts <= bound and len(heads) <= bound + 1


@pytest.mark.parametrize("budget", [25, 40, 80, 160, 400])
@pytest.mark.parametrize("count", [count_chars, count_words])
def test_budget_holds_with_steps_of_dropped_lines(budget, count):
    prefix = "".join(f"v{i} = f({i}) + g({i})\n" for i in range(120)) + "res = "
    snips = [defn("alpha", 6), neigh("beta", 8)]
    for template in (FIM, load_template("plain")):
        p, _ = render_parts(template, sctx(prefix, "w = 1\n" * 20, snips), count, budget)
        assert count(p.text) <= budget and "res = " in p.text
        kept = p.text.split("res = ")[0].rsplit("\n", 1)[0]
        # the far edge is a whole line, a multiple of DROP_LINES lines from the window's start
        first = next((ln for ln in kept.split("\n") if ln.startswith("v")), None)
        if first is not None:
            assert int(first[1:first.index(" ")]) % DROP_LINES == 0


def test_a_short_document_is_shown_whole():
    doc = "import os\n\n\ndef f(x):\n    return os.path.join(x, 'a')\n\n\nprint(f("
    c = collect_context(doc, 7, 8, path="a.py", language="python")
    assert c.prefix == doc
    assert render(load_template("plain"), c, count_chars, 200).text == doc
