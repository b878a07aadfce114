"""Does more context help? Next-line accuracy with (a) the current file only, (b) + open files,
(c) + project definitions, (d) both — side by side in one run — and context-collection latency.

    python -m ghost_lsp.tools.bench.context --project DIR --model DIR [--positions 200]

Accuracy: cursor positions sampled by the shared next-line metric (`evals/nextline.py`) in a
held-out multi-file project, each completed through the server's own `Completer` (context →
prompt → engine → filters → rank, single-line, greedy) on the document as it stands before
the line is typed. The "open files" are, for each position, up to 3 other Python files of the
same folder (an editor's neighbouring tabs; deterministic). The project index covers the
whole project folder.

Latency: a generated project of `--latency-files` Python modules that import each other; the
index is built first, then `gather` (all providers, 5 open documents) runs at random cursor
positions and its p50/p95 are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ghost_lsp.context import ContextRequest, FanOut, gather, make_providers
from ghost_lsp.context.index import ProjectIndex
from ghost_lsp.tools.evals import nextline

MODES = {"file": (), "open": ("open_files",), "project": ("project",), "all": ("open_files", "project")}


def project_files(index: ProjectIndex) -> list[tuple[str, str]]:
    """(absolute path, text) of the project's Python files, as the index walk sees them."""
    out = []
    for path, _rel in index._walk():  # noqa: SLF001 - same walk, same .gitignore rules
        try:
            out.append((path, Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return out


def open_docs_for(path: str, files: dict[str, str], k: int = 3) -> dict[str, str]:
    siblings = sorted(p for p in files if p != path and Path(p).parent == Path(path).parent)
    random.Random(path).shuffle(siblings)
    return {p: files[p] for p in siblings[:k]}


def accuracy(project: Path, model: str, positions: int, modes: list[str], seed: int = 0,
             max_new_tokens: int = 32) -> dict:
    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.types import CompletionRequest

    index = ProjectIndex(project)
    index.build()
    files = dict(project_files(index))
    pos = nextline.sample_positions(files.items(), positions, seed=seed)
    engine = load_local(model)
    base = Settings(debounce_ms=0, feedback=False, n=1, multiline="never", deadline_ms=600_000,
                    max_new_tokens=max_new_tokens)
    results = {}
    loop = asyncio.new_event_loop()
    try:
        for mode in modes:
            completer = Completer(engine, replace(base, context_providers=MODES[mode]), None,
                                  index=index if "project" in MODES[mode] else None)
            templates = set()

            def complete(p: nextline.Position) -> str:
                req = CompletionRequest(uri=Path(p.path).as_uri(), version=None, line=p.line,
                                        character=p.character, path=p.path, multiline=False, trigger="invoked")
                c = loop.run_until_complete(completer.complete(req, p.document, open_docs_for(p.path, files)))
                if c is None:
                    return ""
                templates.add(c.prompt_template)
                return c.text

            t0 = time.perf_counter()
            r = nextline.evaluate(pos, complete)
            results[mode] = {"exact_match": r.exact_match, "edit_similarity": r.edit_similarity,
                             "empty_rate": r.empty_rate, "seconds": time.perf_counter() - t0,
                             "templates": sorted(templates)}
            completer.close()
    finally:
        loop.close()
    return {"project": str(project), "model": engine.model_id, "positions": len(pos),
            "files": len(files), "modules_indexed": len(index), "modes": results}


# -- latency on a generated 1,000-file project ---------------------------------------------------


def generate_project(root: Path, n_files: int, seed: int = 0) -> list[Path]:
    """`n_files` modules in 10 packages; each imports names from 3 others and uses them."""
    rng = random.Random(seed)
    per_pkg = max(1, n_files // 10)
    paths = []
    for i in range(n_files):
        pkg, mod = i // per_pkg, i % per_pkg
        d = root / "proj" / f"pkg{pkg}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").touch()
        paths.append(d / f"mod{mod}.py")
    for i, path in enumerate(paths):
        deps = rng.sample(range(n_files), 3)
        lines = [f'"""Module {i}."""', "import os"]
        for j in deps:
            lines.append(f"from proj.pkg{j // per_pkg}.mod{j % per_pkg} import Thing{j}, helper_{j}")
        lines.append("")
        for k in range(4):
            lines += [f"class Thing{i}{'' if k == 0 else f'_{k}'}:", '    """A thing."""', "",
                      "    def __init__(self, name: str, size: int = 0):",
                      "        self.name = name", "        self.size = size", "",
                      "    def grow(self, by: int) -> int:", "        self.size += by",
                      "        return self.size", ""]
        lines += [f"def helper_{i}(value, scale=2):"]
        for j in deps:
            lines += [f"    t{j} = Thing{j}(str(value))", f"    t{j}.grow(helper_{j}(value) * scale)"]
        lines += ["    total = sum([value, scale])", "    return total", ""]
        path.write_text("\n".join(lines) * 3)  # ~150 lines each
    return paths


def latency(n_files: int, requests: int, seed: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_project(Path(tmp), n_files, seed)
        index = ProjectIndex(Path(tmp))
        t0 = time.perf_counter()
        index.build()
        build_s = time.perf_counter() - t0
        texts = {str(p): p.read_text() for p in paths}
        rng = random.Random(seed)
        fanout = FanOut(make_providers(("open_files", "project")), slice_ms=50)  # measure, do not cut
        times, snippets = [], []
        for _ in range(requests):
            path = str(rng.choice(paths))
            text = texts[path]
            line = rng.randrange(len(text.split("\n")))
            docs = {p: texts[p] for p in rng.sample(list(texts), 5) if p != path}
            req = ContextRequest(text=text, line=line, character=0, path=path, language="python",
                                 open_docs=docs, index=index)
            t1 = time.perf_counter()
            ctx = gather(req, fanout)
            times.append((time.perf_counter() - t1) * 1000)
            snippets.append(len(ctx.snippets))
    times.sort()
    q = statistics.quantiles(times, n=100, method="inclusive")
    return {"files": n_files, "modules_indexed": len(index), "index_build_s": round(build_s, 2),
            "requests": requests, "p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2),
            "max_ms": round(times[-1], 2), "mean_snippets": round(sum(snippets) / len(snippets), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ghost_lsp.tools.bench.context", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", help="held-out multi-file Python project (not in the training corpus)")
    ap.add_argument("--model", help="model folder")
    ap.add_argument("--positions", type=int, default=200)
    ap.add_argument("--modes", default="file,open,project,all", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-files", type=int, default=1000, help="0 to skip the latency part")
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args(argv)
    out: dict = {}
    if args.project:
        if not args.model:
            ap.error("--project needs --model")
        modes = [m for m in args.modes.split(",") if m]
        bad = [m for m in modes if m not in MODES]
        if bad:
            ap.error(f"unknown mode(s): {', '.join(bad)}")
        acc = accuracy(Path(args.project), args.model, args.positions, modes, args.seed)
        out["accuracy"] = acc
        print(f"next-line accuracy on {acc['project']} ({acc['files']} files, {acc['positions']} positions, "
              f"model {acc['model']})")
        print(f"{'context':<10} {'exact':>7} {'edit sim':>9} {'empty':>7} {'seconds':>8}  template")
        for mode, r in acc["modes"].items():
            print(f"{mode:<10} {r['exact_match']:>7.3f} {r['edit_similarity']:>9.3f} {r['empty_rate']:>7.3f} "
                  f"{r['seconds']:>8.1f}  {','.join(r['templates'])}")
    if args.latency_files:
        lat = latency(args.latency_files, args.latency_requests, args.seed)
        out["latency"] = lat
        print(f"context collection on a generated {lat['files']}-file project ({lat['modules_indexed']} modules "
              f"indexed in {lat['index_build_s']} s): p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
              f"max {lat['max_ms']} ms over {lat['requests']} requests ({lat['mean_snippets']} snippets each)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
