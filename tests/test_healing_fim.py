"""FIM prompts are healed at the cursor (end of the prefix part), not at <fim_middle>."""

from ghost_lsp.engine.healing import heal_prompt

# token id -> bytes; 0..2 are the sentinels (special: empty bytes)
TB = [b"", b"", b"", b"def", b" f", b"():", b"\n   ", b" ", b"return", b"\n"]
SUF, MID = 1, 2


def test_plain_prompt_heals_its_tail():
    ids, healed = heal_prompt([3, 4, 5, 6, 7], TB, (SUF, MID))
    assert ids == [3, 4, 5] and healed == b"\n    "


def test_fim_prompt_heals_the_prefix_part_and_keeps_the_sentinels():
    prompt = [0, 3, 4, 5, 6, 7, SUF, 9, 8, MID]
    ids, healed = heal_prompt(prompt, TB, (SUF, MID))
    assert ids == [0, 3, 4, 5, SUF, 9, 8, MID]
    assert healed == b"\n    "


def test_without_fim_ids_a_prompt_ending_in_a_sentinel_is_left_alone():
    prompt = [0, 3, 4, SUF, 9, MID]
    assert heal_prompt(prompt, TB) == (prompt, b"")
