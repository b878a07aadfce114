"""Repetition-penalised fine-tuning (modelkit/ditto.py): the synthetic-repeat builder on a fixture
file, the DITTO loss against its formula, and a few steps on a toy model that must lower the
repeat probability the loss targets."""

from pathlib import Path

import numpy as np
import pytest

from ghost_lsp.tools.modelkit.ditto import (
    DittoConfig,
    RepeatBuilder,
    build_repeat_sample,
    code_units,
    ditto_loss,
    repeat_stats,
)

FIXTURE = (Path(__file__).parent / "data" / "ditto" / "units.py").read_text()


@pytest.fixture(scope="module")
def tok(tiny_hf_llama):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_hf_llama / "tokenizer.json"))


def test_code_units_are_whole_nonblank_lines_and_blocks():
    lines = FIXTURE.split("\n")
    units = code_units(FIXTURE, block_lines=[1, 2, 3], max_unit_chars=160)
    texts = {(n, "\n".join(lines[i:i + n])) for i, n in units}
    assert (1, "            out.append(os.path.join(dirpath, name))") in texts
    assert (2, "        self.x = x\n        self.y = y") in texts
    assert (3, "    def __init__(self, x, y):\n        self.x = x\n        self.y = y") in texts
    for i, n in units:
        block = lines[i:i + n]
        assert all(l.strip() for l in block), block          # no blank line inside a unit
        assert i + n < len(lines)                            # every unit ends with a newline
    # bracket-only or word-poor lines are not units on their own, but may sit inside a block
    singles = {t for n, t in texts if n == 1}
    assert "    )" not in singles and "    return (" in singles
    assert (2, "        sorted(out)\n    )") in texts
    # the size cap
    assert all(sum(len(l) + 1 for l in lines[i:i + n]) <= 40 for i, n in code_units(FIXTURE, [1, 2], 40))


def test_repeat_sample_marks_copies_and_twins(tok):
    prefix, unit = "def walk(root):\n    out = []\n", "    out.append(root)\n"
    s = build_repeat_sample(tok, prefix, unit, 4, 512)
    assert tok.decode(s.ids.tolist()) == prefix + unit * 4
    assert set(s.repeat.tolist()) == {-1, 0, 1, 2, 3}
    twins = np.flatnonzero(s.twin >= 0)
    assert len(twins) >= 3 * 3  # most tokens of copies 1..3 have a twin
    for j in twins:
        k = s.twin[j]
        assert s.ids[k] == s.ids[j] and s.repeat[k] == s.repeat[j] - 1
    assert (s.twin[s.repeat <= 0] == -1).all()
    # too long for the window: the context goes first, the copies stay
    n_ctx = int((s.repeat == -1).sum())
    short = build_repeat_sample(tok, prefix, unit, 4, len(s.ids) - n_ctx)
    assert (short.repeat >= 0).all() and short.repeat.max() == 3
    assert (short.ids[short.twin[short.twin >= 0]] == short.ids[short.twin >= 0]).all()
    # shorter still: trailing copies are dropped
    shorter = build_repeat_sample(tok, prefix, unit, 4, 8)
    assert len(shorter.ids) == 8 and shorter.repeat.max() < 3
    with pytest.raises(ValueError):
        build_repeat_sample(tok, prefix, "", 2, 64)


def test_spans_repeat_in_place_inside_a_line(tok):
    s = build_repeat_sample(tok, "    return list(", "len(", 5, 256)
    assert tok.decode(s.ids.tolist()) == "    return list(len(len(len(len(len("
    assert (s.twin >= 0).sum() >= 4 - 1  # the copies after the first are twinned
    cfg = DittoConfig(repeats=[3], span_rate=1.0, span_tokens=3)
    b = RepeatBuilder([FIXTURE], tok, cfg, seed=3)
    spans = [b.sample(256) for _ in range(30)]
    for sp in spans:
        assert "\n" not in sp.unit and sp.unit.strip()
        assert any(sp.unit in line for line in FIXTURE.split("\n"))
        assert tok.decode(sp.ids.tolist()).endswith(sp.unit * 3)
    assert len({sp.unit for sp in spans}) > 5


