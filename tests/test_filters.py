"""Table tests: tests/data/filters/<rule>.json holds cases for one rule (run with only that rule
on), pipeline.json cases for all rules together; each is input → expected text and reasons."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ghost_lsp.completion.filters import ALL_OFF, FilterSettings, StopCheck, apply_filters, bracket_balance, code_mask
from ghost_lsp.types import Candidate, Context

DATA = Path(__file__).parent / "data" / "filters"
RULES = ["indent", "cycle", "end_of_block", "suffix_overlap", "bracket_balance", "syntax", "confidence", "trivial"]


def _load(name):
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


def _ctx(case):
    return Context(prefix=case["prefix"], suffix=case["suffix"], path="a", language=case.get("language", "python"))


def _candidate(case):
    if "logprobs" not in case:
        return None
    return Candidate(text=case["candidate"], logprobs=case.get("sampler", case["logprobs"]),
                     model_logprobs=case["logprobs"] if "sampler" in case else [], offsets=case["offsets"])


RULE_CASES = [(rule, c) for rule in RULES for c in _load(rule)]


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_has_enough_cases(rule):
    assert len(_load(rule)) >= 15


@pytest.mark.parametrize("rule,case", RULE_CASES, ids=[f"{r}: {c['name']}" for r, c in RULE_CASES])
def test_rule_case(rule, case):
    only = replace(ALL_OFF, **{rule: True, **case.get("settings", {})})
    text, reasons = apply_filters(case["candidate"], _ctx(case), multiline=case.get("multiline", True),
                                  settings=only, candidate=_candidate(case))
    assert (text, reasons) == (case["expect"], case["reasons"])


PIPELINE = _load("pipeline")


@pytest.mark.parametrize("case", PIPELINE, ids=[c["name"] for c in PIPELINE])
def test_pipeline_case(case):
    text, reasons = apply_filters(case["candidate"], _ctx(case), multiline=case["multiline"])
    assert text == case["expect"]
    assert reasons == case["reasons"]


def test_rules_can_be_switched_off():
    ctx = Context(prefix="def f():\n    ", suffix="", path="a.py", language="python")
    cand = "x = foo(1)\n    x = foo(1)\n    x = foo(1)"
    text, reasons = apply_filters(cand, ctx, multiline=True, settings=FilterSettings(cycle=False))
    assert text == cand and "cycle" not in reasons
    text, reasons = apply_filters("return x +* 1", ctx, multiline=True, settings=FilterSettings(syntax=False))
    assert text == "return x +* 1" and reasons == []


def test_a_failing_rule_is_skipped_not_fatal(monkeypatch):
    import ghost_lsp.completion.filters.pipeline as f

    def boom(text, ctx):
        raise RuntimeError("bug")

    monkeypatch.setattr(f, "syntax_check", boom)
    ctx = Context(prefix="x = ", suffix="", path="a.py", language="python")
    assert apply_filters("f(1)", ctx, multiline=False) == ("f(1)", [])


def test_bracket_balance_uses_the_state_after_a_window_that_starts_in_a_block():
    # the window starts with an indented line (mid-function): scanning still sees the open '('
    ctx = Context(prefix="    x = 1\ny = f(", suffix="", path="a.py", language="python")
    assert bracket_balance("a)", ctx) == ("a)", None)
    assert bracket_balance("a))", ctx) == ("a)", "bracket_balance")


def test_code_mask_marks_strings_and_comments():
    text = 'a = "(" # c\nb'
    mask = code_mask(text, "python")
    # an opening quote or comment marker is code, what follows it is not
    assert "".join(text[i] for i, m in enumerate(mask) if m) == 'a = " #b'


@pytest.mark.parametrize("text,multiline,fires,why", [
    ("x = 1\n    y = 2", True, False, None),
    ("x = foo(1)\n    x = foo(1)\n", True, True, "cycle"),
    ("a.b.a.b.a.b.a.b", True, True, "cycle"),
    ("y = 1\n    return y\nd", True, True, "end_of_block"),
    ("y = 1", False, False, None),
    ("y = 1\n", False, True, "end_of_line"),
    ("y = 1\n    z", False, True, "end_of_line"),
])
def test_stop_check_fires_only_when_the_rest_would_be_cut(text, multiline, fires, why):
    check = StopCheck(Context(prefix="def f():\n    ", suffix="", path="a.py", language="python"), multiline)
    assert check(text) is fires
    assert check.fired == why


# -- the engine hook (real ONNX model, random weights) ------------------------------------------


@pytest.mark.slow
def test_engine_stops_early_when_the_check_fires(tiny_model_dir):
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    eng = OnnxEngine(tiny_model_dir)
    full = eng.generate("def f(x):\n    return", SamplingParams(max_new_tokens=24))
    seen = []

    def check(text):
        seen.append(text)
        return len(seen) >= 3

    short = eng.generate("def f(x):\n    return", SamplingParams(max_new_tokens=24, stop_check=check))
    assert short.finish_reason == "early_stop" and len(short.token_ids) < len(full.token_ids)
    assert full.text.startswith(short.text)  # same greedy path, just stopped
    for c in (full, short):
        assert len(c.offsets) == len(c.model_logprobs) == len(c.token_ids)
        assert c.offsets == sorted(c.offsets) and all(0 <= o <= len(c.text) for o in c.offsets)
    assert full.model_logprobs == full.logprobs  # greedy: the model's own log-probs


@pytest.mark.slow
def test_engine_survives_a_broken_check_and_reports_model_logprobs_when_sampling(tiny_model_dir):
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    def broken(text):
        raise ValueError("bug")

    eng = OnnxEngine(tiny_model_dir)
    c = eng.generate("x = ", SamplingParams(max_new_tokens=8, temperature=0.3, seed=1, stop_check=broken))
    assert c.finish_reason in ("length", "eos") and len(c.model_logprobs) == len(c.logprobs)
    # at T=0.3 the sampler's distribution is sharper than the model's
    assert sum(c.logprobs) > sum(c.model_logprobs)


def test_recurring_counts_overlapping_phrase_copies():
    from ghost_lsp.completion.filters import recurring

    ctx = Context(prefix="x = ", suffix="", path="a.py", language="python")
    # 'the name of the name' occurs three times, two of them overlapping: cut at the third.
    text = '"the name of the name of the name of the name is bad"'
    kept, why = recurring(text, ctx)
    assert why == "cycle" and kept == '"the name of the name of'
    assert recurring('"the name of the file"', ctx) == ('"the name of the file"', None)


def test_loops_eval_counts_cycle_cuts_on_real_code():
    from ghost_lsp.tools.evals.loops import real_code_cuts

    # a phrase's third copy, never back to back: only the recurring rule cuts it
    parallel = "x = load(path, mode) + 1\nif ready:\n    y = 2 * load(path, mode)\nreturn load(path, mode)\n"
    plain = "def f(x):\n    y = x + 1\n    return y\n\n"
    got = real_code_cuts([("a.py", parallel + plain + "z = 0\n")])
    assert got["windows"] == 2
    assert got["recurring"] == 0.5 and got["other_cycle_rules"] == 0.0


def test_code_mask_after_a_scanned_context_equals_the_one_pass_mask():
    """The early stop's cached context scan gives exactly the mask of scanning everything at once,
    also when a quote or comment marker straddles the context's end."""
    import random

    from ghost_lsp.completion.filters.lexical import code_mask, code_mask_after

    rng = random.Random(0)
    alphabet = ['"', "'", "#", "\\", "\n", "(", ")", "[", "]", "x", " ", '"""', "'''", "/*", "*/", "//"]
    for language in ("python", "javascript"):
        for _ in range(400):
            context = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
            for _ in range(3):  # the same context with growing texts, as the decoder asks
                text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
                want = code_mask(context + text, language)[-len(text):] if text else []
                assert code_mask_after(context, text, language) == want, (language, context, text)


