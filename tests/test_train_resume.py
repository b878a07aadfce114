"""The compact training model, the warmup-stable-decay schedule and resuming a run from its checkpoint."""

import json

import pytest

from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

pytestmark = pytest.mark.slow


def _corpus(tmp_path):
    from ghost_lsp.tools.modelkit.tokenizer import save_tokenizer, train_tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [TINY_CORPUS.replace("fibonacci", f"fib{i}") for i in range(6)]
    (corpus / "train.jsonl").write_text("".join(json.dumps({"package": "p", "path": f"{i}.py", "text": d}) + "\n"
                                                for i, d in enumerate(docs[:5])))
    (corpus / "valid.jsonl").write_text(json.dumps({"package": "v", "path": "v.py", "text": docs[5]}) + "\n")
    return corpus, save_tokenizer(train_tokenizer(docs[:5], vocab_size=400), tmp_path / "tok")


def test_compact_model_matches_hugging_face_llama():
    torch = pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.compact import CompactConfig, CompactLlama

    torch.manual_seed(0)
    m = CompactLlama(CompactConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                   intermediate_size=96, context_length=64))
    hf = m.to_hf({"eos": 0, "pad": 1}).eval()
    x = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=x).logits, m(x), atol=1e-5)
    # and back: HF weights load into a fresh compact model with the same outputs
    m2 = CompactLlama.from_hf_config(hf.config)
    m2.load_weights(hf.state_dict())
    with torch.no_grad():
        assert torch.allclose(m2(x), m(x), atol=1e-6)