def test_builder_draws_several_counts_and_sizes_deterministically(tok):
    cfg = DittoConfig(repeats=[2, 3, 5], block_lines=[1, 2], span_rate=0.0)
    a = RepeatBuilder([FIXTURE], tok, cfg, seed=7)
    b = RepeatBuilder([FIXTURE], tok, cfg, seed=7)
    samples = [a.sample(256) for _ in range(40)]
    assert [s.ids.tolist() for s in samples] == [b.sample(256).ids.tolist() for _ in range(40)]
    assert {s.copies for s in samples} == {2, 3, 5}
    assert {s.unit.count("\n") for s in samples} == {1, 2}
    for s in samples:
        assert s.unit.strip() and s.unit in FIXTURE
        assert int(s.repeat.max()) == s.copies - 1  # every copy fits a 256-token window
    ids, rep, twin = a.batch(3, 300, pad_id=4)
    assert ids.shape == rep.shape == twin.shape == (3, 300)
    assert (ids[rep == -2] == 4).all() and (rep == -2).any()  # padding is marked, not trained on
    with pytest.raises(ValueError, match="no code units"):
        RepeatBuilder(["\n\n", ")\n"], tok, cfg)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="mix"):
        DittoConfig.from_dict({"mix": 1.5})
    with pytest.raises(ValueError, match="repeats"):
        DittoConfig.from_dict({"repeats": [1, 2]})
    with pytest.raises(ValueError, match="span_rate"):
        DittoConfig.from_dict({"span_rate": -0.1})
    with pytest.raises(ValueError, match="unknown"):
        DittoConfig.from_dict({"lambda": 0.5})


def test_loss_matches_the_formula():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(1, 6, 5)
    ids = torch.tensor([[0, 1, 2, 1, 2, 1]])
    repeat = torch.tensor([[-1, 0, 0, 1, 1, 2]])
    twin = torch.tensor([[-1, -1, -1, 1, 2, 3]])
    p = torch.softmax(logits, -1)
    # position t-1 predicts token t
    pt = [float(p[0, t - 1, ids[0, t]]) for t in range(1, 6)]
    pt = [0.0] + pt
    lam = 0.4
    # token 3's twin is token 1, whose prediction exists; token 4's is 2; token 5's is 3
    want = np.mean([-np.log(1 - abs(pt[j] - lam * pt[k])) for j, k in ((3, 1), (4, 2), (5, 3))])
    loss, st = ditto_loss(logits, ids, repeat, twin, lam)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert st["tokens"] == 3
    # no gradient flows through the previous copy's probability (it is the target)
    logits.requires_grad_(True)
    loss, _ = ditto_loss(logits, ids, repeat, twin, lam)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0  # predicts token 1, a twin only: untouched
    assert logits.grad[0, 2].abs().sum() > 0   # predicts token 3, a repeat


