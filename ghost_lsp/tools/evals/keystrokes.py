"""Keystrokes saved: a simulated user types held-out lines into the real `ghost-lsp serve`.

The measure a user feels. For each sampled line (code inside function bodies of held-out files),
the editor holds only the code above it, written top to bottom, and the line's indentation; the
user then types the line key by key. After every key the server is asked for ghost text
(`textDocument/inlineCompletion`, as VS Code and Neovim ask). When the first line of the ghost
text is a non-empty prefix of what the user was about to type, the user presses Tab (one key)
and the text is inserted; otherwise they type the next character. Reported:

- keystrokes saved = 1 − keys pressed / characters of the lines;
- shown = requests that came back with ghost text / requests;
- right = shown ghost text the user took with Tab / shown ghost text;
- latency of every request, median and 95th percentile;
- next line through the server: at each line's start (nothing typed yet, the first request), the
  exact match and edit similarity of the ghost text's first line against the line (empty ghost
  text scores 0 similarity), i.e. the next-line task with the workspace cache as the user has it.

Honesty: the files under test are split off from the project (`test_share`, by a hash of the
path); the server's workspace is a copy of the *other* files only, so its index and n-gram cache
never hold the file under test, and nothing after the cursor is ever in the document.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ghost_lsp.tools.evals.nextline import Position, edit_similarity, sample_positions
from ghost_lsp.tools.evals.sources import read_python_files


@dataclass
class KeystrokeResult:
    lines: int = 0
    chars: int = 0
    keys: int = 0
    requests: int = 0
    shown: int = 0
    taken: int = 0
    chars_from_tab: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    line_exact: int = 0  # first ghost text of a line == the whole line
    line_similarity: float = 0.0  # summed edit similarity of those first ghost texts

    def metrics(self) -> dict:
        lat = sorted(self.latencies_ms)

        def pct(q):
            return round(lat[min(len(lat) - 1, int(q / 100 * len(lat)))], 1) if lat else None

        return {
            "lines": self.lines, "chars": self.chars, "keys": self.keys, "requests": self.requests, "shown": self.shown,
            "keystrokes_saved": round(1 - self.keys / self.chars, 4) if self.chars else None,
            "shown_rate": round(self.shown / self.requests, 4) if self.requests else None,
            "right_rate": round(self.taken / self.shown, 4) if self.shown else None,
            "tabs": self.taken, "chars_from_tab": self.chars_from_tab,
            "latency_p50_ms": round(statistics.median(lat), 1) if lat else None, "latency_p95_ms": pct(95),
            "line_exact": self.line_exact,
            "next_line_exact_match": round(self.line_exact / self.lines, 4) if self.lines else None,
            "next_line_edit_similarity": round(self.line_similarity / self.lines, 4) if self.lines else None,
            "errors": self.errors,
        }


def split_files(files: list[tuple[str, str]], test_share: float) -> tuple[list, list]:
    """(files under test, workspace files): a stable split by a hash of each path."""
    under, rest = [], []
    for path, text in files:
        h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") / 2**32
        (under if h < test_share else rest).append((path, text))
    return under, rest


def ghost_of(item_text: str, line_text: str, col: int) -> str:
    """The ghost text an editor shows for an item that replaces line start..cursor."""
    return item_text[col:] if item_text.startswith(line_text[:col]) else ""


async def _session(model: str | None, positions: list[Position], workspace: Path, under_root: Path,
                   config: str | None, gap_ms: float, progress) -> KeystrokeResult:
    from lsprotocol import types as T
    from pygls.lsp.client import LanguageClient

    exe = Path(sys.executable).parent / "ghost-lsp"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ghost_lsp.cli"]
    args = ["serve", "--db", str(workspace.parent / "feedback.db"), "--log-file", str(workspace.parent / "server.log")]
    if model:
        args += ["--model", str(model)]
    if config:
        args += ["--config", str(config)]
    client = LanguageClient("ghost-keystrokes", "1")
    await client.start_io(*cmd, *args)
    caps = T.ClientCapabilities(text_document=T.TextDocumentClientCapabilities(
        inline_completion=T.InlineCompletionClientCapabilities()))
    await client.initialize_async(T.InitializeParams(capabilities=caps, process_id=os.getpid(),
                                                     root_uri=workspace.as_uri()))
    client.initialized(T.InitializedParams())
    res = KeystrokeResult()
    version = 0

    async def ask(uri: str, line: int, col: int, line_text: str, timed: bool = True) -> str:
        t = time.perf_counter()
        try:
            out = await asyncio.wait_for(client.text_document_inline_completion_async(T.InlineCompletionParams(
                text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=line, character=col),
                context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic))), 30)
        except Exception:
            res.errors += 1
            return ""
        if timed:
            res.latencies_ms.append((time.perf_counter() - t) * 1000)
        items = getattr(out, "items", None) or (out if isinstance(out, list) else [])
        return ghost_of(items[0].insert_text, line_text, col) if items else ""

    try:
        # warm-up: the model loads on the first request (not counted)
        warm = (under_root / "warm.py").as_uri()
        client.text_document_did_open(T.DidOpenTextDocumentParams(
            text_document=T.TextDocumentItem(uri=warm, language_id="python", version=0, text="import os\n")))
        await ask(warm, 1, 0, "", timed=False)
        client.text_document_did_close(T.DidCloseTextDocumentParams(text_document=T.TextDocumentIdentifier(uri=warm)))
        for k, p in enumerate(positions):
            lines = p.text.split("\n")
            indent = lines[p.line][:p.character]
            goal = p.target
            above = "\n".join(lines[:p.line] + [indent])
            uri = (under_root / p.path).as_uri()
            version += 1
            client.text_document_did_open(T.DidOpenTextDocumentParams(
                text_document=T.TextDocumentItem(uri=uri, language_id="python", version=version, text=above)))
            typed = ""
            last_key = time.perf_counter()
            while len(typed) < len(goal):
                col = p.character + len(typed)
                ghost = (await ask(uri, p.line, col, indent + typed)).split("\n", 1)[0]
                res.requests += 1
                if not typed:  # the line's first request: the next-line task
                    res.line_exact += ghost.rstrip() == goal.rstrip()
                    res.line_similarity += edit_similarity(ghost.rstrip(), goal.rstrip()) if ghost.strip() else 0.0
                if ghost.strip():
                    res.shown += 1
                rest = goal[len(typed):]
                if ghost and rest.startswith(ghost) and ghost.strip():
                    insert, res.taken, res.chars_from_tab = ghost, res.taken + 1, res.chars_from_tab + len(ghost)
                else:
                    insert = rest[0]
                res.keys += 1
                if gap_ms:  # the user's pace: the next key comes gap_ms after the previous one
                    await asyncio.sleep(max(0.0, gap_ms / 1000 - (time.perf_counter() - last_key)))
                last_key = time.perf_counter()
                version += 1
                client.text_document_did_change(T.DidChangeTextDocumentParams(
                    text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    content_changes=[T.TextDocumentContentChangePartial(
                        range=T.Range(start=T.Position(line=p.line, character=col),
                                      end=T.Position(line=p.line, character=col)), text=insert)]))
                typed += insert
            res.lines += 1
            res.chars += len(goal)
            client.text_document_did_close(T.DidCloseTextDocumentParams(text_document=T.TextDocumentIdentifier(uri=uri)))
            if progress:
                progress(k + 1, len(positions))
    finally:
        try:
            await asyncio.wait_for(client.shutdown_async(None), 10)
            client.exit(None)
        except Exception:
            pass
        await client.stop()
    return res


def run_keystrokes(source: str | Path, *, model: str | None = None, lines: int = 150, test_share: float = 0.3,
                   seed: int = 0, config: str | None = None, gap_ms: float = 0.0, progress=None) -> dict:
    """Simulate a user typing `lines` held-out lines of `source` (a folder or sdist); see the module doc."""
    files = read_python_files(source)
    under, rest = split_files(files, test_share)
    if not under:
        raise ValueError(f"{source}: no file fell in the test share ({len(files)} files)")
    positions = [p for p in sample_positions(under, lines, seed) if p.target]
    with tempfile.TemporaryDirectory(prefix="ghost-keys-") as tmp:
        tmp = Path(tmp)
        workspace = tmp / "workspace"
        for path, text in rest:
            f = workspace / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text, encoding="utf-8")
        workspace.mkdir(exist_ok=True)
        under_root = tmp / "under-test"  # outside the workspace: never indexed
        result = asyncio.run(_session(model, positions, workspace, under_root, config, gap_ms, progress))
    m = result.metrics()
    m["_latencies"] = result.latencies_ms  # for combining sources; dropped before printing
    m["_line_similarity"] = result.line_similarity
    m.update(source=str(source), files_under_test=len(under), workspace_files=len(rest), test_share=test_share,
             seed=seed, gap_ms=gap_ms)
    return m


def combine(results: list[dict]) -> dict:
    """Several sources' results as one: counts added, rates and latencies recomputed."""
    total = KeystrokeResult()
    for r in results:
        for k in ("lines", "chars", "keys", "requests", "errors", "chars_from_tab", "shown", "line_exact"):
            setattr(total, k, getattr(total, k) + r[k])
        total.taken += r["tabs"]
        total.latencies_ms += r.pop("_latencies", [])
        total.line_similarity += r.pop("_line_similarity", 0.0)
    out = total.metrics()
    out["sources"] = [r["source"] for r in results]
    return out


