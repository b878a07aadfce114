"""Table tests: each case in tests/data/filters/cases.json is input → expected text and reasons."""

import json
from pathlib import Path

import pytest

from ghost_lsp.filters import FilterSettings, apply_filters
from ghost_lsp.types import Context

CASES = json.loads((Path(__file__).parent / "data" / "filters" / "cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_filter_case(case):
    ctx = Context(prefix=case["prefix"], suffix=case["suffix"], path="a.py", language="python")
    text, reasons = apply_filters(case["candidate"], ctx, multiline=case["multiline"])
    assert text == case["expect"]
    assert reasons == case["reasons"]


def test_rules_can_be_switched_off():
    ctx = Context(prefix="def f():\n    ", suffix="", path="a.py", language="python")
    cand = "x = foo(1)\n    x = foo(1)\n    x = foo(1)"
    text, reasons = apply_filters(cand, ctx, multiline=True, settings=FilterSettings(cycle=False))
    assert text == cand and "cycle" not in reasons