def test_a_few_steps_lower_the_repeat_probability_on_a_toy_model(tiny_hf_llama, tok):
    """Teach a toy model to copy (plain CE on repeats), then DITTO steps must undo it."""
    import torch
    from transformers import AutoModelForCausalLM

    from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: two threads wait on each other
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_hf_llama, dtype=torch.float32)
        cfg = DittoConfig(repeats=[3, 4], block_lines=[1, 2], prefix_chars=60, span_rate=0.0)
        train = RepeatBuilder([TINY_CORPUS], tok, cfg, seed=1)
        val = RepeatBuilder([TINY_CORPUS], tok, cfg, seed=2).batch(16, 64, pad_id=4)
        start = repeat_stats(model, val)
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(15):
            ids, rep, _tw = (torch.from_numpy(a) for a in train.batch(8, 64, pad_id=4))
            logits = model(input_ids=ids[:, :-1]).logits
            mask = rep[:, 1:] >= 1
            ce = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
            opt.zero_grad()
            ce.backward()
            opt.step()
        looping = repeat_stats(model, val)
        # the toy model now continues repeats readily, more than it predicts the first copy
        assert looping["p_repeat_all"] > 10 * start["p_repeat_all"], (start, looping)
        assert looping["repeat_over_first"] > 1.2
        for _ in range(12):
            ids, rep, tw = (torch.from_numpy(a) for a in train.batch(8, 64, pad_id=4))
            loss, _ = ditto_loss(model(input_ids=ids).logits, ids, rep, tw, lam=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = repeat_stats(model, val)
    finally:
        torch.set_num_threads(threads)
    assert after["p_repeat_all"] < 0.7 * looping["p_repeat_all"], (looping, after)
    assert after["repeat_over_first"] < looping["repeat_over_first"]


def test_recipe_stage_fine_tunes_the_student(tiny_hf_llama, tmp_path):
    """`ghost-lsp model train RECIPE --stage ditto` writes a checkpoint and its before/after figures."""
    import json
    import shutil

    from ghost_lsp.cli import main
    from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

    work = tmp_path / "work"
    (work / "corpus").mkdir(parents=True)
    for split in ("train", "valid"):
        doc = {"package": "tiny", "path": f"tiny/{split}.py", "text": TINY_CORPUS}
        (work / "corpus" / f"{split}.jsonl").write_text(json.dumps(doc) + "\n")
    (work / "tokenizer").mkdir()
    shutil.copy(tiny_hf_llama / "tokenizer.json", work / "tokenizer" / "tokenizer.json")
    shutil.copytree(tiny_hf_llama, work / "student")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "t"\n[ditto]\nmax_steps = 2\neval_every = 1\neval_windows = 2\neval_repeats = 4\n'
                      'batch_size = 2\nditto_batch_size = 2\nthreads = 1\nbf16 = false\nmix = 0.3\n')
    assert main(["model", "train", str(recipe), "--work", str(work), "--stage", "ditto"]) == 0
    out = work / "ditto"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["mix"] == 0.3
    assert summary["init_from"] == str(work / "student")
    assert {"val_loss", "repeat_over_first"} <= set(summary["before"]) & set(summary["after"])
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    # `[export] source = "ditto"` packages the fine-tune and says so in the manifest
    (work / "corpus" / "corpus.json").write_text(json.dumps({"totals": {}, "packages": []}))
    recipe.write_text(recipe.read_text().replace("[ditto]", '[export]\nsource = "ditto"\nmin_agreement = 0.0\n[ditto]'))
    assert main(["model", "package", str(recipe), "--work", str(work), "--out", str(tmp_path / "m")]) == 0
    info = json.loads((tmp_path / "m" / "manifest.json").read_text())["info"]
    assert info["source"]["hf_dir"] == str(out)
    assert info["fine_tuned"]["stage"] == "ditto" and info["fine_tuned"]["settings"]["mix"] == 0.3
    recipe.write_text('name = "t"\n[ditto]\nmix = 2.0\n')
    with pytest.raises(ValueError, match="mix"):
        main(["model", "train", str(recipe), "--work", str(work), "--stage", "ditto"])


def test_compare_loops_measures_models_side_by_side(tiny_model_dir, tmp_path, capsys):
    import json

    from ghost_lsp.cli import main

    src = Path(__file__).parent / "data" / "ditto"
    out = tmp_path / "cmp.json"
    assert main(["model", "compare-loops", f"a={tiny_model_dir}", f"b={tiny_model_dir}", "--src", str(src),
                 "--positions", "3", "--max-new-tokens", "12", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| cycle filter cuts | greedy |" in table and "| val loss (heldout, int8 ONNX) |" in table
    res = json.loads(out.read_text())
    a, b = res["models"]["a"], res["models"]["b"]
    assert res["positions"] == 3
    for mode in ("greedy", "sampled"):  # same model, same seeds: the same figures
        assert a[mode] == b[mode]
        assert 0.0 <= a[mode]["loop_raw"] <= 1.0 and a[mode]["kept_chars"] >= 0
    assert a["val_loss"]["heldout"] > 0
    assert main(["model", "compare-loops", "nolabel", "--src", str(src)]) == 2
    assert main(["model", "compare-loops", f"x={tmp_path}", "--src", str(src)]) == 2
