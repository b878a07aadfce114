"""`ghost-lsp learn`: what is trained on (never an excluded file or a secret), what is installed
(only a model that beats the one it replaces on the project's held-out files, renamed into
place), and every bad input or failure leaving the model in use as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ghost_lsp.settings.core import Settings, learned_dir, project_key
from ghost_lsp.tools.learn.project import collect, scrub
from ghost_lsp.tools.modelkit.tiny import TINY_CORPUS

AWS = "AKIAIOSFODNN7EXAMPLE"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\nq8sW9a\n-----END RSA PRIVATE KEY-----\n"
MARKERS = ("GITIGNORED_MARKER", "NESTED_GITIGNORE_MARKER", "GHOSTIGNORED_MARKER", "EXCLUDED_MARKER",
           "DOTENV_MARKER", "OUTSIDE_MARKER", "CLI_EXCLUDE_MARKER", "SECRETS_DIR_MARKER", AWS, "BEGIN RSA", "MIIEowIBAAKCAQEA7bq")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def plant(root: Path, outside: Path) -> Path:
    """A project of ordinary code with every kind of file learn must not train on."""
    for i, chunk in enumerate(TINY_CORPUS.split("\n\n\n")):
        write(root / "pkg" / f"m{i}.py", chunk + "\n")
    write(root / "pkg" / "settings.py", f'import os\n\nAWS_ACCESS_KEY_ID = "{AWS}"\nDEBUG = True\n')
    write(root / "pkg" / "keys.py", f'KEY = """\n{PEM}"""\nNAME = "keys"\n')
    write(root / ".gitignore", "build/\ngenerated_*.py\n")
    write(root / "build" / "out.py", "x = 'GITIGNORED_MARKER'\n")
    write(root / "pkg" / "generated_api.py", "x = 'GITIGNORED_MARKER'\n")
    write(root / "sub" / ".gitignore", "local.py\n")
    write(root / "sub" / "local.py", "x = 'NESTED_GITIGNORE_MARKER'\n")
    write(root / "sub" / "kept.py", "def kept():\n    return 1\n")
    write(root / ".ghostignore", "# private\nprivate/**\n")
    write(root / "private" / "notes.py", "x = 'GHOSTIGNORED_MARKER'\n")
    write(root / "pkg" / "vendor_lib.py", "x = 'EXCLUDED_MARKER'\n")  # the --config exclude glob
    write(root / "customer_data" / "rows.py", "x = 'CLI_EXCLUDE_MARKER'\n")  # an --exclude glob
    write(root / ".env.py", "x = 'DOTENV_MARKER'\n")  # a default exclude glob (.env*)
    write(root / "secrets" / "db.py", "x = 'SECRETS_DIR_MARKER'\n")  # **/secrets/**
    write(root / "pkg" / "blob.py", b"\x00\x01\x02binary" * 10)
    write(root / "pkg" / "latin.py", "x = 'caf\xe9'\n".encode("latin-1"))
    write(outside / "creds.py", "x = 'OUTSIDE_MARKER'\n")
    os.symlink(outside / "creds.py", root / "pkg" / "creds.py")  # a link out of the project
    os.symlink(root, root / "pkg" / "loop")  # a symlink loop
    os.symlink(root / "missing.py", root / "dangling.py")
    os.mkfifo(root / "pkg" / "pipe.py")  # reading it would block forever
    write(root / "README.md", "# not code\n")
    return root


@pytest.fixture(autouse=True)
def _keep_this_process_priority(monkeypatch):
    """In-process runs skip os.nice and the one-thread environment (they would last for the rest
    of the test session); the Ctrl-C test runs the real command in its own process."""
    import ghost_lsp.tools.learn.command as command

    monkeypatch.setattr(command, "_low_priority", lambda: None)


EXCLUDE = tuple(Settings().exclude) + ("**/vendor_*.py", "**/customer_data/**")


def test_exclusions_and_secrets_never_reach_the_training_data(tmp_path):
    root = plant(tmp_path / "proj", tmp_path / "outside")
    data = collect(root, EXCLUDE)
    texts = "\n".join(f.text for f in data.files)
    for marker in MARKERS:
        assert marker not in texts, marker
    paths = {f.rel for f in data.files}
    assert {"pkg/m0.py", "sub/kept.py", "pkg/settings.py"} <= paths
    assert "DEBUG = True" in texts and 'NAME = "keys"' in texts  # the rest of a file with a secret stays
    c = data.counts
    assert c["gitignored"] >= 3 and c["excluded"] >= 3 and c["symlinks"] == 3
    assert c["binary"] == 1 and c["not_utf8"] == 1 and c["not_regular_files"] == 1 and c["not_code"] >= 1
    assert c["secret_lines_dropped"] >= 2
    held = [f for f in data.files if f.heldout]
    assert held and len(held) < len(data.files) / 2
    assert [f.rel for f in collect(root, EXCLUDE).files if f.heldout] == [f.rel for f in held]  # stable


def test_scrub_drops_secret_lines_only():
    text, dropped = scrub(f"a = 1\ntoken = '{AWS}'\nb = 2\n")
    assert text == "a = 1\nb = 2\n" and dropped == 1


def test_a_non_python_project_is_learnt_from(tmp_path):
    for name in ("a.js", "b.ts", "c.go"):
        write(tmp_path / name, "function add(a, b) {\n  return a + b;\n}\n")
    write(tmp_path / "data.json", '{"a": 1}')
    data = collect(tmp_path)
    assert sorted(f.rel for f in data.files) == ["a.js", "b.ts", "c.go"]
    assert data.counts == {"not_code": 1}


def test_learned_dir_is_per_project_under_the_data_dir(tmp_path, monkeypatch):
    from ghost_lsp.lsp.learned import serving_folder

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GHOST_LSP_MODEL", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert learned_dir(a) == tmp_path / "xdg" / "ghost-lsp" / "learned" / project_key(a)
    assert learned_dir(a) != learned_dir(b) and learned_dir(a) == learned_dir(tmp_path / "b" / ".." / "a")
    assert serving_folder(Settings(), str(a))[1] is False  # none installed
    write(learned_dir(a) / "manifest.json", "{}")
    assert serving_folder(Settings(), str(a)) == (learned_dir(a), True)
    assert serving_folder(Settings(model="/m"), str(a)) == (Path("/m"), False)  # a named model wins
    assert serving_folder(Settings(learned_model=False), str(a))[1] is False
    assert serving_folder(Settings(remote_url="http://x"), str(a))[1] is False


def test_without_torch_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from ghost_lsp.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["learn", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "ghost-lsp[train]"' in err


# -- with torch: a tiny model folder that carries its checkpoint -------------------------------

@pytest.fixture(scope="module")
def base_model(tiny_model_dir, tiny_hf_llama, tmp_path_factory) -> Path:
    """The tiny model folder with its checkpoint shipped as `ghost-lsp model build` ships the
    default model's (modelkit.recipe.ship_checkpoint: bf16, tied head dropped, checkpoint/)."""
    from ghost_lsp.tools.modelkit.checkpoint import source_checkpoint
    from ghost_lsp.tools.modelkit.recipe import ship_checkpoint

    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("learn-base")
    run = work / "run"
    shutil.copytree(tiny_hf_llama, run)
    (run / "train_state.json").write_text('{"runs": []}')
    out = work / "tiny"
    shutil.copytree(tiny_model_dir, out)
    ship_checkpoint(run, out)
    assert source_checkpoint(out) == (out / "checkpoint").resolve()
    return out


