import pytest

from ghost_lsp.context import collect_context
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
