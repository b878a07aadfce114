"""`ghost-lsp model ...`: the recipe-driven pipeline that builds a model folder from source code.

    ghost-lsp model corpus    RECIPE   download sdists, build the corpus (train/valid split by package)
    ghost-lsp model tokenizer RECIPE   train the byte-level BPE
    ghost-lsp model train     RECIPE --stage teacher|student|baseline|ditto
    ghost-lsp model package   RECIPE   export the student (or [export] source) to ONNX, quantize, validate
    ghost-lsp model compare-loops LABEL=DIR ... --src DIR   loops/next-line/kept length side by side
    ghost-lsp model eval      RECIPE   the comparison table (loss, next-line accuracy, size, speed)
    ghost-lsp model build     RECIPE   all of the above in order

Work files go to runs/<name>/ (or --work); the packaged model to models/<name>/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import tomllib
from pathlib import Path

from ghost_lsp.paths import EVAL_RESERVED, REPO

log = logging.getLogger(__name__)

RESERVED = EVAL_RESERVED
# The tokenizer's files as a checkpoint folder holds them (what transformers saves and loads)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class Recipe:
    def __init__(self, path: str | Path, work: str | None = None, out: str | None = None):
        self.path = Path(path)
        try:
            self.data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SystemExit(f"ghost-lsp: cannot read recipe {self.path}: {e}")
        self.name = self.data.get("name") or self.path.stem
        self.work = Path(work) if work else REPO / "runs" / self.name
        self.out = Path(out) if out else REPO / "models" / self.name

    def section(self, key: str) -> dict:
        return dict(self.data.get(key, {}))

    @property
    def corpus_dir(self) -> Path:
        return self.work / "corpus"

    @property
    def tokenizer_path(self) -> Path:
        return self.work / "tokenizer" / "tokenizer.json"

    def stage_dir(self, stage: str) -> Path:
        return self.work / stage

    def keep_previous(self, run: Path) -> Path:
        """A copy of a run about to be continued in its own folder (`<run>-prev`): the new run
        reads its weights from the copy, then writes over the original."""
        prev = self.work / f"{Path(run).name}-prev"
        if prev.exists():
            shutil.rmtree(prev)
        shutil.copytree(run, prev)
        return prev

    def put_tokenizer(self, folder: Path) -> None:
        """Copy the tokenizer files beside a checkpoint, so transformers/optimum load it as one folder."""
        for f in self.tokenizer_path.parent.iterdir():
            shutil.copyfile(f, Path(folder) / f.name)


def recipe_packages(r: Recipe) -> list[str]:
    """The recipe's sdists: `sdists = [...]` and/or `packages_file` (one name a line, # comments)."""
    c = r.section("corpus")
    names = list(c.get("sdists", []))
    if c.get("packages_file"):
        lines = (r.path.parent / c["packages_file"]).read_text(encoding="utf-8").splitlines()
        names += [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]
    return names


def stage_corpus(r: Recipe, sdist_dir: str | None = None) -> dict:
    from ghost_lsp.tools.modelkit.corpus import build_corpus, load_reserved

    c = r.section("corpus")
    names = recipe_packages(r)
    sd = Path(sdist_dir) if sdist_dir else r.work / "sdists"
    reserved_src = None
    if names and not sdist_dir:
        from ghost_lsp.tools.modelkit.fetch import fetch_sdists

        fetch_sdists(names, sd)
        if RESERVED.exists():
            # the reserved packages' own sources, so their copies inside other sdists are found
            reserved_src = r.work / "reserved-sdists"
            fetch_sdists(sorted(load_reserved(RESERVED)), reserved_src)
    m = build_corpus(r.corpus_dir, sdist_dir=sd if names else None,
                     reserved_file=RESERVED if RESERVED.exists() else None,
                     include_stdlib=c.get("stdlib", True), valid_fraction=c.get("valid_fraction", 0.06),
                     valid_packages=c.get("valid_packages", ()), reserved_sources=reserved_src,
                     **({"max_package_chars": int(c["max_package_chars"])} if "max_package_chars" in c else {}))
    print(json.dumps(m["totals"]), file=sys.stderr)
    return m


