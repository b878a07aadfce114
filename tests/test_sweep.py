"""`ghost-lsp model sweep`: sizes trained on one token budget, a stopped size continued, each measured."""

import json
import shutil

import pytest

from tests.test_train_resume import _corpus

pytestmark = pytest.mark.slow

RECIPE = """name = "toy"
[base]
impl = "compact"
schedule = "wsd"
decay_frac = 0.3
context_length = 64
batch_size = 4
warmup_steps = 3
eval_every = 4
eval_windows = 4
bf16 = false
threads = 1
lr = 1e-2
min_lr = 1e-3
hidden_size = 999
time_budget_min = 75
[export]
quantize = "int8"
graph = "fused"
[sweep]
tokens = 3000
checkpoint_min = 0
[[sweep.sizes]]
label = "s"
hidden_size = 32
num_layers = 1
num_heads = 2
num_kv_heads = 2
intermediate_size = 64
[[sweep.sizes]]
label = "m"
hidden_size = 48
num_layers = 2
num_heads = 2
num_kv_heads = 2
intermediate_size = 96
"""


def _recipe(tmp_path, text=RECIPE):
    from ghost_lsp.tools.modelkit import recipe as rmod

    corpus, tok = _corpus(tmp_path)
    work = tmp_path / "work"
    shutil.copytree(corpus, work / "corpus")
    shutil.copytree(tok.parent, work / "tokenizer")
    path = tmp_path / "r.toml"
    path.write_text(text)
    return rmod.Recipe(path, work=str(work))


def test_sizes_take_the_base_settings_their_shape_and_one_token_budget(tmp_path):
    from ghost_lsp.tools.modelkit.sweep import sweep_sizes

    r = _recipe(tmp_path)
    s, m = sweep_sizes(r)
    assert (s["hidden_size"], m["hidden_size"], m["num_layers"]) == (32, 48, 2)  # the size's shape wins
    assert s["lr"] == 1e-2 and s["checkpoint_min"] == 0  # base settings, the sweep's on top
    assert s["max_steps"] == m["max_steps"] == 12  # ceil(3000 / (4 x 64))
    assert "time_budget_min" not in s and s["name"] == "sweep-s"
    bad = RECIPE.replace('label = "m"\n', 'label = "m"\nbatch = 3\n')
    with pytest.raises(SystemExit, match="may set"):
        (tmp_path / "bad").mkdir()
        sweep_sizes(_recipe(tmp_path / "bad", bad))


def test_sweep_trains_each_size_measures_held_out_loss_and_continues_a_stopped_run(tmp_path):
    pytest.importorskip("torch")
    from ghost_lsp.tools.modelkit.sweep import run_sweep, sweep_sizes
    from ghost_lsp.tools.modelkit.train import TrainConfig, train

    r = _recipe(tmp_path)
    # "m" is stopped part-way (a killed process: it saved its weights each step, then died)
    cfg_m = sweep_sizes(r)[1]
    calls = {"n": 0}

    def die():
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict(cfg_m), r.corpus_dir, r.tokenizer_path, r.stage_dir("sweep-m"),
              progress=False, stop=die)
    stopped_at = json.loads((r.stage_dir("sweep-m") / "train_state.json").read_text())["steps"]
    assert 0 < stopped_at < 12

    held = tmp_path / "held"
    held.mkdir()
    (held / "mod.py").write_text("def area(w, h):\n    return w * h\n\n\nclass Box:\n    size = 3\n" * 20)
    report = run_sweep(r, heldout=[str(held)], heldout_windows_n=4, latency=False)
    rows = {x["size"]: x for x in report["sizes"]}
    assert rows["s"]["steps"] == 12 and rows["s"]["tokens"] == 12 * 4 * 64
    # the stopped size went on with the steps it had left, not from zero; its row counts both parts
    summary_m = json.loads((r.stage_dir("sweep-m") / "train_summary.json").read_text())
    assert summary_m["steps"] == 12 - stopped_at and [x["resumed"] for x in summary_m["runs"]] == [False, True]
    assert rows["m"]["steps"] == 12 and rows["m"]["tokens"] == 12 * 4 * 64 and rows["m"]["parts"] == 2
    assert rows["m"]["params"] > rows["s"]["params"]
    assert all(0 < x["heldout_loss"] < 20 and x["heldout_windows"] == 4 for x in rows.values())
    assert (r.work / "sweep" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((r.work / "sweep" / "sweep.json").read_text())["tokens_per_size"] == 3000

    # a second call trains nothing and measures nothing again
    before = (r.stage_dir("sweep-s") / "train_summary.json").stat().st_mtime_ns
    again = run_sweep(r, heldout=[str(held)], heldout_windows_n=4, latency=False)
    assert (r.stage_dir("sweep-s") / "train_summary.json").stat().st_mtime_ns == before
    assert again["sizes"] == report["sizes"]
    with pytest.raises(SystemExit, match="unknown sweep size"):
        run_sweep(r, only=["xl"], latency=False)


def test_latency_exports_the_size_and_reads_the_server_replay(tmp_path, monkeypatch):
    """The export is real (fused int8 graph); the 30-second server replay is stood in for."""
    pytest.importorskip("torch")
    import subprocess

    from ghost_lsp.tools.modelkit import sweep

    r = _recipe(tmp_path)
    cfg = sweep.sweep_sizes(r)[0]
    sweep.train_size(r, cfg)
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        out = cmd[cmd.index("--out") + 1]
        row = {"row": "lsp", "all_responses_p50_ms": 30.0, "all_responses_p95_ms": 90.0, "keystrokes": 300}
        with open(out, "w") as f:
            json.dump({"results": [row]}, f)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    m = sweep.measure_size(r, cfg, None, latency=True)
    model = r.stage_dir("sweep-s") / "onnx"
    assert (model / "model.onnx").is_file() and json.loads((model / "manifest.json").read_text())["family"] == "plain"
    assert seen["cmd"][seen["cmd"].index("--model") + 1] == str(model)
    assert m["lsp"]["all_responses_p95_ms"] == 90.0 and 0 <= m["int8_agreement"] <= 1
    assert m["lsp_command"].startswith("ghost-lsp bench --only lsp --model ")
