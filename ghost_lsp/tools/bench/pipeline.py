"""`bench` section "pipeline": what a decode step costs around the model.

The same held-out prompts run twice, each cold (no KV reuse): through the whole `Completer`
(n-gram mixing, early-stop checks, healing, sampling, filters, ranking — the server's default
settings but prompt-lookup drafts, so that each step is one model call) and through the bare
engine (no adaptation, greedy, no stop checks), with the same token budget. Each step's time
inside the model's runs (`decode_info["model_ms"]`) is split from the rest of the decode loop;
the rest, per token, is the pipeline's overhead. Reported as medians over the requests (their
number and the tokens decoded), and the overhead as a percentage of the model step: of the two
medians, and the median of each request's own percentage. `--draft-tokens N` also runs each
request with drafts, side by side.
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


def section_pipeline(model_dir: Path, package: str, threads: int, positions: int, seed: int,
                     draft_tokens: int = 0) -> dict:
    """`draft_tokens` > 0: each request also runs through a Completer with prompt-lookup drafts
    of that length, the two in alternating order; reported under "drafts"."""
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
    # drafts off: each decode step is one model call, so "overhead per model step" means one thing
    comp = Completer(rec, Settings(debounce_ms=0, feedback=False, context_providers=(), draft_tokens=0))
    drafted = Completer(rec, Settings(debounce_ms=0, feedback=False, context_providers=(),
                                      draft_tokens=draft_tokens)) if draft_tokens > 0 else None
    full, bare, pairs = [], [], []

    async def run():
        for k, (path, text, i, indent) in enumerate(_targets(_held_out(package, 12, seed), 4, seed)):
            if len(full) >= positions:
                break
            lines = text.split("\n")
            doc = "\n".join(lines[:i] + [indent])
            uri = f"file:///bench/pipeline{k}.py"
            req = CompletionRequest(uri=uri, version=1, line=i, character=len(indent), path=f"/bench/{Path(path).name}")

            async def through(c):
                engine.kv_cache.clear()
                c.forward.forget(uri)
                rec.last, prompts[:] = None, []
                await c.complete(req, doc)
                return rec.last

            with_drafts = await through(drafted) if drafted is not None and k % 2 else None
            cand = await through(comp)
            if drafted is not None and not k % 2:
                with_drafts = await through(drafted)
            if cand is not None and with_drafts is not None and cand.token_ids and with_drafts.token_ids:
                pairs.append((cand, with_drafts))
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
    if drafted is not None:
        drafted.close()

    def row(xs):
        model = _median([x[0] for x in xs])
        over = _median([x[1] for x in xs])
        return {"model_ms_per_step": model, "overhead_ms_per_token": over,
                "overhead_pct_of_step": round(100 * over / model, 1) if model else None,
                "overhead_pct_per_request": _median([100 * x[1] / x[0] for x in xs if x[0]]),
                "tokens": sum(x[2] for x in xs)}

    out = {"row": "pipeline", "requests": len(full), "completer": row(full) if full else None,
           "bare_engine": row(bare) if bare else None}
    if pairs:
        out["drafts"] = _drafts(pairs, draft_tokens)
    return out


def _drafts(pairs, draft_tokens: int) -> dict:
    """Drafts off vs on, the same requests: decode ms per token (the whole decode loop, model
    included), model calls per token, outputs identical, drafted tokens accepted."""
    def per_token(c):
        return c.decode_ms / len(c.token_ids)

    def calls(c):
        return (c.decode_info or {}).get("decode_calls", 0) / len(c.token_ids)

    off, on = _median([per_token(a) for a, _ in pairs]), _median([per_token(b) for _, b in pairs])
    drafted = sum((b.decode_info or {}).get("draft_tokens", 0) for _, b in pairs)
    accepted = sum((b.decode_info or {}).get("draft_accepted", 0) for _, b in pairs)
    return {"draft_tokens": draft_tokens, "requests": len(pairs),
            "decode_ms_per_token_off": off, "decode_ms_per_token_on": on,
            "speedup": round(off / on, 3) if on else None,
            "speedup_per_request": _median([per_token(a) / per_token(b) for a, b in pairs]),
            "model_calls_per_token_off": _median([calls(a) for a, _ in pairs]),
            "model_calls_per_token_on": _median([calls(b) for _, b in pairs]),
            "identical": round(sum(a.token_ids == b.token_ids for a, b in pairs) / len(pairs), 3),
            "acceptance": round(accepted / drafted, 3) if drafted else None}
