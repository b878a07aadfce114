"""`ghost-lsp bench`: how fast, measured side by side in one run, on the same model.

1. engines: the int8 ONNX engine's loop vs Hugging Face PyTorch fp32 `generate` (greedy, the
   same prompt ids, the same number of new tokens): prefill ms, ms/token, tokens/s, peak RSS.
2. variants: fp32 vs int8 ONNX (the quantization gain) and teacher vs student (distillation).
3. cache: one request cold vs the follow-up keystroke (KV reuse; forward cache).
   typing: lines typed character by character deep in long files: prompt tokens run per key.
4. lsp: a replayed typing session against the real `ghost-lsp serve` process.
5. bandwidth: measured copy bandwidth and the bytes a decode step reads -> the best ms/token.

Rows that cannot run (no PyTorch checkpoint, no teacher) are reported as skipped with the
reason. Prints a table; writes JSON (--out). Timings alternate between the engines compared,
round by round, so background load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ghost_lsp.tools.bench.checkpoints import DEFAULT_RUNS
from ghost_lsp.tools.bench.engines import _onnx_speed, section_engines, section_variants
from ghost_lsp.tools.bench.hardware import section_bandwidth, section_sampling
from ghost_lsp.tools.bench.keystrokes import section_cache, section_lsp
from ghost_lsp.tools.bench.pipeline import section_pipeline
from ghost_lsp.tools.bench.typing import section_typing

log = logging.getLogger(__name__)


# -- the command ---------------------------------------------------------------------------------------


def _table(results: list[dict]) -> str:
    out = []
    for r in results:
        kind = r["row"]
        if "skipped" in r:
            out.append(f"{kind:<13} skipped: {r['skipped']}")
        elif kind == "engines":
            o, t = r["onnx_int8"], r["torch_fp32_generate"]
            out.append(f"{kind:<13} {r['model']}: prefill {r['prefill_tokens']} tok  onnx int8 "
                       f"{o['prefill_ms']:.1f} ms vs torch fp32 {t['prefill_ms']:.1f} ms ({r['prefill_speedup']}x); "
                       f"decode {o['ms_per_token']:.3f} vs {t['ms_per_token']:.3f} ms/token "
                       f"({o['tokens_per_s']} vs {t['tokens_per_s']} tok/s, {r['decode_speedup']}x); "
                       f"peak RSS {o.get('peak_rss_mb')} vs {t.get('peak_rss_mb')} MB; "
                       f"greedy agreement {r['greedy_token_agreement']}")
        elif kind == "pipeline":
            c, b = r["completer"], r["bare_engine"]
            out.append(f"{kind:<13} {r['requests']} requests (medians), model step {c['model_ms_per_step']} ms; "
                       f"overhead per token: completer {c['overhead_ms_per_token']} ms "
                       f"({c['overhead_pct_of_step']} % of a step; per request {c['overhead_pct_per_request']} %; "
                       f"{c['tokens']} tokens), bare engine {b['overhead_ms_per_token']} ms "
                       f"({b['overhead_pct_of_step']} %)" if c and b else f"{kind:<13} no request measured")
            if r.get("drafts"):
                d = r["drafts"]
                out.append(f"{'':<13} drafts of {d['draft_tokens']}: decode {d['decode_ms_per_token_off']} -> "
                           f"{d['decode_ms_per_token_on']} ms/token (x{d['speedup']}, per request "
                           f"x{d['speedup_per_request']}), model calls/token {d['model_calls_per_token_off']} -> "
                           f"{d['model_calls_per_token_on']}, identical {d['identical']}, "
                           f"acceptance {d['acceptance']} ({d['requests']} requests)")
        elif kind == "quantization":
            a, b = r["onnx_fp32"], r["onnx_int8"]
            out.append(f"{kind:<13} fp32 {a['ms_per_token']:.3f} ms/token, {a['prefill_ms']:.1f} ms prefill, "
                       f"{a['onnx_mb']} MB -> int8 {b['ms_per_token']:.3f}, {b['prefill_ms']:.1f} ms, {b['onnx_mb']} MB "
                       f"(decode {r['decode_speedup']}x, prefill {r['prefill_speedup']}x, size {r['size_ratio']}x)")
        elif kind == "distillation":
            a, b = r["teacher_int8"], r["student_int8"]
            out.append(f"{kind:<13} teacher {a['hidden_layers']} {a['ms_per_token']:.3f} ms/token (val loss "
                       f"{a['val_loss']}) -> student {b['hidden_layers']} {b['ms_per_token']:.3f} (val loss "
                       f"{b['val_loss']}): decode {r['decode_speedup']}x, prefill {r['prefill_speedup']}x")
        elif kind == "cache":
            out.append(f"{kind:<13} follow-up keystroke vs the same request cold, {r['requests']} positions: "
                       f"{r['cold_ms_p50']} -> {r['kv_followup_ms_p50']} ms with KV reuse ({r['kv_speedup']}x; "
                       f"prefill {r['cold_prefill_ms_p50']} -> {r['kv_followup_prefill_ms_p50']} ms, "
                       f"{r['kv_prefill_speedup']}x, {r['kv_token_reuse']} of prompt tokens reused, same tokens "
                       f"{r['kv_same_tokens']}); "
                       f"{r['forward_requests']} type-through: {r['forward_cold_ms_p50']} -> "
                       f"{r['forward_hit_ms_p50']} ms ({r['forward_speedup']}x)")
        elif kind == "lsp":
            out.append(f"{kind:<13} {r['keystrokes']} keystrokes at {r['gap_ms'][0]}-{r['gap_ms'][1]} ms: answered "
                       f"p50 {r['answered_p50_ms']} / p95 {r['answered_p95_ms']} / p99 {r['answered_p99_ms']} ms, "
                       f"{r['answered_within_100ms']} within 100 ms; outcomes {r['outcomes']}; server p50 stages "
                       f"{ {k[:-3]: v for k, v in r['server_stage_ms_p50'].items()} }; forward-cache "
                       f"hit rate {r['forward_hit_rate']} (next key predicted {r['next_key_predicted']}), KV hit rate {r['kv_hit_rate']} "
                       f"(token reuse {r['kv_token_reuse']})")
        elif kind == "train":
            out.append(f"{kind:<13} {r['impl']:<16} {r['threads']} thread(s), batch {r['batch']}: {r['tokens_per_s']} tok/s "
                       f"= {r['gflops']} GFLOP/s at 6·N ({r['params'] / 1e6:.2f} M), {r['share_of_peak']:.0%} of the "
                       f"bf16 matmul peak {r['peak_gflops']} GFLOP/s (median of {r['steps']} steps)")
        elif kind == "sampling":
            out.append(f"{kind:<13} top-p per token over {r['positions']} positions, vocab {r['vocab']}: " + "; ".join(
                f"p={k[6:]} partial sort {v['partial_ms']} ms vs full sort {v['full_sort_ms']} ms ({v['speedup']}x)"
                for k, v in r.items() if k.startswith("top_p_")))
        elif kind == "bandwidth":
            out.append(f"{kind:<13} copy {r['copy_gb_s']} GB/s; {r['total_bytes'] / 1e6:.2f} MB read per token "
                       f"({r['weight_bytes'] / 1e6:.2f} MB weights) -> best {r['best_ms_per_token']} ms/token; "
                       f"measured {r['measured_ms_per_token']} ({r['times_the_limit']}x the limit)")
    return "\n".join(out)


SECTIONS = ("engines", "variants", "cache", "typing", "pipeline", "lsp", "bandwidth", "sampling", "train")
DEFAULT_SECTIONS = SECTIONS[:-1]  # `train` (minutes of torch.compile) runs only when asked


def cmd_bench(args: argparse.Namespace) -> int:
    from ghost_lsp.engine.decoder import default_threads
    from ghost_lsp.settings.core import Settings, model_dir

    if getattr(args, "realsize", None):
        from ghost_lsp.tools.bench.realsize import cmd_realsize

        return cmd_realsize(args)
    if getattr(args, "peers", False):
        from ghost_lsp.tools.bench.peers import run_peers

        return run_peers(args)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    folder = Path(args.model) if args.model else Path(model_dir(Settings()))
    if not (folder / "manifest.json").is_file():
        print(f"ghost-lsp bench: no model folder at {folder}", file=sys.stderr)
        return 1
    only = set(args.only.split(",")) if args.only else set(DEFAULT_SECTIONS)
    bad = only - set(SECTIONS)
    if bad:
        print(f"ghost-lsp bench: unknown section(s) {sorted(bad)}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    threads = args.threads or default_threads()
    results: list[dict] = []
    meta = {"model": str(folder), "threads": threads, "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["ghost-lsp"] + sys.argv[1:])}

    def run(name, fn):
        if name not in only:
            return
        t = time.perf_counter()
        try:
            got = fn()
        except Exception as e:  # one failing section is reported, the rest still run
            log.exception("bench section %s failed", name)
            got = {"row": name, "skipped": f"failed: {type(e).__name__}: {e}"}
        for r in got if isinstance(got, list) else [got]:
            r["seconds"] = r.get("seconds", round(time.perf_counter() - t, 1))
            results.append(r)
            print(_table([r]), flush=True)

    run("engines", lambda: section_engines(folder, args.hf, args.new_tokens, args.rounds, threads, not args.no_long))
    run("variants", lambda: section_variants(folder, args.hf, args.teacher, args.student, threads,
                                             args.new_tokens, args.rounds))
    run("cache", lambda: section_cache(folder, args.package, threads, args.positions, args.seed))
    run("typing", lambda: section_typing(folder, args.package, threads, seed=args.seed))
    run("pipeline", lambda: section_pipeline(folder, args.package, threads, args.positions * 4, args.seed,
                                             args.draft_tokens or 0))
    run("lsp", lambda: section_lsp(folder, args.package, args.keystrokes, (args.gap_min, args.gap_max), args.seed,
                                   Path(str(args.out) + ".server.log"), args.draft_tokens))
    measured = next((r["onnx_int8"]["ms_per_token"] for r in results
                     if r["row"] == "engines" and "onnx_int8" in r), None)
    if measured is None and "bandwidth" in only:
        measured = _onnx_speed(folder, threads, args.new_tokens, args.rounds)["ms_per_token"]
    run("bandwidth", lambda: section_bandwidth(folder, measured, args.new_tokens))
    run("sampling", lambda: section_sampling(folder, args.rounds))
    if "train" in only:
        from ghost_lsp.tools.bench.train_speed import section_train

        run("train", lambda: section_train(folder))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed: ONNX vs PyTorch, int8 vs fp32, caches, LSP latency, bandwidth",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="DIR", help="model folder (default: the configured/shipped model)")
    p.add_argument("--hf", metavar="DIR", help="its PyTorch checkpoint (default: the manifest's source, "
                                               f"else {DEFAULT_RUNS / 'student'})")
    p.add_argument("--teacher", default=str(DEFAULT_RUNS / "teacher"), metavar="DIR")
    p.add_argument("--student", default=str(DEFAULT_RUNS / "student"), metavar="DIR")
    p.add_argument("--only", metavar="LIST", help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--threads", type=int, help="intra-op threads for both engines (default: the engine's)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (medians are reported)")
    p.add_argument("--no-long", action="store_true", help="skip the 1,024-token row (builds a model)")
    p.add_argument("--package", default="toolz,tabulate",
                   help="eval-reserved PyPI packages (comma-separated): the held-out code typed")
    p.add_argument("--positions", type=int, default=12, help="positions for the cache section")
    p.add_argument("--keystrokes", type=int, default=300, help="keystrokes in the LSP replay")
    p.add_argument("--gap-min", type=int, default=60, help="ms between keys, at least")
    p.add_argument("--gap-max", type=int, default=120, help="ms between keys, at most")
    p.add_argument("--draft-tokens", type=int, default=None, metavar="N",
                   help="pipeline: also run each request with prompt-lookup drafts of N tokens (side by side); "
                        "lsp: the server's draftTokens (default: its setting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench.json", help="JSON results file")
    p.add_argument("--peers", action="store_true",
                   help="instead: ghost-lsp's engine vs llama.cpp and onnxruntime-genai on the same weights "
                        "(the shipped model's checkpoint and a random 20 M Llama); see ghost_lsp/tools/bench/peers.py")
    p.add_argument("--peer-list", default=None, metavar="LIST",
                   help="with --peers: peers to run (default llama.cpp,onnxruntime-genai)")
    p.add_argument("--peer-models", default=None, metavar="LIST", help="with --peers: shipped,20m (default both)")
    p.add_argument("--genai-builder", default=None, metavar="PYTHON",
                   help="with --peers: a Python with onnxruntime-genai's model builder (transformers>=5); "
                        "default $GHOST_GENAI_BUILDER")
    p.add_argument("--realsize", metavar="CONFIG", default=None,
                   help="instead: export (time, sizes, peak RAM) and prefill/decode speed of a RANDOM-weight model "
                        "built from a real config (ghost_lsp/tools/bench/realsize_configs/*.json); "
                        "see ghost_lsp/tools/bench/realsize.py")
    p.add_argument("--realsize-engines", default=None, metavar="LIST",
                   help="with --realsize: of fused,optimum,llama.cpp, or one format of one: fused-int8, "
                        "fused-int4, llama.cpp-q8_0, llama.cpp-q4_0 (default fused,llama.cpp)")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="with --realsize: prefill length")
    p.add_argument("--work", default="/tmp/ghost-realsize", metavar="DIR",
                   help="with --realsize: scratch folder for the checkpoint and exports (GBs)")
    p.add_argument("--keep", action="store_true", help="with --realsize: keep the scratch files")
    p.set_defaults(func=cmd_bench)
