"""What a remote server's options cost a request: the remote engine's latency for the same
prompt with and without per-token log-probs (and any other SamplingParams switch), medians of
alternating runs against one running server, so both sides see the same server state.

    python -m ghost_lsp.tools.bench.remote --url http://127.0.0.1:8000 [--token T]
        [--model-dir DIR] [--max-tokens 48] [--rounds 9]

Prints one JSON line per setting: median and p90 request ms, and the text's length (the same
text both ways when only log-probs differ).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from ghost_lsp.engine.remote import RemoteEngine
from ghost_lsp.types import SamplingParams

PROMPT = "import os\n\n\ndef read_lines(path):\n    with open(path, encoding=\"utf-8\") as f:\n"


def measure(engine: RemoteEngine, settings: dict[str, SamplingParams], rounds: int, prompt: str = PROMPT) -> dict:
    """{name: {"median_ms", "p90_ms", "chars"}}: the settings run in turn, `rounds` times each."""
    times: dict[str, list[float]] = {k: [] for k in settings}
    chars: dict[str, int] = {}
    for name, params in settings.items():  # warm-up: model load, prompt cache
        engine.generate(prompt, params, deadline=time.monotonic() + 60)
    for _ in range(rounds):
        for name, params in settings.items():
            t0 = time.perf_counter()
            cand = engine.generate(prompt, params, deadline=time.monotonic() + 60)
            times[name].append((time.perf_counter() - t0) * 1000)
            chars[name] = len(cand.text)
    return {k: {"median_ms": round(statistics.median(v), 1),
                "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 1), "chars": chars.get(k, 0)}
            for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default=None)
    ap.add_argument("--model-dir", default=None, help="the served model's ghost-lsp folder (exact token counts)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    eng = RemoteEngine(a.url, token=a.token, timeout_ms=30000, model_dir=a.model_dir, same_model=bool(a.model_dir))
    eng.discover()
    base = dict(max_new_tokens=a.max_tokens, temperature=0.0)
    res = measure(eng, {"logprobs": SamplingParams(**base, logprobs=True),
                        "no logprobs": SamplingParams(**base, logprobs=False)}, a.rounds)
    for name, r in res.items():
        print(json.dumps({"setting": name, "server": eng.url, "dialect": eng.dialect, **r}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
