"""Forward (type-through) cache and adaptive debounce: alone, and inside the completer."""

import asyncio

import pytest

from ghost_lsp.completion.debounce import Debouncer
from ghost_lsp.completion.forward_cache import ForwardCache
from ghost_lsp.positions import split_at
from ghost_lsp.completion.completer import Completer
from ghost_lsp.completion.filters import ALL_OFF
from ghost_lsp.settings.core import Settings
from ghost_lsp.types import Completion, CompletionRequest
from tests.test_completer import FakeEngine


def test_split_at_counts_code_points_and_clamps():
    text = "a = 'é'\nbc\n"
    assert split_at(text, 0, 6) == ("a = 'é", "'\nbc\n")
    assert split_at(text, 1, 1) == ("a = 'é'\nb", "c\n")
    assert split_at(text, 1, 99) == ("a = 'é'\nbc", "\n")
    assert split_at(text, 9, 0) == (text, "")


def _ids():
    n = iter(range(100))
    return lambda: f"id{next(n)}"


def _shown(text="items.append(x)", alternatives=()):
    return Completion(id="orig", text=text, alternatives=list(alternatives), timings_ms={"total_ms": 40.0})


def test_forward_cache_answers_the_rest_while_the_user_types_it():
    fc, new_id = ForwardCache(), _ids()
    fc.put("u", "    self.", "\n", _shown(alternatives=["items.clear()", "other()"]))
    hit = fc.get("u", "    self.items.ap", "\n", new_id)
    assert hit.text == "pend(x)" and hit.id == "id0"
    assert hit.alternatives == []  # "items.clear()" does not continue "items.ap"
    assert hit.timings_ms == {"forward_cache": 1.0}
    again = fc.get("u", "    self.items", "\n", new_id)  # still measured from the original
    assert again.text == ".append(x)" and again.alternatives == [".clear()"]
    assert fc.get("u", "    self.", "\n", new_id) is None  # same position: ask the model again
    assert fc.hits == 2 and fc.misses == 1


@pytest.mark.parametrize("prefix, suffix, why", [
    ("    self.itemz", "\n", "typed something else"),
    ("    self.items.append(x)", "\n", "typed all of it: nothing left to show"),
    ("    self.items", "\nnew line below\n", "the text after the cursor changed"),
    ("    sel", "\n", "backspace past the start"),
    ("    other.items", "\n", "an edit before the cursor"),
])
def test_forward_cache_misses_when_the_text_diverges(prefix, suffix, why):
    fc = ForwardCache()
    fc.put("u", "    self.", "\n", _shown())
    assert fc.get("u", prefix, suffix, _ids()) is None, why
    assert fc.get("other-doc", "    self.items", "\n", _ids()) is None
    assert fc.misses == 2


def test_forward_cache_is_bounded():
    fc = ForwardCache(max_docs=2)
    for u in "abc":
        fc.put(u, "x", "", _shown())
    assert fc.get("a", "xi", "", _ids()) is None and fc.get("c", "xi", "", _ids()) is not None


def test_debounce_adapts_to_the_typing_pace():
    now = [0.0]
    d = Debouncer(30, clock=lambda: now[0])
    assert d.delay_ms("u") == 30  # first request: the base
    for _ in range(4):  # a burst, keys 80 ms apart: wait longer so the next key supersedes
        now[0] += 0.08
        burst = d.delay_ms("u")
    assert burst == pytest.approx(32.0)
    now[0] += 0.05
    assert 30 <= d.delay_ms("u") <= 60
    now[0] += 2.0  # after a pause nothing is coming to coalesce with
    assert d.delay_ms("u") == 0
    now[0] += 0.4
    assert d.delay_ms("u") == 30  # slow typing: the base
    assert Debouncer(0).delay_ms("u") == 0


def test_no_wait_when_the_model_answers_before_the_next_key():
    now = [0.0]
    d = Debouncer(30, clock=lambda: now[0])
    d.delay_ms("u")
    d.note_inference(200.0)  # slow model, keys 80 ms apart: coalesce
    now[0] += 0.08
    assert d.delay_ms("u") == pytest.approx(32.0)
    for _ in range(10):
        d.note_inference(20.0)  # the model got fast (warm caches): answers beat the next key
    now[0] += 0.08
    assert d.delay_ms("u") == 0


# -- inside the completer ------------------------------------------------------------------------

TEXT = "class S:\n    def push(self, x):\n        self.\n"
REQ = CompletionRequest(uri="file:///p/s.py", version=1, line=2, character=13, path="/p/s.py",
                        multiline=False)


def _typed(n: int, suggestion: str = "items.append(x)"):
    text = TEXT.replace("self.\n", "self." + suggestion[:n] + "\n")
    return text, CompletionRequest(uri=REQ.uri, version=2 + n, line=2, character=13 + n,
                                   path=REQ.path, multiline=False)


async def test_type_through_runs_no_model_and_divergence_runs_it_again():
    engine = FakeEngine(text="items.append(x)")
    comp = Completer(engine, Settings(debounce_ms=0, filters=ALL_OFF))
    first = await comp.complete(REQ, TEXT)
    assert first.text == "items.append(x)" and len(engine.calls) == 1
    for n in (1, 5, 9):
        text, req = _typed(n)
        c = await comp.complete(req, text)
        assert c.text == "items.append(x)"[n:] and c.id != first.id
    assert len(engine.calls) == 1 and comp.forward.hits == 3
    text, req = _typed(3, "itx")  # diverged: the model runs again
    c = await comp.complete(req, text)
    assert len(engine.calls) == 2 and c is not None
    off = Completer(FakeEngine(text="items.append(x)"), Settings(debounce_ms=0, forward_cache=False,
                                                                 filters=ALL_OFF))
    await off.complete(REQ, TEXT)
    await off.complete(*reversed(_typed(2)))
    assert len(off.engine.calls) == 2


async def test_a_burst_is_coalesced_into_one_inference():
    engine = FakeEngine(text="items.append(x)")
    comp = Completer(engine, Settings(debounce_ms=50, forward_cache=False, filters=ALL_OFF))
    versions = [_typed(0, "abc"), _typed(1, "abc"), _typed(2, "abc")]
    tasks = []
    for text, req in versions:
        tasks.append(asyncio.create_task(comp.complete(req, text)))
        await asyncio.sleep(0.005)  # keys 5 ms apart: well inside the debounce
    results = await asyncio.gather(*tasks)
    assert results[0] is None and results[1] is None and results[2] is not None
    assert len(engine.calls) == 1


def test_a_settings_change_drops_cached_suggestions_but_an_unchanged_one_keeps_them():
    from ghost_lsp.lsp.server import GhostServer

    server = GhostServer(Settings())
    server.apply_settings(initial=True)
    server.completer.forward.put("u", "    self.", "\n", _shown())
    server.apply_settings({"ghost": {}})  # same settings again: the cache stays
    assert server.completer.forward.get("u", "    self.it", "\n", _ids()) is not None
    server.apply_settings({"ghost": {"temperature": 0.1}})  # e.g. another model or sampling
    assert server.completer.forward.get("u", "    self.it", "\n", _ids()) is None
