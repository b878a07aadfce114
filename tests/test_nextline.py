from ghost_lsp.tools.evals.nextline import edit_similarity, evaluate, function_body_lines, sample_positions

SRC = '''import os


def f(x):
    """Doc."""
    y = x + 1
    # comment
    return y


class A:
    def m(self):
        return 42
'''


def test_positions_are_inside_function_bodies_after_indentation():
    assert function_body_lines(SRC) == [5, 6, 7, 12]
    pos = sample_positions([("a.py", SRC)], 10)
    assert sorted(p.target for p in pos) == ["return 42", "return y", "y = x + 1"]
    assert all(p.character == 4 or p.character == 8 for p in pos)
    assert function_body_lines("def broken(:\n") == []


def test_metrics():
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("", "abcd") == 0.0
    assert edit_similarity("abcd", "abce") == 0.75
    pos = sample_positions([("a.py", SRC)], 10)
    res = evaluate(pos, lambda p: p.target + "   \nextra")
    assert res.exact_match == 1.0 and res.empty_rate == 0.0
    res = evaluate(pos, lambda p: "")
    assert res.exact_match == 0.0 and res.empty_rate == 1.0
