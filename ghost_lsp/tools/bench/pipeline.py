"""`bench` section "pipeline": what a decode step costs around the model.

The same held-out prompts run twice, each cold (no KV reuse): through the whole `Completer`
(n-gram mixing, early-stop checks, healing, sampling, filters, ranking — the server's default
settings) and through the bare engine (no adaptation, greedy, no stop checks), with the same token
budget. Each step's time inside the model's runs (`decode_info["model_ms"]`) is split from the
rest of the decode loop; the rest, per token, is the pipeline's overhead. Reported as medians over
the requests (their number and the tokens decoded), and the overhead as a percentage of the model
step: of the two medians, and the median of each request's own percentage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ghost_lsp.tools.bench.keystrokes import _held_out, _Recorder, _targets
from ghost_lsp.tools.bench.measure import _median


def _split(cand) -> tuple[float, float, int] | None:
    """(model ms per step, overhead ms per token, tokens) of one candidate's decode loop."""
    info = cand.decode_info or {}
    steps, tokens = info.get("decode_calls", 0), len(cand.token_ids)
    if not steps or not tokens or "model_ms" not in info:
        return None
    model = info["model_ms"]
    return model / steps, max(0.0, cand.decode_ms - model) / tokens, tokens


def section_pipeline(model_dir: Path, package: str, threads: int, positions: int, seed: int) -> dict:
    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.types import CompletionRequest, SamplingParams

    engine = load_local(model_dir, intra_op_threads=threads)
    rec = _Recorder(engine)
    prompts: list[str] = []
    real_generate = rec.generate

    def remember(prompt, *a, **kw):
        prompts.append(prompt)
        return real_generate(prompt, *a, **kw)

    rec.generate = remember
    comp = Completer(rec, Settings(debounce_ms=0, feedback=False, context_providers=()))
    full, bare = [], []

    async def run():
        for k, (path, text, i, indent) in enumerate(_targets(_held_out(package, 12, seed), 4, seed)):
            if len(full) >= positions:
                break
            lines = text.split("\n")
            doc = "\n".join(lines[:i] + [indent])
            uri = f"file:///bench/pipeline{k}.py"
            engine.kv_cache.clear()
            comp.forward.forget(uri)
            rec.last, prompts[:] = None, []
            await comp.complete(CompletionRequest(uri=uri, version=1, line=i, character=len(indent),
                                                  path=f"/bench/{Path(path).name}"), doc)
            cand = rec.last
            got = _split(cand) if cand is not None else None
            if got is None or not prompts:
                continue
            engine.kv_cache.clear()
            plain = engine.generate(prompts[-1], SamplingParams(max_new_tokens=got[2]))
            other = _split(plain)
            if other is None:
                continue
            full.append(got)
            bare.append(other)

    asyncio.run(run())
    comp.close()

    def row(xs):
        model = _median([x[0] for x in xs])
        over = _median([x[1] for x in xs])
        return {"model_ms_per_step": model, "overhead_ms_per_token": over,
                "overhead_pct_of_step": round(100 * over / model, 1) if model else None,
                "overhead_pct_per_request": _median([100 * x[1] / x[0] for x in xs if x[0]]),
                "tokens": sum(x[2] for x in xs)}

    return {"row": "pipeline", "requests": len(full), "completer": row(full) if full else None,
            "bare_engine": row(bare) if bare else None}
