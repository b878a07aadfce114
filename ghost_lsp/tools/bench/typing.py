"""`bench` section `typing`: how much of the prompt each keystroke runs again, typing long files.

A simulated user types lines deep inside long held-out files character by character (the
document holds the code above and the line so far, as `eval keystrokes` types), and every
keystroke is a request through the Completer on the real engine. Reported: the prompt tokens
the engine ran per request (the rest came from the KV cache) as p50/p95/max, the share of
requests that ran over 100 (a prefill of most of the window: the prompt's beginning moved),
and latency. Token counts do not depend on the machine's load; the latency does.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path


def _deep_lines(files, lines_per_file: int, seed: int) -> list[tuple[str, list[str], int]]:
    """(path, lines, start) for a run of `lines_per_file` lines past the first 8,000 characters."""
    rng = random.Random(seed)
    out = []
    for path, text in files:
        lines = text.split("\n")
        offset, first = 0, None
        for i, ln in enumerate(lines):
            offset += len(ln) + 1
            if offset > 8_000:
                first = i + 1
                break
        if first is None or first + lines_per_file >= len(lines):
            continue
        out.append((path, lines, rng.randrange(first, len(lines) - lines_per_file)))
    return out


def section_typing(model_dir: Path, package: str, threads: int, files: int = 3, lines_per_file: int = 6,
                   seed: int = 0) -> dict:
    from ghost_lsp.tools.bench.keystrokes import _held_out

    long_files = [(p, t) for p, t in _held_out(package, 40, seed) if len(t) > 12_000][:files]
    return typing_run(model_dir, long_files, threads, lines_per_file, seed)


def typing_run(model_dir: Path, long_files: list[tuple[str, str]], threads: int, lines_per_file: int = 6,
               seed: int = 0) -> dict:
    """Type `lines_per_file` lines deep in each (path, text) file; the section's figures."""
    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.tools.bench.measure import _pct
    from ghost_lsp.types import CompletionRequest

    engine = load_local(model_dir, intra_op_threads=threads)
    comp = Completer(engine, Settings(debounce_ms=0, feedback=False, forward_cache=False, context_providers=()))
    ran, lat = [], []

    async def run():
        for path, lines, start in _deep_lines(long_files, lines_per_file, seed):
            uri = "file:///bench/" + path
            for i in range(start, start + lines_per_file):
                above = "\n".join(lines[:i]) + "\n"
                for k in range(len(lines[i]) + 1):
                    before = engine.kv_cache.run_tokens
                    req = CompletionRequest(uri=uri, version=1, line=i, character=k, path="/bench/" + path)
                    t = time.perf_counter()
                    await comp.complete(req, above + lines[i][:k])
                    lat.append((time.perf_counter() - t) * 1000)
                    ran.append(engine.kv_cache.run_tokens - before)

    try:
        asyncio.run(run())
    finally:
        comp.close()
    if not ran:
        return {"row": "typing", "skipped": "no held-out file over 12,000 characters"}
    return {"row": "typing", "files": len(long_files), "requests": len(ran),
            "prompt_tokens_run_p50": _pct(ran, 50), "prompt_tokens_run_p95": _pct(ran, 95),
            "prompt_tokens_run_max": max(ran), "share_over_100": round(sum(r > 100 for r in ran) / len(ran), 4),
            "prompt_tokens_run_total": sum(ran), "latency_p50_ms": _pct(lat, 50), "latency_p95_ms": _pct(lat, 95)}