def stage_tokenizer(r: Recipe) -> Path:
    from ghost_lsp.tools.modelkit.corpus import read_documents
    from ghost_lsp.tools.modelkit.tokenizer import save_tokenizer, train_tokenizer

    t = r.section("tokenizer")
    texts = (d.text for d in read_documents(r.corpus_dir / "train.jsonl"))
    if t.get("sample_chars"):
        # A large corpus: the BPE is trained on an evenly spread sample (every k-th file) of
        # about `sample_chars` characters; merges learned on 10 % of a billion characters are
        # the same merges, in a fraction of the time and memory.
        total = json.loads((r.corpus_dir / "corpus.json").read_text())["totals"]["train"]["chars"]
        every = max(1, round(total / int(t["sample_chars"])))
        texts = (x for i, x in enumerate(texts) if i % every == 0)
    tok = train_tokenizer(texts, vocab_size=int(t.get("vocab_size", 8192)))
    path = save_tokenizer(tok, r.tokenizer_path.parent)
    # record token counts in the corpus manifest now that they can be measured
    from ghost_lsp.tools.modelkit.train import tokenize_split

    cj = r.corpus_dir / "corpus.json"
    m = json.loads(cj.read_text())
    for split in ("train", "valid"):
        m["totals"][split]["tokens"] = int(len(tokenize_split(r.corpus_dir, split, path)))
    cj.write_text(json.dumps(m, indent=1) + "\n")
    return path


def resume_source(r: Recipe) -> Path:
    """Where `--resume` continues from: this machine's last run of the stage, else the
    checkpoint shipped in the model folder (so a fresh clone can continue the shipped model)."""
    for folder in (r.stage_dir("base"), r.out / "checkpoint"):
        if (folder / "stable.safetensors").is_file():
            return folder
    raise SystemExit(f"ghost-lsp: nothing to resume: neither {r.stage_dir('base')} nor "
                     f"{r.out / 'checkpoint'} holds stable.safetensors (train without --resume first)")


def resume_tokenizer(r: Recipe, src: Path) -> None:
    """The run continues with the tokenizer its weights were trained with: a fresh clone (no
    runs/ tokenizer) takes the checkpoint's; a different one in runs/ is refused, since training
    on another vocabulary would silently wreck the model."""
    shipped = Path(src) / "tokenizer.json"
    if not shipped.is_file():
        return
    if not r.tokenizer_path.is_file():
        r.tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (Path(src) / name).is_file():
                shutil.copyfile(Path(src) / name, r.tokenizer_path.parent / name)
        log.info("resume: using the tokenizer of %s", src)
    elif r.tokenizer_path.read_bytes() != shipped.read_bytes():
        raise SystemExit(f"ghost-lsp: {r.tokenizer_path} is not the tokenizer {shipped} was trained with; "
                         f"remove {r.tokenizer_path.parent} to continue with the checkpoint's")