@pytest.fixture
def xdg(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


@pytest.fixture
def corpus_seen(monkeypatch) -> list[str]:
    """Every text the trainer is given (train and held-out splits)."""
    from ghost_lsp.tools.modelkit import train as train_mod

    seen: list[str] = []
    real = train_mod.train

    def spy(cfg, corpus_dir, *a, **kw):
        for split in ("train", "valid"):
            seen.extend(json.loads(ln)["text"] for ln in Path(corpus_dir, f"{split}.jsonl").read_text().splitlines())
        return real(cfg, corpus_dir, *a, **kw)

    monkeypatch.setattr(train_mod, "train", spy)
    return seen


def fast(steps: int = 30, lr: str = "3e-3", agreement: str = "0.5") -> list[str]:
    return ["--steps", str(steps), "--lr", lr, "--min-agreement", agreement, "--no-progress"]


FAST = fast()


def run_learn(*args) -> tuple[int, str, str]:
    import contextlib
    import io

    from ghost_lsp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["learn", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def test_learn_installs_a_better_model_and_continues_from_it(base_model, xdg, tmp_path, corpus_seen):
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.engine.onnx import OnnxEngine
    from ghost_lsp.types import SamplingParams

    root = plant(tmp_path / "proj", tmp_path / "outside")
    config = write(tmp_path / "ghost.toml", 'exclude = ["**/vendor_*.py", ".env*", "**/secrets/**"]\n')
    rc, out, err = run_learn(root, "--model", base_model, "--config", config, "--exclude", "**/customer_data/**",
                             *FAST)
    assert rc == 0, err
    dest = learned_dir(root)
    assert out.startswith(f"ghost-lsp learn: installed {dest}")
    seen = "\n".join(corpus_seen)
    assert "def fibonacci" in seen
    for marker in MARKERS:
        assert marker not in seen, marker
    man = Manifest.load(dest)
    info = man.info["learn"]
    assert man.name == "tiny-llama-learned" and info["parent"]["name"] == "tiny-llama"
    assert info["parent"]["manifest_sha256"] == __import__("hashlib").sha256(
        (base_model / "manifest.json").read_bytes()).hexdigest()
    assert info["project"]["root_key"] == project_key(root) and info["project"]["heldout_files"] >= 1
    assert info["heldout_loss"]["after"] < info["heldout_loss"]["base"]
    assert man.info["source"]["hf_dir"] == "checkpoint" and (dest / "checkpoint" / "config.json").is_file()
    assert man.info["validation"]["fp32_ok"] and man.quantization == "int8-dynamic"
    assert OnnxEngine(dest).generate("def add(a, b):\n    ", SamplingParams(max_new_tokens=4)).token_ids
    assert not [p for p in dest.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # none left

    # a second run continues from the installed learned model, and replaces it only if better
    before = (dest / "manifest.json").read_bytes()
    rc, out, err = run_learn(root, "--model", base_model, "--config", config, "--exclude", "**/customer_data/**",
                             *fast(5, "1e-4"))
    assert rc == 0, err
    assert "starting from the learned model" in err
    runs = Manifest.load(dest).info["learn"]["runs"]
    if "installed" in out:
        assert len(runs) == 2
    else:
        assert "kept the installed learned model" in out and (dest / "manifest.json").read_bytes() == before

    # a new base model (another manifest): the learned model keeps serving until a run on the new
    # base beats it, and that run starts from the new base, not from weights of the old one
    new_base = tmp_path / "new-base"
    shutil.copytree(base_model, new_base)
    man = Manifest.load(new_base)
    man.name = "tiny-llama-v2"
    man.save(new_base)
    rc, out, err = run_learn(root, "--model", new_base, "--config", config, "--exclude", "**/customer_data/**",
                             *fast(5))
    assert rc == 0, err
    assert "learned from another base model; starting from the base" in err
    assert Manifest.load(dest).info["learn"]["parent"]["name"] == ("tiny-llama-v2" if "installed" in out
                                                                  else "tiny-llama")
    seen = "\n".join(corpus_seen)  # all three runs
    assert not [marker for marker in MARKERS if marker in seen]


def _noisy_train(monkeypatch):
    """The trainer, then its weights wrecked: an adaptation worse than the base."""
    from ghost_lsp.tools.modelkit import train as train_mod

    real = train_mod.train

    def worse(cfg, corpus_dir, tok, out_dir, **kw):
        import torch
        from safetensors.torch import load_file, save_file

        summary = real(cfg, corpus_dir, tok, out_dir, **kw)
        path = Path(out_dir) / "model.safetensors"
        state = load_file(str(path))
        torch.manual_seed(0)
        save_file({k: (v + torch.randn_like(v) * 2.0).contiguous() for k, v in state.items()}, str(path))
        return summary

    monkeypatch.setattr(train_mod, "train", worse)


def test_a_worse_adaptation_installs_nothing(base_model, xdg, tmp_path, monkeypatch):
    root = plant(tmp_path / "proj", tmp_path / "outside")
    _noisy_train(monkeypatch)
    rc, out, err = run_learn(root, "--model", base_model, *fast(2))
    assert rc == 0, err
    assert "kept the base model: the adapted model does not beat the base model" in out
    assert not learned_dir(root).exists()
    assert not [p for p in learned_dir(root).parent.iterdir() if p.is_dir()]  # no temp folder left behind


def test_failures_install_nothing_and_keep_what_serves(base_model, xdg, tmp_path, monkeypatch):
    root = plant(tmp_path / "proj", tmp_path / "outside")
    dest = learned_dir(root)
    shutil.copytree(base_model, dest)  # a learned model already serving
    snapshot = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}

    # an export that fails its validation (agreement can never reach 150 %)
    rc, out, err = run_learn(root, "--model", base_model, *fast(agreement="1.5"))
    assert rc == 1 and "failed its export check" in err and "nothing installed" in err
    # a crash inside training
    from ghost_lsp.tools.modelkit import train as train_mod

    real_train = train_mod.train

    def boom(*a, **kw):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_mod, "train", boom)
    rc, out, err = run_learn(root, "--model", base_model, *FAST)
    assert rc == 1 and "out of memory" in err and "nothing installed" in err
    monkeypatch.setattr(train_mod, "train", real_train)
    # the disk fills while the adapted model is written
    import errno

    from ghost_lsp.tools.modelkit import export as export_mod

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_mod, "export_onnx", full)
    rc, out, err = run_learn(root, "--model", base_model, *FAST)
    assert rc == 1 and "the disk is full" in err and "nothing installed" in err
    # a second learn while one runs for the same project
    from ghost_lsp.tools.learn.adapt import exclusive

    with exclusive(dest):
        rc, out, err = run_learn(root, "--model", base_model, *FAST)
    assert rc == 1 and "another `ghost-lsp learn` is writing" in err
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()} == snapshot
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")) == [dest.name]


