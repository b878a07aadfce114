import pytest

from ghost_lsp.completion.rank import AGREE_BONUS, CUT_PENALTY, ModelReranker, rank, score
from ghost_lsp.types import Candidate


def cand(lps, model=None, offsets=None):
    return Candidate(text="x", logprobs=lps, model_logprobs=model or [], offsets=offsets or [])


def test_higher_mean_logprob_ranks_first_and_empty_is_excluded():
    cs = [cand([-2.0, -2.0]), cand([-0.1, -0.3]), cand([-0.01])]
    kept = [("a", []), ("b", []), ("", ["empty"])]
    assert rank(cs, kept) == [1, 0]


def test_defect_cuts_are_penalised_but_block_ends_are_not():
    c = cand([-0.5])
    assert score(c, "a", ["end_of_block"]) == score(c, "a", [])
    assert score(c, "a", ["cycle"]) == pytest.approx(score(c, "a", []) - CUT_PENALTY)


def test_length_does_not_hurt_a_confident_candidate():
    assert rank([cand([-0.2]), cand([-0.2] * 30)], [("a", []), ("a\nb\nc", [])]) == [1, 0]


def test_model_logprobs_not_the_samplers_decide():
    # a sample at low temperature looks sure to the sampler, the model itself was not
    sampled = cand([-0.01, -0.01], model=[-3.0, -3.0])
    greedy = cand([-1.0, -1.0], model=[-1.0, -1.0])
    assert rank([sampled, greedy], [("a", []), ("b", [])]) == [1, 0]


def test_only_tokens_inside_the_kept_text_count():
    # the cut-off tail (offset 5 and on) was very unlikely; the kept "ab" was likely
    c = cand([-0.1, -0.1, -9.0, -9.0], offsets=[0, 1, 5, 6])
    other = cand([-1.0])
    assert rank([c, other], [("ab", ["cycle"]), ("zz", [])]) == [0, 1]


def test_duplicates_listed_once_with_an_agreement_bonus():
    cs = [cand([-1.0]), cand([-0.9]), cand([-1.05])]
    kept = [("same", []), ("other", []), ("same", [])]
    order = rank(cs, kept)
    assert order == [0, 1]  # -1.0 + bonus beats -0.9
    assert score(cs[0], "same", [], agree=1) == pytest.approx(-1.0 + AGREE_BONUS)


class FakeReranker:
    def __init__(self, prefer):
        self.prefer, self.calls = prefer, []

    def scores(self, prefix, texts):
        self.calls.append((prefix, list(texts)))
        return [0.0 if t == self.prefer else -5.0 for t in texts]


def test_reranker_replaces_the_first_models_term():
    cs = [cand([-0.1]), cand([-2.0])]
    kept = [("a", []), ("b", [])]
    rr = FakeReranker("b")
    assert rank(cs, kept, reranker=rr, prefix="def f():\n") == [1, 0]
    assert rr.calls == [("def f():\n", ["a", "b"])]


def test_a_failing_reranker_falls_back_to_the_first_model():
    class Broken:
        def scores(self, prefix, texts):
            raise RuntimeError("model gone")

    assert rank([cand([-2.0]), cand([-0.1])], [("a", []), ("b", [])], reranker=Broken()) == [1, 0]


def test_model_reranker_means_token_logprobs():
    class Engine:
        def token_logprobs(self, prompt, text):
            return {"good": [-0.5, -1.5], "bad": [-4.0]}[text] if text else []

    assert ModelReranker(Engine()).scores("p", ["good", "bad"]) == [-1.0, -4.0]


@pytest.mark.slow
def test_model_reranker_on_a_real_model(tiny_model_dir):
    from ghost_lsp.engine.onnx import OnnxEngine

    scores = ModelReranker(OnnxEngine(tiny_model_dir)).scores("def f(x):\n    return", [" x", " x + 1"])
    assert len(scores) == 2 and all(s < 0 for s in scores)


# -- candidates and ranking through the completer (fake engine, real stages) ---------------------


class TempEngine:
    """Returns a different text per temperature, with log-probs that make T=0.6 the best."""

    model_id = "fake:temps"

    def __init__(self):
        from ghost_lsp.engine.manifest import Manifest

        self.manifest = Manifest(name="fake")
        self.calls = []

    def count_tokens(self, text):
        return len(text) // 4 + 1

    def generate(self, prompt, params, cancel=None, deadline=None):
        self.calls.append(params)
        text, lp = {0.0: ("a + b", -1.0), 0.2: ("a - b", -2.0), 0.6: ("a * b", -0.5)}[params.temperature]
        return Candidate(text=text, token_ids=[1, 2], logprobs=[-0.01, -0.01], model_logprobs=[lp, lp],
                         offsets=[0, 2])


async def test_candidates_at_set_temperatures_ranked_with_alternatives():
    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.types import CompletionRequest

    from ghost_lsp.settings.filters import FilterSettings

    engine = TempEngine()
    # the fake log-probs rank the candidates; the probability cut would shorten them all
    s = Settings(debounce_ms=0, n=3, temperatures=(0.0, 0.2, 0.6), filters=FilterSettings(min_cum_logprob=float("-inf")))
    req = CompletionRequest(uri="file:///p/m.py", version=1, line=1, character=11, path="/p/m.py")
    completer = Completer(engine, s)
    c = await completer.complete(req, "def add(a, b):\n    return \n")
    assert [p.temperature for p in engine.calls] == [0.0, 0.2, 0.6]
    assert all(p.stop_check is not None for p in engine.calls)  # early stop is on by default
    assert c.text == "a * b" and c.alternatives == ["a + b", "a - b"]
    completer.close()


async def test_filter_settings_reach_the_filters_and_cuts_are_counted():
    from dataclasses import replace

    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.settings.core import Settings, from_dict
    from ghost_lsp.types import CompletionRequest

    class Loopy(TempEngine):
        def generate(self, prompt, params, cancel=None, deadline=None):
            self.calls.append(params)
            return Candidate(text="x = f(1)\n    x = f(1)\n    x = f(1)", token_ids=[1], logprobs=[-0.1])

    req = CompletionRequest(uri="file:///p/m.py", version=1, line=1, character=4, path="/p/m.py")
    text = "def g():\n    \n"
    on = Completer(Loopy(), Settings(debounce_ms=0))
    c = await on.complete(req, text)
    assert c.text == "x = f(1)" and "cycle" in c.cut_reasons and on.cut_counts["cycle"] == 1
    off_settings, warnings = from_dict({"filters": {"cycle": False, "earlyStop": False}}, Settings(debounce_ms=0))
    assert warnings == [] and off_settings.filters == replace(off_settings.filters, cycle=False)
    off = Completer(Loopy(), off_settings)
    c = await off.complete(req, text)
    assert c.text.count("x = f(1)") == 3 and "cycle" not in c.cut_reasons
    assert off.engine.calls[0].stop_check is None
    on.close(), off.close()