def stage_train(r: Recipe, stage: str, resume: bool = False, minutes: float | None = None,
                steps: int | None = None, run_name: str | None = None, threads: int | None = None) -> dict:
    from ghost_lsp.tools.modelkit.train import TrainConfig, train

    if resume and stage != "base":
        raise SystemExit("ghost-lsp: --resume continues the `base` stage (a warmup-stable-decay run)")
    if stage == "base":
        cfg = r.section("base")
        if resume:
            src = resume_source(r)
            cfg["resume_from"] = str(src)
            # a short re-warm: the optimizer's moments start from zero again
            cfg["warmup_steps"] = min(int(cfg.get("warmup_steps", 100)), 50)
            if src == r.stage_dir("base"):
                cfg["resume_from"] = str(r.keep_previous(src))
            resume_tokenizer(r, src)
        if minutes:
            cfg["time_budget_min"] = minutes
    elif stage == "teacher":
        cfg = r.section("teacher")
        cont = cfg.pop("continue", None)
        if cont:
            # a second run from the first one's weights with a fresh (lower) schedule: how the
            # shipped teacher got more training after the first budget ran out
            first = TrainConfig.from_dict({**cfg, "name": "teacher"})
            train(first, r.corpus_dir, r.tokenizer_path, r.stage_dir("teacher-first"))
            cfg = {**cfg, **cont, "init_from": str(r.stage_dir("teacher-first"))}
    elif stage == "ditto":
        from ghost_lsp.tools.modelkit.ditto import stage_ditto

        return stage_ditto(r)
    elif stage in ("student", "baseline"):
        cfg = r.section("student")
        teacher = cfg.pop("teacher", "teacher")
        if stage == "baseline":  # the same student trained alone
            for k in ("teacher_top_k", "teacher_cache", "teacher_cache_windows"):
                cfg.pop(k, None)
        else:
            # `teacher`: a stage of this work folder (default "teacher"), else a checkpoint folder
            # (relative to the checkout, or absolute)
            stage_dir = r.stage_dir(teacher)
            cfg["teacher"] = str(stage_dir if stage_dir.is_dir() else REPO / teacher)
        if cfg.get("teacher_top_k") and not cfg.get("teacher_cache"):
            cfg["teacher_cache"] = str(r.stage_dir("teacher-topk"))
    else:
        raise SystemExit(f"ghost-lsp: unknown stage {stage!r} (base, teacher, student, baseline, ditto)")
    if steps:
        cfg["max_steps"] = steps
    if threads:
        cfg["threads"] = threads
    cfg["name"] = run_name or stage
    return train(TrainConfig.from_dict(cfg), r.corpus_dir, r.tokenizer_path, r.stage_dir(run_name or stage))


def stage_package(r: Recipe) -> dict:
    from ghost_lsp.tools.modelkit.export import export_onnx

    e = r.section("export")
    # `source`: the stage that ships (the student, or its DITTO fine-tune)
    source = e.get("source", "student")
    student = r.stage_dir(source)
    r.put_tokenizer(student)
    corpus = json.loads((r.corpus_dir / "corpus.json").read_text())
    summary = json.loads((student / "train_summary.json").read_text())
    # what this model was distilled from, if anything: the shipped stage's own run says (a DITTO
    # fine-tune's, the student's it started from)
    distilled = summary
    if source == "ditto" and (r.stage_dir("student") / "train_summary.json").is_file():
        distilled = json.loads((r.stage_dir("student") / "train_summary.json").read_text())
    info = {
        "recipe": str(r.path.relative_to(REPO)) if r.path.is_relative_to(REPO) else str(r.path),
        "corpus": {"totals": corpus["totals"],
                   "stdlib_modules": sum(1 for p in corpus["packages"] if p["source"] == "stdlib")},
        "training": {k: summary.get(k) for k in ("params", "steps", "tokens_seen", "val_loss", "train_minutes",
                                                  "cumulative_tokens", "tokens_per_s", "gflops_per_s")
                     if summary.get(k) is not None},
        "distilled_from": distilled.get("config", {}).get("teacher", ""),
    }
    sdists = {p["name"]: [p["version"], p["licence"], p["split"]] for p in corpus["packages"] if p["source"] != "stdlib"}
    if len(sdists) <= 50:
        info["corpus"]["packages"] = sdists
    else:  # hundreds of packages: the list travels as corpus.json beside the manifest
        info["corpus"]["packages_file"] = "corpus.json"
        info["corpus"]["sdists"] = len(sdists)
    if source not in ("student", "base"):
        info["fine_tuned"] = {"stage": source, "from": summary.get("init_from", ""),
                              "settings": summary.get("config", {})}
    kwargs = {}
    if "min_agreement" in e:
        kwargs["min_agreement"] = float(e["min_agreement"])
    if "graph" in e:  # "fused": the compact Llama graph (see modelkit/llama_graph.py)
        kwargs["graph"] = str(e["graph"])
    report = export_onnx(student, r.out, quantize=e.get("quantize", "int8"),
                         manifest_fields={"name": r.name, "info": info,
                                          **({"family": e["prompt_family"]} if e.get("prompt_family") else {})},
                         **kwargs)
    if "packages_file" in info["corpus"]:
        shutil.copyfile(r.corpus_dir / "corpus.json", r.out / "corpus.json")
    if (student / "train_state.json").is_file():
        ship_checkpoint(student, r.out)
    return report