def test_bad_input_is_one_clear_line(base_model, xdg, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = run_learn(empty, "--model", base_model, *FAST)
    assert rc == 1 and "too little source code" in err
    only_binary = tmp_path / "bin"
    write(only_binary / "a.py", b"\x00" * 100)
    write(only_binary / "b.py", b"\xff\xfe" * 100)
    rc, out, err = run_learn(only_binary, "--model", base_model, *FAST)
    assert rc == 1 and "too little source code" in err and "1 binary" in err and "1 not utf8" in err
    rc, out, err = run_learn(tmp_path / "missing", "--model", base_model, *FAST)
    assert rc == 1 and "not a folder" in err
    proj = plant(tmp_path / "proj", tmp_path / "outside")
    bare = tmp_path / "bare"  # a serving-only model folder: its checkpoint is not here
    shutil.copytree(base_model, bare, ignore=shutil.ignore_patterns("checkpoint"))
    rc, out, err = run_learn(proj, "--model", bare, *FAST)
    assert rc == 1 and "carries no PyTorch checkpoint" in err
    learned = xdg / "ghost-lsp" / "learned"
    assert not learned.exists() or not [p for p in learned.iterdir() if p.is_dir()]


def test_ctrl_c_stops_cleanly(base_model, tmp_path):
    root = plant(tmp_path / "proj", tmp_path / "outside")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.Popen([sys.executable, "-m", "ghost_lsp.cli", "learn", str(root), "--model", str(base_model),
                             "--minutes", "10", "--min-agreement", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    lines = []
    try:
        for line in proc.stderr:  # wait until training runs
            lines.append(line)
            if "to train on" in line or time.monotonic() > deadline:
                break
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = "".join(lines) + err
    assert proc.returncode == 0, err
    assert "stopping; measuring what was learnt so far" in err
    assert out.startswith("ghost-lsp learn: installed") or "ghost-lsp learn: kept the base model" in out, out
    learned = tmp_path / "xdg" / "ghost-lsp" / "learned"
    assert not [p for p in learned.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_eval_learn_measures_base_and_each_budget_on_the_held_out_share(base_model, xdg, tmp_path):
    """`ghost-lsp eval learn`: the 70 % learnt from and the 30 % typed are disjoint, every budget
    gets a row, and a kept base model is reported with the base's own figures."""
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.tools.evals.learn import general_windows, run_project

    proj = tmp_path / "heldout-proj"
    for i in range(8):
        write(proj / "pkg" / f"mod{i}.py", f"import os\n\n\ndef helper_{i}(path, name):\n"
              "    full = os.path.join(path, name)\n    if os.path.exists(full):\n        return full\n"
              "    return None\n")
    general = general_windows(base_model / Manifest.load(base_model).tokenizer, 32)
    assert general.shape[1] == 33 and len(general) > 10
    out = run_project(str(proj), base_model, [0.05], lines=2, lr=3e-3, general=general, log=lambda m: None,
                      max_steps=15, min_agreement=0.5)
    assert out["files_learned"] + out["files_typed"] == 8 and out["files_typed"] > 0
    base, *adapted = out["rows"]
    assert base["minutes"] == 0 and [r["minutes"] for r in adapted] == [0.05]
    for r in out["rows"]:
        assert r["lines"] == 2 and 0 <= r["keystrokes_saved"] < 1 and r["general_loss"] > 0
    for r in adapted:
        assert r["steps"] > 0 and set(r["heldout_loss"]) >= {"base", "after"}
        if not r["installed"]:  # the server would keep the base model: the user sees the base's figures
            assert r["keystrokes_saved"] == base["keystrokes_saved"] and r["general_loss"] == base["general_loss"]
    assert not any(Path(str(xdg)).rglob("manifest.json"))  # nothing installed for the user
