"""The llama.cpp engine (engine/llamacpp.py) on a GGUF written at test time from the tiny random
Llama the ONNX tests use: the same tokens and log-probs as the fp32 ONNX engine, stops, cancel,
deadline, the KV prefix reuse and its slots (one per document, LRU), clear errors for bad files and a missing extra, `ghost-lsp
complete` and the real language server on a .gguf."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time

import pytest

from ghost_lsp.engine.base import EngineError, LocalEngine
from ghost_lsp.engine.loading import load_local
from ghost_lsp.engine.speculative import Adapt
from ghost_lsp.types import SamplingParams

PROMPTS = [
    "def add(a, b):\n    return ",
    "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        ",
    "<fim_prefix>def push(self, item):\n    self.<fim_suffix>\n\n    def pop(self):<fim_middle>",
    "class Stack:\n    def __init__(self):\n        self.items = [",
]


def needs_llama_cpp():
    pytest.importorskip("llama_cpp", reason='llama-cpp-python: pip install -e ".[llama]" (in the dev extra)')


@pytest.fixture(scope="module")
def gguf_f32(tiny_hf_llama, tmp_path_factory):
    """The tiny Llama of tiny_model_dir_fp32 (same seed, same weights) as an f32 GGUF."""
    from ghost_lsp.tools.bench.peer_models import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    write_gguf(tiny_hf_llama, path, "f32")
    return path


@pytest.fixture(scope="module")
def engine(gguf_f32):
    needs_llama_cpp()
    return load_local(gguf_f32, intra_op_threads=1, kv_f32=True)


@pytest.fixture(scope="module")
def onnx(tiny_model_dir_fp32):
    return load_local(tiny_model_dir_fp32, intra_op_threads=1)


def greedy(n=12, **kw):
    return SamplingParams(max_new_tokens=n, temperature=0.0, **kw)


def test_manifest_is_read_from_the_gguf(engine, onnx):
    m, ref = engine.manifest, onnx.manifest
    assert isinstance(engine, LocalEngine)
    assert (m.engine, m.gguf, m.architecture) == ("llama.cpp", "tiny-f32.gguf", "llama")
    assert (m.family, m.fim, m.eos_token) == (ref.family, ref.fim, ref.eos_token)
    assert (m.fim_prefix, m.fim_suffix, m.fim_middle) == (ref.fim_prefix, ref.fim_suffix, ref.fim_middle)
    assert m.context_length == ref.context_length == 256
    assert engine.model_id.endswith(":f32") and engine.eos_id == onnx.eos_id


def test_tokens_are_the_onnx_engines(engine, onnx):
    for p in PROMPTS:
        assert engine.encode(p) == onnx.encode(p), p
    n = len(onnx.token_bytes)
    assert engine.token_bytes[5:n] == onnx.token_bytes[5:n]  # 0..4: control tokens, no text
    assert engine.count_tokens(PROMPTS[0]) == onnx.count_tokens(PROMPTS[0])


def test_greedy_tokens_and_logprobs_agree_with_onnx_fp32(engine, onnx):
    for p in PROMPTS:
        got, ref = engine.generate(p, greedy()), onnx.generate(p, greedy())
        assert got.token_ids == ref.token_ids and got.text == ref.text, p
        assert got.finish_reason == ref.finish_reason and got.offsets == ref.offsets
        assert all(math.isfinite(x) and x <= 0 for x in got.logprobs)
        assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-3)
        assert got.model_logprobs == pytest.approx(ref.model_logprobs, abs=1e-3)
        assert got.prompt_tokens == ref.prompt_tokens


def test_token_logprobs_score_like_onnx(engine, onnx):
    cont = onnx.generate(PROMPTS[0], greedy(6)).token_ids
    got, ref = engine.token_logprobs(PROMPTS[0], cont), onnx.token_logprobs(PROMPTS[0], cont)
    assert len(got) == len(cont) and got == pytest.approx(ref, abs=1e-3)
    assert engine.token_logprobs(PROMPTS[1], "x = 1") == pytest.approx(onnx.token_logprobs(PROMPTS[1], "x = 1"),
                                                                        abs=1e-3)


def test_sampling_with_a_seed_repeats(engine):
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    a, b = engine.generate(PROMPTS[1], params), engine.generate(PROMPTS[1], params)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_stop_sequences_and_max_tokens(engine):
    full = engine.generate(PROMPTS[3], greedy(16))
    assert full.finish_reason == "length" and len(full.token_ids) >= 16  # + the healed prompt tail re-spelled
    text = full.text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop.strip(), text
    cut = engine.generate(PROMPTS[3], greedy(16, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.text == text[:text.find(stop)]
    assert len(cut.token_ids) < 16
    short = engine.generate(PROMPTS[3], greedy(3))
    assert short.finish_reason == "length" and short.token_ids == full.token_ids[:len(short.token_ids)]
    assert len(short.token_ids) == 3 + len(full.token_ids) - 16
    assert engine.generate(PROMPTS[3], greedy(16, stop_check=lambda t: len(t) >= 2)).finish_reason == "early_stop"


def test_cancel_and_deadline(engine):
    cancel = threading.Event()
    cancel.set()
    c = engine.generate(PROMPTS[0], greedy(), cancel)
    assert c.finish_reason == "cancelled" and c.token_ids == []
    d = engine.generate(PROMPTS[0], greedy(), deadline=time.monotonic() - 1)
    assert d.finish_reason == "deadline" and d.token_ids == []


def test_kv_cache_reuses_the_shared_prefix(gguf_f32):
    needs_llama_cpp()
    eng = load_local(gguf_f32, intra_op_threads=1, kv_f32=True)
    cold = load_local(gguf_f32, intra_op_threads=1, kv_f32=True, reuse_kv=False)
    base = PROMPTS[1] * 3
    n_prompt = len(eng.encode(base))
    eng.generate(base, greedy(4))
    before = eng.model.evaluated
    typed = eng.generate(base + "lines = f.", greedy(4))  # the user typed a few characters more
    ran = eng.model.evaluated - before
    assert ran < 4 + 12, (ran, n_prompt)  # the new characters' tokens and the decode steps, not the prompt
    assert eng.kv_cache.stats()["reused_tokens"] >= n_prompt - 2
    fresh = cold.generate(base + "lines = f.", greedy(4))
    assert typed.token_ids == fresh.token_ids
    assert typed.logprobs == pytest.approx(fresh.logprobs, abs=1e-4)
    before = cold.model.evaluated
    cold.generate(base + "lines = f.", greedy(4))
    assert cold.model.evaluated - before >= n_prompt  # without reuse the whole prompt runs again
    # the same prompt again (the next candidate): nothing of the prompt runs
    before = eng.model.evaluated
    again = eng.generate(base + "lines = f.", greedy(4))
    assert again.token_ids == typed.token_ids and eng.model.evaluated - before <= 4
    # another document in between: it shares nothing, the cache follows it, answers stay right
    other = eng.generate("x" * 40, greedy(4))
    assert other.token_ids == cold.generate("x" * 40, greedy(4)).token_ids
    assert eng.generate(base, greedy(4)).token_ids == cold.generate(base, greedy(4)).token_ids


def slots_engine(path, **kw):
    return load_local(path, intra_op_threads=1, kv_f32=True, **kw)


def keystroke(eng, prompt, key=None):
    """A request; (candidate, prompt tokens it ran, prompt tokens it reused)."""
    s0 = eng.kv_cache.stats()
    c = eng.generate(prompt, greedy(4), cache_key=key)
    s1 = eng.kv_cache.stats()
    return c, s1["run_tokens"] - s0["run_tokens"], s1["reused_tokens"] - s0["reused_tokens"]


DOCS = {"a.py": PROMPTS[1] * 3, "b.py": PROMPTS[3] * 3}


@pytest.mark.parametrize("keyed", [True, False])
def test_two_documents_alternating_keep_their_prefixes(gguf_f32, keyed):
    needs_llama_cpp()
    fim = f"<fim_prefix>{DOCS['b.py']}<fim_suffix>\n<fim_middle>"
    docs = dict(DOCS) if keyed else {"l2r": DOCS["a.py"], "fim": fim}  # keyless: two prompt shapes
    for slots, reuses in ((4, True), (1, False)):
        eng = slots_engine(gguf_f32, kv_entries=slots)
        for name, text in docs.items():
            keystroke(eng, text, name if keyed else None)
        for typed in ("x", "xy", "xy ", "xy =", "xy = f"):
            for name, text in docs.items():
                prompt = text + typed if name != "fim" else text.replace("<fim_suffix>", typed + "<fim_suffix>")
                n_prompt = len(eng.encode(prompt))
                _, ran, reused = keystroke(eng, prompt, name if keyed else None)
                if reuses:  # the document's prefix was still there: only the new tokens ran (FIM: and the suffix's)
                    assert ran <= 8 and reused >= n_prompt - 8, (slots, name, typed, ran, reused)
                else:  # one slot: the other document had replaced it
                    assert ran >= n_prompt - 8, (slots, name, typed, ran, reused)
        assert eng.kv_cache.stats()["entries"] == min(slots, 2)


def test_slots_give_what_a_fresh_engine_gives_token_for_token(gguf_f32):
    needs_llama_cpp()
    eng, cold = slots_engine(gguf_f32, kv_entries=3), slots_engine(gguf_f32, reuse_kv=False)
    assert cold.model.n_seq == 1
    docs = {**DOCS, "c.py": PROMPTS[0] * 4, "d.py": PROMPTS[1] * 2 + "import sys\n"}  # d shares a with it
    for typed in ("", "v", "va", "val"):
        for name, text in docs.items():
            got = eng.generate(text + typed, greedy(8), cache_key=name)
            ref = cold.generate(text + typed, greedy(8))
            assert got.token_ids == ref.token_ids, (name, typed)
            assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    seed = SamplingParams(max_new_tokens=8, temperature=0.8, seed=3)
    assert eng.generate(DOCS["b.py"], seed, cache_key="b.py").token_ids == cold.generate(DOCS["b.py"], seed).token_ids
    assert eng.kv_cache.stats()["hits"] > 0


def test_the_least_recently_used_document_gives_up_its_slot(gguf_f32):
    needs_llama_cpp()
    eng = slots_engine(gguf_f32, kv_entries=2)
    docs = {**DOCS, "c.py": PROMPTS[0] * 4}
    keystroke(eng, docs["a.py"], "a.py")
    keystroke(eng, docs["b.py"], "b.py")
    assert keystroke(eng, docs["a.py"] + "x", "a.py")[1] <= 4  # a used again: b is now the oldest
    keystroke(eng, docs["c.py"], "c.py")  # a third document: b's slot goes
    assert eng.kv_cache.stats()["entries"] == 2
    assert keystroke(eng, docs["a.py"] + "xy", "a.py")[1] <= 4
    assert keystroke(eng, docs["c.py"] + "x", "c.py")[1] <= 4
    _, ran, reused = keystroke(eng, docs["b.py"] + "x", "b.py")  # runs again, in a's slot (the oldest now)
    assert reused == 0 and ran >= len(eng.encode(docs["b.py"])) - 2  # (token healing re-chooses the last)
    assert keystroke(eng, docs["c.py"] + "xy", "c.py")[1] <= 4
    _, ran, _ = keystroke(eng, docs["a.py"] + "xyz", "a.py")
    assert ran >= len(eng.encode(docs["a.py"])) - 2


def test_a_new_document_starts_from_a_prefix_another_holds(gguf_f32):
    needs_llama_cpp()
    eng, cold = slots_engine(gguf_f32), slots_engine(gguf_f32, reuse_kv=False)
    shared = DOCS["a.py"]
    keystroke(eng, shared, "a.py")
    got, ran, reused = keystroke(eng, shared + "class B:\n    ", "b.py")  # its slot gets a copy of a's prefix
    assert reused >= len(eng.encode(shared)) - 2 and ran <= 8
    assert got.token_ids == cold.generate(shared + "class B:\n    ", greedy(4)).token_ids
    assert eng.kv_cache.stats()["entries"] == 2
    again, ran, _ = keystroke(eng, shared + "x", "a.py")  # a's own slot was left as it was
    assert ran <= 4 and again.token_ids == cold.generate(shared + "x", greedy(4)).token_ids


def test_clear_empties_every_slot(gguf_f32):
    needs_llama_cpp()
    eng = slots_engine(gguf_f32, kv_entries=3)
    first = {name: keystroke(eng, text, name)[0].token_ids for name, text in DOCS.items()}
    stats = eng.kv_cache.stats()
    assert stats["entries"] == 2 and stats["tokens"] > 0
    eng.kv_cache.clear()
    stats = eng.kv_cache.stats()
    assert stats["entries"] == 0 and stats["tokens"] == 0
    for name, text in DOCS.items():
        got, ran, reused = keystroke(eng, text, name)
        assert reused == 0 and ran >= len(eng.encode(text)) - 2 and got.token_ids == first[name]
    for seq in range(3):  # llama.cpp's cache is as empty as the slots say
        assert eng.model.lc.llama_memory_seq_pos_max(eng.model.lc.llama_get_memory(eng.model.ctx), seq) in (
            -1, *(len(s.ids) - 1 for s in eng.kv_cache.slots if s.seq == seq))


def test_each_slot_costs_one_sequences_kv_memory(gguf_f32, caplog):
    needs_llama_cpp()
    import logging
    import re

    caplog.set_level(logging.DEBUG, logger="ghost_lsp.llama_cpp")
    one, four = slots_engine(gguf_f32, kv_entries=1), slots_engine(gguf_f32, kv_entries=4)
    assert (one.model.n_seq, four.model.n_seq) == (1, 4)
    assert four.model.n_ctx == one.model.n_ctx == four.manifest.context_length == 256  # every slot the full context
    assert four.model.kv_bytes == 4 * one.model.kv_bytes == 4 * 256 * 2 * 2 * (12 + 12) * 4  # f32: 4 bytes
    sizes = [float(x) for x in re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", caplog.text)]
    assert sizes[-2:] == pytest.approx([one.model.kv_bytes / 2**20, four.model.kv_bytes / 2**20], abs=0.006)
    assert four.kv_cache.stats()["slots"] == 4 and four.kv_cache.stats()["kv_bytes"] == four.model.kv_bytes


def test_drafts_verify_in_one_pass_and_change_nothing(engine):
    plain = engine.generate(PROMPTS[1], greedy(12))
    truth = plain.token_ids

    def drafter(context, n):  # proposes what the plain run chose next (then one wrong token)
        k = next((k for k in range(min(len(truth), len(context)), 0, -1) if context[-k:] == truth[:k]), 0)
        return (truth[k:k + n - 1] + [5])[:n]

    drafted = engine.generate(PROMPTS[1], greedy(12), adapt=Adapt(draft_tokens=4, drafter=drafter))
    assert drafted.token_ids == truth
    assert drafted.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
    info = drafted.decode_info
    assert info["draft_accepted"] > 0 and info["decode_calls"] < plain.decode_info["decode_calls"]


def test_a_q8_0_model_prefills_many_tokens_at_once(tiny_hf_llama, tmp_path):
    # On an AMX CPU llama.cpp's repacked q8_0 layout crashed (SIGSEGV) in batches of more than
    # one token; the engine turns it off there (llamacpp_model.py). A subprocess: a crash fails
    # this test instead of ending pytest.
    needs_llama_cpp()
    from ghost_lsp.tools.bench import peer_models as pm

    hf = pm.build_random_llama(tmp_path / "hf", tiny_hf_llama / "tokenizer.json", 256, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2)
    info = pm.write_gguf(hf, tmp_path / "m-q8.gguf", "q8_0", tokenizer_json=tiny_hf_llama / "tokenizer.json")
    assert not info["fallback_f16"]
    code = ("import sys; from ghost_lsp.engine.loading import load_local; from ghost_lsp.types import SamplingParams; "
            f"e = load_local({str(tmp_path / 'm-q8.gguf')!r}, intra_op_threads=1); "
            "c = e.generate(open(sys.argv[1]).read(), SamplingParams(max_new_tokens=4)); "
            "print(e.model_id, c.prompt_tokens, len(c.token_ids))")
    src = tmp_path / "prompt.py"
    src.write_text(LSP_SOURCE * 6)
    out = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    model_id, n_prompt, n_new = out.stdout.split()
    assert model_id.endswith(":q8_0") and int(n_prompt) > 100 and int(n_new) >= 1


def test_bad_files_are_clear_engine_errors(gguf_f32, tmp_path):
    needs_llama_cpp()
    with pytest.raises(EngineError, match="not found"):
        load_local(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model" * 10)
    with pytest.raises(EngineError, match="not a GGUF file"):
        load_local(junk)
    data = gguf_f32.read_bytes()
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(EngineError, match="llama.cpp cannot load it") as e:
        load_local(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)
    header = tmp_path / "header-only.gguf"
    header.write_bytes(data[:64])
    with pytest.raises(EngineError, match="cannot load"):
        load_local(header)


def test_an_unsupported_architecture_is_named(tmp_path):
    needs_llama_cpp()
    import gguf
    import numpy as np

    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(path), "nosucharch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(EngineError, match="unknown model architecture: 'nosucharch'"):
        load_local(path)


def test_missing_extra_is_one_line_naming_it(gguf_f32, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(EngineError) as e:
        load_local(gguf_f32)
    msg = str(e.value)
    assert 'pip install "ghost-lsp[llama]"' in msg and "\n" not in msg


def test_a_model_folder_can_name_llama_cpp(gguf_f32, tmp_path):
    needs_llama_cpp()
    import shutil

    folder = tmp_path / "my-model"
    folder.mkdir()
    shutil.copyfile(gguf_f32, folder / "weights.gguf")
    (folder / "manifest.json").write_text(json.dumps(
        {"format": "ghost-lsp-model/1", "name": "mine", "engine": "llama.cpp", "context_length": 128}))
    eng = load_local(folder, intra_op_threads=1)
    assert eng.model_id == "mine:f32" and eng.manifest.context_length == 128
    assert eng.manifest.family != "plain"  # still detected from the file
    (folder / "manifest.json").write_text(json.dumps(
        {"format": "ghost-lsp-model/1", "name": "mine", "engine": "llama.cpp", "gguf": "other.gguf"}))
    with pytest.raises(EngineError, match="other.gguf: GGUF file not found"):
        load_local(folder)


CONFIG = '[filters]\nminCumLogprob = -1e9\nbracketBalance = false\nsyntax = false\nconfidence = false\ntrivial = false\n'


def test_cli_complete_on_a_gguf(gguf_f32, tmp_path):
    needs_llama_cpp()
    src = tmp_path / "m.py"
    src.write_text("def add(a, b):\n    return \n")
    cfg = tmp_path / "ghost.toml"
    cfg.write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "ghost_lsp.cli", "complete", str(src), "--line", "2", "--col", "12",
                          "--model", str(gguf_f32), "--config", str(cfg), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["model_id"] == "tiny-hf-llama0:f32" or got["model_id"].endswith(":f32")
    assert got["text"], got
    assert got["generated_tokens"] > 0
    out = subprocess.run([sys.executable, "-m", "ghost_lsp.cli", "prompt", str(src), "--line", "2", "--col", "12",
                          "--model", str(gguf_f32), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["tokens"] > 0 and shown["ngram"] is None


LSP_SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, item):\n        "
# A random model's text: the LSP path is under test, not its quality (tests/e2e/test_server.py)
LSP_SETTINGS = {"debounceMs": 0, "maxNewTokens": 8, "filters": {
    "minCumLogprob": -1e9, "bracketBalance": False, "syntax": False, "confidence": False, "trivial": False}}


async def test_language_server_serves_a_gguf_and_keeps_it_when_a_bad_one_is_named(gguf_f32, tmp_path):
    needs_llama_cpp()
    from lsprotocol import types
    from pytest_lsp import ClientServerConfig, client_capabilities

    config = ClientServerConfig(server_command=[sys.executable, "-m", "ghost_lsp.cli", "serve", "--model", str(gguf_f32),
                                                "--db", str(tmp_path / "feedback.db")])
    lsp = await config.start()
    try:
        await lsp.initialize_session(types.InitializeParams(
            capabilities=client_capabilities("visual_studio_code"), initialization_options={"ghost": LSP_SETTINGS}))
        uri = (tmp_path / "m.py").as_uri()
        lsp.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=LSP_SOURCE)))
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=9, character=8),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))

        async def ask():
            got = await asyncio.wait_for(lsp.text_document_inline_completion_async(params), 30)
            return list(got.items) if hasattr(got, "items") else list(got or [])

        first = await ask()
        assert first and first[0].insert_text.strip(), first
        got = await asyncio.wait_for(lsp.protocol.send_request_async("ghost/health", None), 10)
        health = got if isinstance(got, dict) else {k: getattr(got, k) for k in dir(got) if not k.startswith("_")}
        assert health["model"].endswith(":f32") and health["model_dir"] == str(gguf_f32)

        broken = tmp_path / "broken.gguf"
        broken.write_bytes(gguf_f32.read_bytes()[:1000])
        lsp.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"ghost": {**LSP_SETTINGS, "model": str(broken)}}))
        await asyncio.sleep(0.5)
        again = await ask()
        assert [i.insert_text for i in again] == [i.insert_text for i in first]
        assert any("still serving" in m.message and str(broken) in m.message for m in lsp.messages), \
            [m.message for m in lsp.messages]
    finally:
        try:
            await lsp.shutdown_session()
        finally:
            await lsp.stop()


def test_kv_slots_setting_sizes_the_engine_the_server_loads(gguf_f32):
    """`kvSlots` reaches the engine through load_engine (what the language server calls), and a
    bad value is a warning that keeps the default."""
    needs_llama_cpp()
    from ghost_lsp.engine.loading import load_engine
    from ghost_lsp.settings.core import Settings, from_dict

    eng = load_engine(gguf_f32, Settings(kv_slots=2), intra_op_threads=1)
    assert eng.model.n_seq == 2 and eng.kv_cache.stats()["slots"] == 2
    s, warnings = from_dict({"kvSlots": 0})
    assert s.kv_slots == 4 and any("kv" in w.lower() for w in warnings)