def test_syntax_rule_sees_errors_in_a_window_that_starts_inside_a_block():
    """A prefix window with no top-level line (deep in a long method) used to fail to parse at its
    first line, which hid every error a suggestion added; nested `if 1:` headers make it parse."""
    from ghost_lsp.completion.filters.syntax import syntax_check
    from ghost_lsp.types import Context

    body = "".join(f"            x{i} = compute({i})\n" for i in range(40))
    prefix = body + "            try:\n                y = 1\n            except KeyError:\n                pass\n        "
    suffix = "\n        return y\n\n    def other(self):\n        return 2\n"
    ctx = Context(prefix=prefix, suffix=suffix, path="a.py", language="python")
    # a block opener with no block: the suffix goes on at the same level
    assert syntax_check("if y:", ctx) == ("", "syntax")
    # a dedent below every enclosing level
    assert syntax_check("z = 2\n  w = 3", ctx) == ("z = 2", "syntax")
    # a sound statement still passes
    assert syntax_check("y = y + 1", ctx) == ("y = y + 1", None)


def test_syntax_rule_window_starting_inside_a_docstring():
    """A prefix window whose first lines are the inside of a docstring: the rule starts its parse
    at a later statement, so an opener with no block is still caught."""
    from ghost_lsp.completion.filters.syntax import syntax_check
    from ghost_lsp.types import Context

    prefix = ("    the inner function's signature exactly, allowing seamless usage\n"
              "    of the wrapper.\n    \"\"\"\n    x = 1\n    for arg in args:\n        ")
    ctx = Context(prefix=prefix, suffix="\n        total += arg\n    return total\n", path="a.py", language="python")
    assert syntax_check("if not isinstance(arg, str):", ctx) == ("", "syntax")
    assert syntax_check("total = arg", ctx) == ("total = arg", None)