def ship_checkpoint(run_dir: Path, model_dir: Path) -> None:
    """Put the training checkpoint in the model folder (`checkpoint/`): the decayed weights as a
    Hugging Face folder in bf16 (what `finetune` and `learn` start from), the pre-decay weights and
    the train state (what `model train --resume` continues). The manifest names the folder and the
    sha256 of each file, so a corrupt checkpoint is refused."""
    from safetensors.torch import load_file

    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.tools.modelkit.checkpoint import save_weights, sha256_of

    ck = model_dir / "checkpoint"
    if ck.exists():
        shutil.rmtree(ck)
    ck.mkdir(parents=True)
    state = load_file(str(run_dir / "model.safetensors"))
    save_weights({k: v for k, v in state.items() if k != "lm_head.weight"}, ck / "model.safetensors")
    for name in ("config.json", "generation_config.json", "stable.safetensors", "train_state.json",
                 "train_log.jsonl", *TOKENIZER_FILES):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, ck / name)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (ck / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    man = Manifest.load(model_dir)
    info = dict(man.info or {})
    info["source"] = {**info.get("source", {}), "hf_dir": "checkpoint"}
    info["checkpoint"] = {"dtype": "bfloat16",
                          "sha256": {f.name: sha256_of(f) for f in sorted(ck.iterdir()) if f.suffix == ".safetensors"}}
    info["runs"] = json.loads((ck / "train_state.json").read_text()).get("runs", [])
    man.info = info
    man.save(model_dir)


def add_model_parsers(subparsers) -> None:
    """Register `ghost-lsp model ...` on the CLI's subparsers."""
    p = subparsers.add_parser("model", help="build, export and evaluate models")
    sub = p.add_subparsers(dest="model_cmd", required=True)
    for name, helptext in [("corpus", "download sdists and build the corpus"),
                           ("tokenizer", "train the tokenizer"),
                           ("train", "train one stage"),
                           ("package", "export, quantize and validate the student into the model folder"),
                           ("eval", "compare teacher, students and exports in one table; writes the card"),
                           ("card", "rewrite the model card from the last eval's figures and the recipe's notes"),
                           ("build", "run every stage in order"),
                           ("plot", "validation loss vs training tokens of the recipe's runs (PNG)"),
                           ("sweep", "train the recipe's [sweep] sizes on one token budget; loss, held-out "
                                     "loss and keystroke latency of each (resumable)")]:
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("recipe", help="recipe file, e.g. models/recipes/ghost-py-base.toml")
        sp.add_argument("--work", help="work folder (default runs/<name>)")
        sp.add_argument("--out", help="model folder to write (default models/<name>)")
        if name == "train":
            sp.add_argument("--stage", required=True, choices=["base", "teacher", "student", "baseline", "ditto"])
            sp.add_argument("--resume", action="store_true",
                            help="continue the base stage from its pre-decay checkpoint (this machine's last "
                                 "run, else the model folder's checkpoint/)")
            sp.add_argument("--minutes", type=float, help="wall-clock budget of this run (overrides the recipe)")
            sp.add_argument("--steps", type=int, help="a fixed number of steps instead (overrides the recipe)")
            sp.add_argument("--threads", type=int,
                            help="torch threads (overrides the recipe; 2 on an idle two-core machine)")
            sp.add_argument("--run-name", help="the run's folder under the work folder (default: the stage's name)")
        if name == "corpus":
            sp.add_argument("--sdist-dir", help="use sdists already in this folder instead of downloading")
        if name == "eval":
            sp.add_argument("--positions", type=int, default=300, help="next-line cursor positions")
        if name == "plot":
            sp.add_argument("--run", action="append", metavar="LABEL=DIR",
                            help="a run folder to draw (repeatable; default: the recipe's stages)")
            sp.add_argument("--png", default="", help="output file (default: the model folder's loss.png)")
        if name == "sweep":
            sp.add_argument("--only", help="comma-separated size labels (default: every size)")
            sp.add_argument("--heldout", action="append", metavar="SOURCE", default=[],
                            help="held-out code for the held-out loss: folder, .py file or sdist (repeatable)")
            sp.add_argument("--heldout-package", action="append", metavar="NAME", default=[],
                            help="a PyPI package reserved for evaluation, fetched as an sdist (repeatable)")
            sp.add_argument("--no-latency", action="store_true", help="skip the export and the server replay")
            sp.add_argument("--train-only", action="store_true", help="train (or continue) the sizes, measure nothing")
        sp.set_defaults(func=run_model_command)
    try:
        from ghost_lsp.tools.modelkit.export import add_model_export_parser

        add_model_export_parser(sub)
    except ImportError:
        pass
    from ghost_lsp.tools.modelkit.ditto import add_compare_parser

    add_compare_parser(sub)


def run_model_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    r = Recipe(args.recipe, args.work, args.out)
    t0 = time.monotonic()
    cmd = args.model_cmd
    if cmd in ("corpus", "build"):
        stage_corpus(r, getattr(args, "sdist_dir", None))
    if cmd in ("tokenizer", "build"):
        stage_tokenizer(r)
    if cmd == "train":
        print(json.dumps(stage_train(r, args.stage, resume=args.resume, minutes=args.minutes,
                                      steps=args.steps, run_name=args.run_name, threads=args.threads), indent=1))
    if cmd == "build":
        for stage in (("base",) if r.data.get("base") else ("teacher", "student", "baseline")):
            stage_train(r, stage)
        # the fine-tune runs in a build only when it is what ships; else `train --stage ditto` runs it
        if r.data.get("ditto") and r.section("export").get("source") == "ditto":
            stage_train(r, "ditto")
    if cmd in ("package", "build"):
        print(json.dumps(stage_package(r), indent=1, default=str))
    if cmd in ("eval", "build"):
        from ghost_lsp.tools.modelkit.evaluate import evaluate_recipe

        evaluate_recipe(r, positions=getattr(args, "positions", 300))
    if cmd == "plot":
        from ghost_lsp.tools.modelkit.plots import plot_runs

        runs = dict(x.split("=", 1) for x in args.run) if args.run else {
            st: r.stage_dir(st) for st in ("base", "teacher", "student") if (r.stage_dir(st) / "train_log.jsonl").is_file()}
        print(plot_runs(runs, args.png or r.out / "loss.png", title=r.name))
    if cmd == "sweep":
        from ghost_lsp.tools.evals.sources import download_sdist
        from ghost_lsp.tools.modelkit.sweep import run_sweep

        heldout = list(args.heldout) + [str(download_sdist(n)) for n in args.heldout_package]
        print(json.dumps(run_sweep(r, only=args.only.split(",") if args.only else None, heldout=heldout,
                                   latency=not args.no_latency, train_only=args.train_only), indent=1))
    if cmd == "card":
        from ghost_lsp.tools.modelkit.evaluate import write_card_from_recorded

        print(f"wrote {write_card_from_recorded(r)}", file=sys.stderr)
    print(f"model {cmd}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0
