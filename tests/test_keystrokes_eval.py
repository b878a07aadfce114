"""`ghost-lsp eval keystrokes`: a simulated user typing into the real server process."""

import pytest

from ghost_lsp.tools.evals.keystrokes import ghost_of, run_keystrokes, split_files

pytestmark = pytest.mark.slow

PROJECT = {
    f"pkg/mod{i}.py": "\n".join([
        "import os", "", "",
        f"def helper_{i}(path, name):",
        "    full = os.path.join(path, name)",
        "    if os.path.exists(full):",
        "        return full",
        "    return None",
        "",
        "",
        f"def other_{i}(values):",
        "    total = 0",
        "    for value in values:",
        "        total += value",
        "    return total",
        "",
    ]) for i in range(8)
}


def test_split_keeps_files_under_test_out_of_the_workspace():
    files = list(PROJECT.items())
    under, rest = split_files(files, 0.3)
    assert under and rest
    assert {p for p, _ in under}.isdisjoint({p for p, _ in rest})
    assert sorted(under + rest) == sorted(files)
    assert split_files(files, 0.3) == (under, rest)  # stable


def test_ghost_text_is_what_follows_the_cursor():
    assert ghost_of("    return total", "    ret", 7) == "urn total"
    assert ghost_of("    other", "    ret", 7) == ""  # does not repeat the line: not shown


def test_simulated_user_through_the_server_counts_every_key(tmp_path):
    for rel, text in PROJECT.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    m = run_keystrokes(tmp_path, lines=6, test_share=0.3)
    assert m["lines"] == 6 and m["errors"] == 0
    # every character was either typed (one key) or came from a Tab (one key for many)
    assert m["chars"] == m["keys"] - m["tabs"] + m["chars_from_tab"]
    assert m["requests"] == m["keys"]
    assert 0 <= m["keystrokes_saved"] < 1 and 0 <= m["shown_rate"] <= 1
    assert m["latency_p50_ms"] > 0
    assert m["files_under_test"] + m["workspace_files"] == len(PROJECT)
    # the next line at each line's start: a whole-line match is also a Tab the user took
    assert 0 <= m["line_exact"] <= min(m["lines"], m["tabs"])
    assert 0 <= m["next_line_edit_similarity"] <= 1
    assert m["next_line_exact_match"] == pytest.approx(m["line_exact"] / 6, abs=1e-4)  # reported to 4 places


def test_sources_combine_by_counts():
    from ghost_lsp.tools.evals.keystrokes import combine

    def one(lines, exact, sim_sum, src):
        return {"lines": lines, "chars": 10 * lines, "keys": 5 * lines, "requests": 5 * lines, "errors": 0,
                "chars_from_tab": 0, "shown": lines, "tabs": exact, "line_exact": exact, "source": src,
                "_latencies": [1.0] * lines, "_line_similarity": sim_sum}

    m = combine([one(3, 1, 1.5, "a"), one(1, 1, 1.0, "b")])
    assert m["lines"] == 4 and m["line_exact"] == 2
    assert m["next_line_exact_match"] == 0.5 and m["next_line_edit_similarity"] == 0.625


def test_grid_spells_every_combination():
    from ghost_lsp.tools.evals.keystrokes import _grid

    g = _grid(["min_token_logprob=-9,-2", "min_mean_logprob=-3,-1,-0.5"])
    assert len(g) == 6 and {"min_token_logprob": -2.0, "min_mean_logprob": -0.5} in g
    with pytest.raises(ValueError):
        _grid(["min_token_logprob"])