def add_arguments(p) -> None:
    p.add_argument("--source", action="append", metavar="PATH",
                   help="held-out code: a folder or sdist archive (repeatable)")
    p.add_argument("--package", action="append", metavar="NAME",
                   help="a PyPI package reserved for evaluation, fetched as an sdist (repeatable)")
    p.add_argument("--model", metavar="DIR", help="model folder (default: as `serve`)")
    p.add_argument("--config", metavar="FILE", help="settings file, TOML or JSON (as `serve`)")
    p.add_argument("--lines", type=int, default=150, help="lines typed per source")
    p.add_argument("--test-share", type=float, default=0.3,
                   help="share of each project's files typed; the rest is the server's workspace")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="the user's pace: ms from one key to the next (0: as soon as the answer is in)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                   help="calibration curve: one run per combination of these filter thresholds, e.g. "
                        "min_token_logprob=-9,-2,-1 min_mean_logprob=-3,-1")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _grid(specs: list[str]) -> list[dict]:
    """["min_token_logprob=-9,-2", "min_mean_logprob=-3,-1"] -> every combination as a filters dict."""
    import itertools

    axes = []
    for spec in specs:
        key, _, values = spec.partition("=")
        if not key or not values:
            raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2,...")
        axes.append([(key.strip(), float(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def run_sources(args, sources: list[str], config: str | None) -> dict:
    results = []
    for src in sources:
        def progress(done, total, src=src):
            if done % 25 == 0 or done == total:
                print(f"keystrokes {Path(src).name}: {done}/{total} lines", file=sys.stderr)

        results.append(run_keystrokes(src, model=args.model, lines=args.lines, test_share=args.test_share,
                                      seed=args.seed, config=config, gap_ms=args.gap_ms, progress=progress))
    out = combine(results) if len(results) > 1 else results[0]
    out.pop("_latencies", None)
    out.pop("_line_similarity", None)
    if len(results) > 1:
        out["per_source"] = {Path(r["source"]).name: {k: r[k] for k in ("keystrokes_saved", "shown_rate", "right_rate",
                                                                         "next_line_exact_match", "lines")} for r in results}
    return out


def main_args(args) -> int:
    import json

    from ghost_lsp.settings.core import load_file
    from ghost_lsp.tools.evals.sources import download_sdist

    sources = list(args.source or []) + [str(download_sdist(n)) for n in (args.package or [])]
    if not sources:
        print("ghost-lsp eval keystrokes: give --source PATH or --package NAME", file=sys.stderr)
        return 2
    try:
        if not args.grid:
            out = run_sources(args, sources, args.config)
        else:
            # the calibration curve: one run per combination of filter thresholds, over the
            # --config file's settings (the grid's keys go in its `filters` section)
            base, _ = load_file(args.config) if args.config else ({}, [])
            rows = []
            with tempfile.TemporaryDirectory(prefix="ghost-grid-") as tmp:
                for n, point in enumerate(_grid(args.grid)):
                    cfg = Path(tmp) / f"grid{n}.json"
                    cfg.write_text(json.dumps({**base, "filters": {**base.get("filters", {}), **point}}))
                    m = run_sources(args, sources, str(cfg))
                    rows.append({**point, **{k: m[k] for k in ("keystrokes_saved", "shown_rate", "right_rate",
                                                               "latency_p50_ms", "latency_p95_ms", "requests")}})
                    print(json.dumps(rows[-1]), file=sys.stderr)
            out = {"grid": rows, "sources": sources, "lines": args.lines}
    except (OSError, ValueError) as e:
        print(f"ghost-lsp eval keystrokes: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
    elif "grid" in out:
        keys = list(out["grid"][0])
        print(" | ".join(keys))
        for row in out["grid"]:
            print(" | ".join(str(row[k]) for k in keys))
    else:
        for k, v in out.items():
            print(f"{k:>18}: {v}")
    return 0
