import pytest

from ghost_lsp.context import collect_context
from ghost_lsp.context.window import ANCHOR_CHARS
from ghost_lsp.positions import offset_of
from ghost_lsp.languages import language_for_path

DOC = "import os\n\ndef f(x):\n    return x\n"


def test_prefix_and_suffix_split_at_cursor():
    ctx = collect_context(DOC, 3, 4, path="a.py", language="python")
    assert ctx.prefix == "import os\n\ndef f(x):\n    "
    assert ctx.suffix == "return x\n"
    assert ctx.current_line_prefix == "    "


def test_character_past_line_end_is_clamped_to_line_end():
    ctx = collect_context(DOC, 0, 99, path="a.py", language="python")
    assert ctx.prefix == "import os"
    assert ctx.suffix.startswith("\n\ndef")


@pytest.mark.parametrize("line,char", [(-1, 0), (0, -1), (10, 0)])
def test_bad_positions_raise_value_error(line, char):
    with pytest.raises(ValueError):
        offset_of(DOC, line, char)


def test_windows_cut_at_whole_lines():
    doc = "".join(f"line_{i} = {i}\n" for i in range(1000))
    ctx = collect_context(doc, 500, 0, path="a.py", language="python", max_prefix_chars=100, max_suffix_chars=50)
    assert len(ctx.prefix) <= 100 and ctx.prefix.startswith("line_") and ctx.prefix.endswith("\n")
    assert len(ctx.suffix) <= 50 and ctx.suffix.startswith("line_500") and ctx.suffix.endswith("\n")


def test_crlf_is_normalised_and_non_ascii_positions_are_code_points():
    doc = "s = 'héllo😀'\r\nx = 1\r\n"
    ctx = collect_context(doc, 0, 11, path="a.py", language="python")
    assert ctx.prefix == "s = 'héllo😀"
    assert ctx.suffix == "'\nx = 1\n"


def test_language_from_path():
    assert language_for_path("pkg/mod.py") == "python"
    assert language_for_path("README") == "plaintext"


def test_prefix_window_start_is_anchored_and_moves_once_per_anchor_step():
    lines = [f"item_{i} = make({i}, {i % 7})" for i in range(600)]
    starts = []
    for i in range(300, 400):
        for k in range(0, len(lines[i]) + 1, 3):
            doc = "\n".join(lines[:i]) + "\n" + lines[i][:k]
            ctx = collect_context(doc, i, k, path="a.py", language="python")
            start = len(doc) - len(ctx.prefix)
            assert ctx.prefix == doc[start:] and doc[start - 1] == "\n"  # a whole first line
            assert 4000 - ANCHOR_CHARS - len(lines[0]) - 1 <= len(ctx.prefix) <= 4000
            starts.append(start)
    typed = len("\n".join(lines[:400])) - len("\n".join(lines[:300]))
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    assert starts == sorted(starts) and 1 <= moves <= typed // ANCHOR_CHARS + 1


def test_short_document_prefix_is_the_whole_text_before_the_cursor():
    doc = "".join(f"x{i} = {i}\n" for i in range(50))
    ctx = collect_context(doc, 49, 3, path="a.py", language="python")
    assert ctx.prefix == doc[:doc.index("x49") + 3]


def test_one_long_line_keeps_the_cut_and_crlf_is_still_normalised():
    ctx = collect_context("x" * 10_000, 0, 10_000, path="a.py", language="python")
    assert set(ctx.prefix) == {"x"} and 4000 - ANCHOR_CHARS <= len(ctx.prefix) <= 4000
    doc = "".join(f"line_{i} = {i}\r\n" for i in range(1000))
    ctx = collect_context(doc, 900, 4, path="a.py", language="python")
    assert "\r" not in ctx.prefix and ctx.prefix.startswith("line_") and ctx.prefix.endswith("\nline")
