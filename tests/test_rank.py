from ghost_lsp.rank import rank, score
from ghost_lsp.types import Candidate


def cand(lps):
    return Candidate(text="x", logprobs=lps)


def test_higher_mean_logprob_ranks_first_and_empty_is_excluded():
    cs = [cand([-2.0, -2.0]), cand([-0.1, -0.3]), cand([-0.01])]
    kept = [("a", []), ("b", []), ("", ["empty"])]
    assert rank(cs, kept) == [1, 0]


def test_defect_cuts_are_penalised_but_block_ends_are_not():
    c = cand([-0.5])
    assert score(c, "a", ["end_of_block"]) == score(c, "a", [])
    assert score(c, "a", ["cycle"]) < score(c, "a", [])


def test_length_does_not_hurt_a_confident_candidate():
    assert rank([cand([-0.2]), cand([-0.2] * 30)], [("a", []), ("a\nb\nc", [])]) == [1, 0]