def test_wsd_schedule_holds_the_peak_then_decays():
    from ghost_lsp.tools.modelkit.train import TrainConfig, lr_schedule

    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", decay_frac=0.2)
    assert lr_schedule(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_schedule(cfg, 50, 0.5) == lr_schedule(cfg, 60, 0.79) == 1e-3
    assert lr_schedule(cfg, 70, 0.9) == pytest.approx(5.5e-4)
    assert lr_schedule(cfg, 80, 1.0) == pytest.approx(1e-4)


def test_resume_continues_from_pre_decay_weights_and_refuses_a_corrupt_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.train import TrainConfig, load_resume_state, train

    corpus, tok = _corpus(tmp_path)
    common = dict(context_length=64, batch_size=4, warmup_steps=3, eval_every=10, eval_windows=4, bf16=False,
                  threads=1, lr=1e-2, min_lr=1e-3, impl="compact", schedule="wsd", decay_frac=0.3,
                  hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    first = train(TrainConfig(name="a", max_steps=20, **common), corpus, tok, tmp_path / "a", progress=False)
    state = json.loads((tmp_path / "a" / "train_state.json").read_text())
    # the stable checkpoint is written when the decay starts (step 14 of 20 at decay_frac 0.3)
    assert state["steps"] == 14 and state["tokens_seen"] == 14 * 4 * 64
    assert (tmp_path / "a" / "config.json").is_file()  # the decayed weights as a Hugging Face folder

    second = train(TrainConfig(name="b", max_steps=10, resume_from=str(tmp_path / "a"), **common),
                   corpus, tok, tmp_path / "b", progress=False)
    assert second["cumulative_tokens"] == (14 + 10) * 4 * 64
    assert [r["resumed"] for r in second["runs"]] == [False, True]
    assert second["val_loss"] < first["val_loss"] + 0.5

    blob = bytearray((tmp_path / "a" / "stable.safetensors").read_bytes())
    blob[-20] ^= 0xFF
    (tmp_path / "a" / "stable.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt"):
        load_resume_state(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        load_resume_state(tmp_path / "nothing")


def test_gpu_pack_and_run_use_the_same_trainer(tmp_path):
    """The prepared GPU run, tried on CPU at toy size: pack → run → a resumable bf16 checkpoint."""
    pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.gpu import pack, run
    from ghost_lsp.tools.modelkit.train import load_resume_state, tokenize_split

    corpus, tok = _corpus(tmp_path)
    work = tmp_path / "work"
    (work / "corpus").mkdir(parents=True)
    (work / "tokenizer").mkdir()
    for f in tok.parent.iterdir():
        (work / "tokenizer" / f.name).write_bytes(f.read_bytes())
    for split in ("train", "valid"):
        (work / "corpus" / f"{split}.jsonl").write_text((corpus / f"{split}.jsonl").read_text())
        tokenize_split(work / "corpus", split, work / "tokenizer" / "tokenizer.json")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "toy"\n[gpu]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\nnum_kv_heads = 2\n'
                      'intermediate_size = 64\ncontext_length = 32\nbatch_size = 4\nmax_steps = 12\n'
                      'warmup_steps = 2\neval_every = 6\neval_windows = 2\ncompile = false\nbf16 = false\n')
    from ghost_lsp.tools.modelkit import recipe as rmod

    r = rmod.Recipe(recipe, work=str(work))
    assert r.tokenizer_path.is_file()
    from unittest import mock

    # pack() opens the recipe with its default work folder (runs/<name>): point it at this one
    with mock.patch.object(rmod, "Recipe", lambda path: r):
        info = pack(str(recipe), str(tmp_path / "pack"))
    assert info["bytes"] < 60 * 2**20
    summary = run(str(tmp_path / "pack"), str(tmp_path / "out"), device="cpu")
    assert summary["steps"] == 12
    weights, state = load_resume_state(tmp_path / "out")
    assert state["steps"] >= 10 and all(str(v.dtype) == "torch.bfloat16" for v in weights.values())
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()


def test_loss_plot_draws_each_run(tmp_path):
    pytest.importorskip("matplotlib")
    from ghost_lsp.tools.modelkit.plots import plot_runs, read_log

    for name, losses in (("a", [5.0, 4.0, 3.5]), ("b", [4.8, 3.9])):
        d = tmp_path / name
        d.mkdir()
        rows = [{"step": i, "tokens": 1000 * (i + 1), "val_loss": v} for i, v in enumerate(losses)]
        (d / "train_log.jsonl").write_text("\n".join(map(__import__("json").dumps, rows)) + "\n{cut")
    assert len(read_log(tmp_path / "a")) == 3  # the cut last line of an interrupted run is skipped
    out = plot_runs({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_packaged_model_carries_a_resumable_checkpoint(tmp_path):
    """model package ships checkpoint/ (bf16 weights, pre-decay weights, train state, hashes in the
    manifest); finetune finds it, and `--resume` continues from it on a machine with no runs/."""
    pytest.importorskip("torch")
    import shutil

    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.tools.finetune import parent_checkpoint
    from ghost_lsp.tools.modelkit import recipe as rmod
    from ghost_lsp.tools.modelkit.checkpoint import sha256_of

    corpus, tok = _corpus(tmp_path)
    work = tmp_path / "work"
    shutil.copytree(corpus, work / "corpus")
    shutil.copytree(tok.parent, work / "tokenizer")
    (work / "corpus" / "corpus.json").write_text(json.dumps({"packages": [], "totals": {}}))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "toy"\n[base]\nimpl = "compact"\nschedule = "wsd"\ndecay_frac = 0.3\nhidden_size = 32\n'
                      'num_layers = 1\nnum_heads = 2\nnum_kv_heads = 2\nintermediate_size = 64\ncontext_length = 64\n'
                      'batch_size = 4\nmax_steps = 20\nwarmup_steps = 3\neval_every = 10\neval_windows = 4\nbf16 = false\n'
                      'threads = 1\nlr = 1e-2\nmin_lr = 1e-3\n[export]\nsource = "base"\nquantize = "int8"\n'
                      'min_agreement = 0.5\nprompt_family = "plain"\n')
    r = rmod.Recipe(recipe, work=str(work), out=str(tmp_path / "model"))
    rmod.stage_train(r, "base")
    rmod.stage_package(r)
    ck = tmp_path / "model" / "checkpoint"
    man = Manifest.load(tmp_path / "model")
    assert man.info["source"]["hf_dir"] == "checkpoint"
    assert man.info["checkpoint"]["sha256"]["stable.safetensors"] == sha256_of(ck / "stable.safetensors")
    assert parent_checkpoint(tmp_path / "model") == ck.resolve()
    assert [run["resumed"] for run in man.info["runs"]] == [False]

    shutil.rmtree(work / "base")  # a fresh clone: no runs/ run or tokenizer, only the model folder
    shutil.rmtree(work / "tokenizer")
    assert rmod.resume_source(r) == ck
    import torch

    before = torch.get_num_threads()
    try:
        summary = rmod.stage_train(r, "base", resume=True, threads=2)  # --threads over the recipe's 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    logged = [json.loads(x)["cumulative_tokens"] for x in (work / "base" / "train_log.jsonl").read_text().splitlines()]
    before_resume = [json.loads(x)["cumulative_tokens"] for x in (ck / "train_log.jsonl").read_text().splitlines()]
    assert logged[:len(before_resume)] == before_resume and len(logged) > len(before_resume)  # the history goes on
    assert r.tokenizer_path.read_bytes() == (ck / "tokenizer.json").read_bytes()
    assert [run["resumed"] for run in summary["runs"]] == [False, True]
    assert summary["cumulative_tokens"] > summary["tokens_seen"]


def test_resume_refuses_a_tokenizer_other_than_the_checkpoints(tmp_path):
    """Continuing a checkpoint on another vocabulary is refused with a line naming both files."""
    from ghost_lsp.tools.modelkit import recipe as rmod

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "tokenizer.json").write_text('{"model": "a"}')
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "toy"\n')
    r = rmod.Recipe(recipe, work=str(tmp_path / "work"))
    rmod.resume_tokenizer(r, ck)  # none in the work folder: the checkpoint's is taken
    assert r.tokenizer_path.read_text() == '{"model": "a"}'
    r.tokenizer_path.write_text('{"model": "b"}')
    with pytest.raises(SystemExit, match="not the tokenizer"):
        rmod.resume_tokenizer(r, ck)
