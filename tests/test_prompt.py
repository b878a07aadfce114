import re

import pytest

from ghost_lsp.manifest import Manifest
from ghost_lsp.prompt import BUILTIN_PLAIN, TemplateError, build_prompt, load_template, render, template_for
from ghost_lsp.types import Context


def count_chars(text: str) -> int:
    """A stand-in tokenizer: one token per character (a sentinel is one token) keeps budgets easy to check."""
    return len(re.sub(r"<fim_(prefix|suffix|middle)>", "#", text))


def ctx(prefix, suffix=""):
    return Context(prefix=prefix, suffix=suffix, path="pkg/a.py", language="python")


def test_plain_template_renders_prefix_only():
    t = load_template("plain")
    p = render(t, ctx("x = 1\ny = ", "2\n"), count_chars, 100)
    assert p.text == "x = 1\ny = " and not p.fim and p.template == "plain@1"


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
