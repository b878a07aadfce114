"""`bench` sections 3 and 4: one request cold against the follow-up keystroke (KV reuse, the
forward cache), and a replayed typing session against the real `ghost-lsp serve`."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ghost_lsp.tools.bench.measure import _median, _pct

log = logging.getLogger(__name__)


# -- 3. cold vs follow-up keystroke ------------------------------------------------------------------


def _held_out(package: str, n_files: int, seed: int) -> list[tuple[str, str]]:
    from ghost_lsp.tools.evals.sources import download_sdist, read_python_files

    files = [(p, t) for name in package.split(",") if name.strip()
             for p, t in read_python_files(download_sdist(name.strip())) if len(t) > 2_000]
    random.Random(seed).shuffle(files)
    return files[:n_files]


def _targets(files, per_file: int, seed: int) -> list[tuple[str, str, int, str]]:
    """(path, text, line, indentation) of lines worth typing: code, 12-70 characters."""
    rng = random.Random(seed)
    out = []
    for path, text in files:
        lines = text.split("\n")
        ok = [i for i, ln in enumerate(lines[20:], 20)
              if 12 <= len(ln.strip()) <= 70 and not ln.strip().startswith(("#", '"', "'"))]
        for i in sorted(rng.sample(ok, min(per_file, len(ok)))):
            ln = lines[i]
            out.append((path, text, i, ln[: len(ln) - len(ln.lstrip())]))
    return out


class _Recorder:
    """The engine, remembering the last candidate (its prefill/decode split)."""

    def __init__(self, engine):
        self._engine, self.last = engine, None

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, *a, **kw):
        self.last = self._engine.generate(*a, **kw)
        return self.last


def section_cache(model_dir: Path, package: str, threads: int, positions: int, seed: int) -> dict:
    """The follow-up keystroke, warm vs the same request cold (empty caches): a character
    the suggestion did not predict (the model runs; KV reuse) and one it did (forward cache)."""
    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.types import CompletionRequest

    engine = load_local(model_dir, intra_op_threads=threads)
    rec = _Recorder(engine)
    comp = Completer(rec, Settings(debounce_ms=0, feedback=False, context_providers=()))
    kv = {"cold": [], "warm": [], "cold_prefill": [], "warm_prefill": [], "reuse": [], "same_tokens": []}
    fwd = {"cold": [], "warm": []}

    def clear(uri):
        engine.kv_cache.clear()
        comp.forward.forget(uri)

    async def one(text, line, col, uri):
        req = CompletionRequest(uri=uri, version=1, line=line, character=col, path="/bench/" + uri[-12:])
        rec.last = None
        t = time.perf_counter()
        c = await comp.complete(req, text)
        return (time.perf_counter() - t) * 1000, c, rec.last

    async def run():
        for k, (path, text, i, indent) in enumerate(_targets(_held_out(package, 12, seed), 4, seed)):
            if len(kv["cold"]) >= positions:
                break
            lines = text.split("\n")
            typed = lines[i].strip()[:4]
            head, tail = "\n".join(lines[:i] + [indent + typed]), "\n".join([""] + lines[i + 1:])
            col = len(indent) + len(typed)
            uri = f"file:///bench/{k}.py"
            clear(uri)
            _, c, _ = await one(head + tail, i, col, uri)  # the request before the keystroke
            suggestion = c.text if c is not None else ""
            other = next(ch for ch in "xq_zj" if not suggestion.startswith(ch))
            r0, t0 = engine.kv_cache.reused_tokens, engine.kv_cache.run_tokens
            ms_w, _, cand_w = await one(head + other + tail, i, col + 1, uri)
            reused, ran = engine.kv_cache.reused_tokens - r0, engine.kv_cache.run_tokens - t0
            clear(uri)
            ms_c, _, cand_c = await one(head + other + tail, i, col + 1, uri)
            if cand_w is not None and cand_c is not None:
                kv["same_tokens"].append(cand_w.token_ids == cand_c.token_ids)
                kv["warm"].append(ms_w)
                kv["cold"].append(ms_c)
                kv["warm_prefill"].append(cand_w.prefill_ms)
                kv["cold_prefill"].append(cand_c.prefill_ms)
                kv["reuse"].append(reused / max(1, reused + ran))
            if suggestion and suggestion[0] not in "\n" and suggestion[1:].strip():
                clear(uri)
                await one(head + tail, i, col, uri)
                ms_f, hit, _ = await one(head + suggestion[0] + tail, i, col + 1, uri)
                clear(uri)
                ms_fc, _, cand = await one(head + suggestion[0] + tail, i, col + 1, uri)
                if hit is not None and "forward_cache" in hit.timings_ms and cand is not None:
                    fwd["warm"].append(ms_f)
                    fwd["cold"].append(ms_fc)

    asyncio.run(run())
    comp.close()

    def ratio(a, b):
        return round(_median(a) / _median(b), 2) if a and b else None

    return {"row": "cache", "requests": len(kv["cold"]),
            "cold_ms_p50": _median(kv["cold"]), "kv_followup_ms_p50": _median(kv["warm"]),
            "cold_prefill_ms_p50": _median(kv["cold_prefill"]),
            "kv_followup_prefill_ms_p50": _median(kv["warm_prefill"]),
            "kv_token_reuse": round(float(np.mean(kv["reuse"])), 3) if kv["reuse"] else None,
            # int8 activation scales depend on the tokens in each call: warm and cold may differ
            "kv_same_tokens": round(float(np.mean(kv["same_tokens"])), 3) if kv["same_tokens"] else None,
            "kv_speedup": ratio(kv["cold"], kv["warm"]),
            "kv_prefill_speedup": ratio(kv["cold_prefill"], kv["warm_prefill"]),
            "forward_requests": len(fwd["cold"]), "forward_cold_ms_p50": _median(fwd["cold"]),
            "forward_hit_ms_p50": _median(fwd["warm"]), "forward_speedup": ratio(fwd["cold"], fwd["warm"])}


# -- 4. end-to-end LSP typing replay --------------------------------------------------------------


async def _lsp_session(model_dir: Path, package: str, keystrokes: int, gap_ms: tuple[int, int],
                       seed: int, tmp: Path, draft_tokens: int | None = None) -> dict:
    from lsprotocol import types as T
    from pygls.lsp.client import LanguageClient

    exe = Path(sys.executable).parent / "ghost-lsp"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ghost_lsp.cli"]
    log_file = tmp / "server.log"
    client = LanguageClient("ghost-bench", "1")
    await client.start_io(*cmd, "serve", "--model", str(model_dir), "--db", str(tmp / "f.db"),
                          "--log-file", str(log_file), "--log-level", "DEBUG")
    caps = T.ClientCapabilities(text_document=T.TextDocumentClientCapabilities(
        inline_completion=T.InlineCompletionClientCapabilities()))
    # Debug logs carry the cache counters this section reads back; the rest are the defaults.
    options = {"logLevel": "DEBUG"} if draft_tokens is None else {"logLevel": "DEBUG", "draftTokens": draft_tokens}
    await client.initialize_async(T.InitializeParams(capabilities=caps, process_id=os.getpid(),
                                                     initialization_options={"ghost": options}))
    client.initialized(T.InitializedParams())

    rng = random.Random(seed)
    targets = _targets(_held_out(package, 12, seed), 3, seed)
    rng.shuffle(targets)
    lat, answered_lat, outcomes = [], [], {"answered": 0, "empty": 0, "cancelled": 0, "error": 0}
    sent = 0
    pending: dict[str, tuple[asyncio.Future, float]] = {}

    predicted = [0, 0]  # answers whose first character is the next key typed, answers followed by a key

    def ask(uri, line, col, nxt="", kind=T.InlineCompletionTriggerKind.Automatic):
        msg_id = f"b{rng.getrandbits(48)}"
        fut = asyncio.wrap_future(client.protocol.send_request(
            T.TEXT_DOCUMENT_INLINE_COMPLETION,
            T.InlineCompletionParams(text_document=T.TextDocumentIdentifier(uri=uri),
                                     position=T.Position(line=line, character=col),
                                     context=T.InlineCompletionContext(trigger_kind=kind)),
            msg_id=msg_id))
        t = time.perf_counter()
        fut.add_done_callback(lambda f: done(f, t, col, nxt))
        pending[msg_id] = (fut, t)
        return msg_id

    def done(f, t, col, nxt):
        if f.cancelled():
            return
        ms = (time.perf_counter() - t) * 1000
        if f.exception() is not None:
            outcomes["cancelled" if "cancel" in str(f.exception()).lower() else "error"] += 1
            return
        res = f.result()
        if res is not None and getattr(res, "items", None):
            outcomes["answered"] += 1
            answered_lat.append(ms)
            if nxt:
                predicted[1] += 1
                predicted[0] += res.items[0].insert_text[col:col + 1] == nxt
        else:
            outcomes["empty"] += 1
        lat.append(ms)

    version = 0
    # warm-up: load the model (not counted)
    path, text, i, indent = targets[0]
    uri = (tmp / "warm.py").as_uri()
    client.text_document_did_open(T.DidOpenTextDocumentParams(
        text_document=T.TextDocumentItem(uri=uri, language_id="python", version=0, text=text)))
    mid = ask(uri, i, 0)
    await asyncio.wait_for(pending[mid][0], 120)
    lat.clear(), answered_lat.clear()
    outcomes.update(answered=0, empty=0, cancelled=0, error=0)
    pending.clear()

    t_start = time.perf_counter()
    for k, (path, text, i, indent) in enumerate(targets):
        if sent >= keystrokes:
            break
        lines = text.split("\n")
        goal = lines[i][len(indent):]
        start = "\n".join(lines[:i] + [indent] + lines[i + 1:])
        uri = (tmp / f"f{k}_{Path(path).name}").as_uri()
        version += 1
        client.text_document_did_open(T.DidOpenTextDocumentParams(
            text_document=T.TextDocumentItem(uri=uri, language_id="python", version=version, text=start)))
        col = len(indent)
        for n, ch in enumerate(goal):
            if sent >= keystrokes:
                break
            # An editor cancels the request it no longer needs before asking again.
            for mid, (fut, _) in list(pending.items()):
                if not fut.done():
                    client.protocol.notify("$/cancelRequest", T.CancelParams(id=mid))
            pending.clear()
            version += 1
            client.text_document_did_change(T.DidChangeTextDocumentParams(
                text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[T.TextDocumentContentChangePartial(
                    range=T.Range(start=T.Position(line=i, character=col), end=T.Position(line=i, character=col)),
                    text=ch)]))
            col += 1
            ask(uri, i, col, goal[n + 1: n + 2])
            sent += 1
            await asyncio.sleep(rng.uniform(*gap_ms) / 1000)
        await asyncio.sleep(0.3)  # the last request of the line gets its answer
        client.text_document_did_close(T.DidCloseTextDocumentParams(text_document=T.TextDocumentIdentifier(uri=uri)))
    wall = time.perf_counter() - t_start
    await asyncio.sleep(0.5)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()

    logtext = log_file.read_text(errors="replace") if log_file.exists() else ""
    fwd_hits = len(re.findall(r"forward-cache hit", logtext))
    kv = [(int(a), int(b)) for a, b in re.findall(r"reused (\d+) of (\d+) prompt tokens", logtext)]
    kv_used = sum(1 for a, _ in kv if a > 0)
    stages = {}
    for name in ("context_ms", "prompt_ms", "prefill_ms", "decode_ms", "filters_ms", "total_ms"):
        xs = [float(x) for x in re.findall(rf"'{name}': ([\d.]+)", logtext)]
        stages[name] = _median(xs)
    return {
        "row": "lsp", "keystrokes": sent, "gap_ms": list(gap_ms), "seconds": round(wall, 1),
        "outcomes": outcomes,
        "answered_p50_ms": _pct(answered_lat, 50), "answered_p95_ms": _pct(answered_lat, 95),
        "answered_p99_ms": _pct(answered_lat, 99),
        "answered_within_100ms": round(sum(x <= 100 for x in answered_lat) / len(answered_lat), 3)
        if answered_lat else None,
        "all_responses_p50_ms": _pct(lat, 50), "all_responses_p95_ms": _pct(lat, 95),
        # Server-side medians of the requests that ran the model and kept a suggestion.
        "server_stage_ms_p50": stages,
        "forward_cache_hits": fwd_hits, "model_runs": len(kv),
        # How often the user's next key was the suggestion's first character: the ceiling
        # on forward-cache hits (a weak model predicts few of them).
        "next_key_predicted": round(predicted[0] / predicted[1], 3) if predicted[1] else None,
        "forward_hit_rate": round(fwd_hits / max(1, fwd_hits + len(kv)), 3),
        "kv_hit_rate": round(kv_used / len(kv), 3) if kv else None,
        "kv_token_reuse": round(sum(a for a, _ in kv) / max(1, sum(b for _, b in kv)), 3) if kv else None,
    }


def section_lsp(model_dir: Path, package: str, keystrokes: int, gap_ms, seed: int, keep_log: Path,
                draft_tokens: int | None = None) -> dict:
    import shutil

    with tempfile.TemporaryDirectory(prefix="ghost-bench-lsp-") as tmp:
        try:
            return asyncio.run(_lsp_session(model_dir, package, keystrokes, gap_ms, seed, Path(tmp), draft_tokens))
        finally:
            if (Path(tmp) / "server.log").exists():  # kept next to the JSON, to look into
                shutil.copyfile(Path(tmp) / "server.log", keep_log)
