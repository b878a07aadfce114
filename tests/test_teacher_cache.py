"""Distillation from cached teacher top-k logits: the cache holds the teacher's real top-k, builds
resumably, refuses a mismatched or unfinished cache, and a student trained on it moves toward
the teacher."""

import json

import numpy as np
import pytest

from tests.test_train_resume import _corpus

pytestmark = pytest.mark.slow

CTX = 32


def _teacher(tmp_path, tok):
    """A random-weight compact Llama saved as a Hugging Face folder (a teacher needs no training
    for these checks: only that the cache holds what it computes and a student can learn it)."""
    import torch
    from tokenizers import Tokenizer

    from ghost_lsp.tools.modelkit.compact import CompactConfig, CompactLlama
    from ghost_lsp.tools.modelkit.train import special_ids

    t = Tokenizer.from_file(str(tok))
    torch.manual_seed(1)
    m = CompactLlama(CompactConfig(vocab_size=t.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=2,
                                   num_kv_heads=2, intermediate_size=64, context_length=CTX))
    with torch.no_grad():  # peaked predictions, unlike a fresh model's near-uniform ones
        m.model.embed_tokens.weight.mul_(40)
    out = tmp_path / "teacher"
    m.to_hf(special_ids(t)).save_pretrained(out)
    return out, m, special_ids(t)


def _tokens(corpus, tok):
    from ghost_lsp.tools.modelkit.data import tokenize_split

    return tokenize_split(corpus, "train", tok)


def test_losses_agree_with_the_full_vocabulary_kl_when_k_is_the_vocabulary():
    torch = pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.step import kl_full, kl_topk

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 40), torch.randn(2, 5, 40) * 3
    for T in (1.0, 2.0):
        lse = torch.logsumexp(t / T, -1)
        top = t.topk(40, dim=-1)
        assert torch.allclose(kl_topk(s, top.indices, top.values, lse, T), kl_full(s, t, T), atol=1e-4)
        # a few of 40 tokens, the rest as one class: the teacher against itself is still zero
        # (renormalising over the top k instead taught the student to put all its mass there)
        top4 = t.topk(4, dim=-1)
        assert kl_topk(t, top4.indices, top4.values, lse, T).abs() < 1e-4
        assert kl_topk(s, top4.indices, top4.values, lse, T) > 0.05
        # and the coarse KL never exceeds the full one (merging classes loses information)
        assert kl_topk(s, top4.indices, top4.values, lse, T) <= kl_full(s, t, T) + 1e-5


def test_cache_holds_the_teachers_top_k_and_resumes_where_it_stopped(tmp_path):
    torch = pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.teacher_cache import CachedTeacher, build_teacher_cache

    corpus, tok = _corpus(tmp_path)
    teacher_dir, model, sp = _teacher(tmp_path, tok)
    tokens = _tokens(corpus, tok)
    kw = dict(windows=7, context=CTX, k=4, fim_rate=0.5, seed=3, batch=2, bf16=False, progress=False)
    full = build_teacher_cache(teacher_dir, tokens, sp, tok, tmp_path / "full", **kw)
    inputs = np.load(full / "inputs.npy")
    ids, vals, lse = (np.load(full / f) for f in ("topk_ids.npy", "topk_logits.npy", "lse.npy"))
    assert inputs.shape == (7, CTX + 1) and ids.shape == vals.shape == (7, CTX, 4)
    with torch.no_grad():
        want = model(torch.from_numpy(inputs[:, :-1].astype(np.int64))).topk(4, dim=-1)
    assert np.array_equal(ids, want.indices.numpy())
    assert np.allclose(vals, want.values.numpy(), atol=1e-2)  # stored as float16
    with torch.no_grad():
        full_lse = torch.logsumexp(model(torch.from_numpy(inputs[:, :-1].astype(np.int64))) / 2.0, -1)
    assert np.allclose(lse, full_lse.numpy(), atol=1e-4)  # at the default temperature, 2
    assert json.loads((full / "meta.json").read_text())["done"] == 7

    # a build stopped after two chunks: its meta says 4 done, the rest is garbage until resumed
    part = build_teacher_cache(teacher_dir, tokens, sp, tok, tmp_path / "part", **kw)
    meta = json.loads((part / "meta.json").read_text())
    (part / "meta.json").write_text(json.dumps({**meta, "done": 4}))
    garbage = np.load(part / "topk_ids.npy", mmap_mode="r+")
    garbage[4:] = 0
    garbage.flush()
    del garbage
    with pytest.raises(ValueError, match="incomplete"):
        CachedTeacher(part, CTX)
    build_teacher_cache(teacher_dir, tokens, sp, tok, part, **kw)
    assert np.array_equal(np.load(part / "topk_ids.npy"), ids)

    with pytest.raises(ValueError, match="k differ"):
        build_teacher_cache(teacher_dir, tokens, sp, tok, full, **{**kw, "k": 8})
    with pytest.raises(ValueError, match="context"):
        CachedTeacher(full, CTX * 2)

    # batches cover every window once per pass, in a new order each pass
    reader = CachedTeacher(full, CTX, seed=0)
    seen = [tuple(row) for _ in range(7) for row in reader.batch(1)[0].tolist()]
    assert sorted(seen) == sorted(tuple(r) for r in inputs.astype(np.int64).tolist())
    x, bi, bv, bl = reader.batch(3)
    assert x.shape == (3, CTX + 1) and bi.shape == bv.shape == (3, CTX, 4) and bl.shape == (3, CTX)
    assert reader.passes == 1


def test_student_trained_on_the_cache_moves_toward_the_teacher(tmp_path):
    torch = pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.compact import CompactLlama
    from ghost_lsp.tools.modelkit.step import kl_full
    from ghost_lsp.tools.modelkit.train import TrainConfig, train

    corpus, tok = _corpus(tmp_path)
    teacher_dir, teacher, _ = _teacher(tmp_path, tok)
    common = dict(context_length=CTX, batch_size=4, warmup_steps=2, eval_every=100, eval_windows=2, bf16=False,
                  threads=1, lr=1e-2, min_lr=1e-3, impl="compact", hidden_size=32, num_layers=1, num_heads=2,
                  num_kv_heads=2, intermediate_size=64, seed=5)
    kw = dict(teacher=str(teacher_dir), teacher_top_k=8, teacher_cache_windows=6, distill_alpha=1.0,
              distill_temperature=1.0)
    after = train(TrainConfig(name="s1", max_steps=40, **common, **kw), corpus, tok, tmp_path / "s1",
                  progress=False)
    assert (tmp_path / "teacher-topk" / "meta.json").is_file()  # beside the run folders, shared by both
    assert after["teacher_cache"]["windows"] == 6 and after["teacher_cache"]["passes"] > 20

    def kl_to_teacher(m):
        x = torch.from_numpy(np.load(tmp_path / "teacher-topk" / "inputs.npy")[:, :-1].astype(np.int64))
        with torch.no_grad():
            return kl_full(m(x), teacher(x), 1.0).item()

    from transformers import AutoConfig

    trained = CompactLlama.from_folder(tmp_path / "s1")
    torch.manual_seed(common["seed"])  # the student's weights before its first step, as train() draws them
    start = CompactLlama.from_hf_config(AutoConfig.from_pretrained(tmp_path / "s1"))
    assert kl_to_teacher(trained) < 0.5 * kl_to_teacher(start)
