"""`ghost-lsp bench --peers`: ghost-lsp's engine against llama.cpp and onnxruntime-genai on the same weights.

Models: the shipped model's PyTorch checkpoint and a ~20 M Llama with random weights built here
(speed does not depend on weight values). Every engine gets the same 256 prompt token ids and
generates 64 greedy tokens; prefill and decode are timed apart, plus the end-to-end request
(prompt + 16 and + 64 new tokens). Before timing, each engine's fp32 build is checked against
PyTorch's logits for the prompt's last position; a peer whose fp32 logits disagree is not
timed. One warm-up round, then `rounds` timed rounds, engines interleaved within each round
(background load hits all alike); medians reported.

Peers:
  llama.cpp           llama-cpp-python (the `bench` extra builds it from source), GGUF written
                      here from the same weights with the `gguf` package (f32, q8_0, q4_0).
  onnxruntime-genai   its runtime in this environment; its model builder needs transformers 5
                      (this project pins 4.57 for optimum), so it runs in a separate Python
                      (--genai-builder, or $GHOST_GENAI_BUILDER) building fp32/int8/int4.
A peer that cannot run is a row with `skipped` and the reason, never dropped.

Why one module over 400 lines: the three engines' runners, their logits check and their
timing are compared side by side; the models they run are prepared in peer_models.py.
"""

from __future__ import annotations

import contextlib

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ghost_lsp.paths import PACKAGE
from ghost_lsp.tools.bench.peer_models import (_bench_checkpoint, build_genai, build_random_llama,
                                                  genai_builder_python, write_gguf)

log = logging.getLogger(__name__)

PROMPT_TOKENS = 256
NEW_TOKENS = 64
E2E_SHORT = 16
# fp32 engines vs PyTorch at the last prompt position: |diff| <= LOGITS_TOL * max(1, max |logit|).
# Relative, because a trained model's logits reach ~15 (llama.cpp f32 differs by ~2e-3 there,
# 1.6e-4 of the scale); a wrong weight layout differs by whole units.
LOGITS_TOL = 1e-3


# -- runners: one engine + format, ready to time -----------------------------------------------


@dataclass
class Runner:
    """prefill(ids) resets the engine's state and runs the prompt, returning the last position's
    logits (fp32 check) or None; next_token() returns the next greedy token and advances."""

    engine: str
    fmt: str
    prefill: callable
    next_token: callable
    close: callable = lambda: None
    info: dict = field(default_factory=dict)


def _torch_runner(model, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    state = {}

    def prefill(ids):
        with torch.inference_mode():
            out = model(torch.tensor([ids]), use_cache=True)
        state["past"], state["logits"] = out.past_key_values, out.logits[0, -1].float().numpy()
        return state["logits"]

    def next_token():
        tok = int(np.argmax(state["logits"]))
        with torch.inference_mode():
            out = model(torch.tensor([[tok]]), past_key_values=state["past"], use_cache=True)
        state["past"], state["logits"] = out.past_key_values, out.logits[0, -1].float().numpy()
        return tok

    return Runner("pytorch", "fp32", prefill, next_token)


def _ghost_runner(folder: Path, fmt: str, threads: int) -> Runner:
    """The engine's own decoder loop (as OnnxEngine.generate runs it, minus sampling extras)."""
    from ghost_lsp.engine.loading import load_local

    engine = load_local(folder, intra_op_threads=threads, reuse_kv=False)
    dec = engine.decoder
    state = {}

    def prefill(ids):
        logits, state["past"] = dec.run(ids, dec.empty_past(), last_only=True)
        state["logits"] = logits[-1]
        return state["logits"]

    def next_token():
        tok = int(np.argmax(state["logits"]))
        logits, state["past"] = dec.run([tok], state["past"])
        state["logits"] = logits[-1]
        return tok

    return Runner("ghost-lsp", fmt, prefill, next_token,
                  info={"quantization": engine.manifest.quantization,
                        "graph": (engine.manifest.info or {}).get("graph", "optimum"),
                        "onnx_mb": round((folder / "model.onnx").stat().st_size / 1e6, 2)})


@contextlib.contextmanager
def _load_params():
    """Model-load parameters for the Llama class: llama.cpp's repacked/AMX weight layouts off
    where the GGUF engine turns them off (engine/llamacpp_model.extra_bufts_safe). The Llama
    class has no argument for it."""
    import llama_cpp.llama_cpp as lc

    from ghost_lsp.engine.llamacpp_model import extra_bufts_safe

    orig = lc.llama_model_default_params
    if extra_bufts_safe(lc):
        yield True
        return

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p

    lc.llama_model_default_params = params
    try:
        yield False
    finally:
        lc.llama_model_default_params = orig


def _llama_cpp_runner(gguf_path: Path, fmt: str, threads: int, n_ctx: int, f32_kv: bool = False) -> Runner:
    from llama_cpp import Llama

    kw = {}
    if f32_kv:  # the fp32 check: keep the KV cache in f32 too (the default is f16)
        kw.update(type_k=0, type_v=0)
    # Flash attention casts K and V to f16 whatever the cache holds (llama.cpp's build_attn_mha): the
    # fp32 check runs without it (its logits then match PyTorch to ~1e-6 instead of ~1e-3 of their scale).
    flash_attn = not f32_kv
    with _load_params() as extra_bufts:
        llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                    n_threads_batch=threads, flash_attn=flash_attn, verbose=False, logits_all=False, **kw)

    n_vocab = llm.n_vocab()

    def last_logits():
        # Llama.scores is only filled with logits_all=True (every position: slower prefill);
        # read the last position straight from the context.
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))

    def prefill(ids):
        llm.reset()
        llm.eval(ids)
        return np.array(last_logits(), dtype=np.float32)

    def next_token():
        tok = int(np.argmax(last_logits()))
        llm.eval([tok])
        return tok

    return Runner("llama.cpp", fmt, prefill, next_token, close=llm.close,
                  info={"gguf_mb": round(gguf_path.stat().st_size / 1e6, 2), "flash_attn": flash_attn,
                        # False on AMX CPUs (see _load_params): llama.cpp runs without its repacked layouts
                        "extra_buffer_types": extra_bufts})


def _genai_runner(folder: Path, fmt: str, max_length: int) -> Runner:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    state = {}

    def prefill(ids):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False, batch_size=1)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        state["gen"] = gen
        logits = np.asarray(gen.get_logits(), dtype=np.float32)
        return logits.reshape(-1, logits.shape[-1])[-1]

    def next_token():
        gen = state["gen"]
        gen.generate_next_token()  # greedy inside the runtime (do_sample=False)
        return int(gen.get_next_tokens()[0])

    return Runner("onnxruntime-genai", fmt, prefill, next_token,
                  info={"onnx_mb": round(sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 1e6, 2)})


# -- measurement --------------------------------------------------------------------------------


def logits_check(ref: np.ndarray, got: np.ndarray | None, tol: float = LOGITS_TOL) -> dict:
    """Compare an engine's last-position fp32 logits with PyTorch's."""
    if got is None:
        return {"ok": False, "why": "engine returned no logits"}
    got = np.asarray(got, dtype=np.float32).reshape(-1)
    if got.shape != ref.shape:
        return {"ok": False, "why": f"logits shape {got.shape} != PyTorch's {ref.shape}"}
    diff = float(np.max(np.abs(got - ref)))
    atol = tol * max(1.0, float(np.max(np.abs(ref))))
    return {"ok": bool(diff <= atol), "max_abs_diff": diff, "atol": atol,
            "same_argmax": bool(int(np.argmax(got)) == int(np.argmax(ref)))}


def _one_request(r: Runner, ids: list[int], n_new: int) -> dict:
    t0 = time.perf_counter()
    r.prefill(ids)
    t1 = time.perf_counter()
    toks, t_short = [], None
    for i in range(n_new):
        toks.append(r.next_token())
        if i + 1 == E2E_SHORT:
            t_short = time.perf_counter()
    t2 = time.perf_counter()
    return {"prefill_ms": (t1 - t0) * 1e3, "decode_ms_per_token": (t2 - t1) * 1e3 / n_new,
            f"e2e_{E2E_SHORT}_ms": ((t_short or t2) - t0) * 1e3, f"e2e_{n_new}_ms": (t2 - t0) * 1e3,
            "tokens": toks}


def time_runners(runners: list[Runner], ids: list[int], n_new: int, rounds: int,
                 ref_tokens: list[int] | None) -> list[dict]:
    """Warm-up round, then `rounds` rounds with every runner once per round; medians."""
    samples = {id(r): [] for r in runners}
    tokens = {}
    for rnd in range(rounds + 1):
        for r in runners:
            got = _one_request(r, ids, n_new)
            if rnd == 0:
                tokens[id(r)] = got["tokens"]
            else:
                samples[id(r)].append(got)
    rows = []
    for r in runners:
        s = samples[id(r)]
        row = {"engine": r.engine, "format": r.fmt, **r.info}
        for k in ("prefill_ms", "decode_ms_per_token", f"e2e_{E2E_SHORT}_ms", f"e2e_{n_new}_ms"):
            row[k] = round(float(statistics.median(x[k] for x in s)), 3)
        if ref_tokens:
            toks = tokens[id(r)]
            same = next((i for i, (a, b) in enumerate(zip(toks, ref_tokens)) if a != b), len(toks))
            row["greedy_prefix_agreement"] = round(same / len(ref_tokens), 3)
        rows.append(row)
    return rows


# -- one model ----------------------------------------------------------------------------------


GHOST_FORMATS = (  # (label, export_onnx kwargs)
    ("fp32 fused", {"graph": "fused", "quantize": "none"}),
    ("int8 optimum (dynamic)", {"graph": "optimum", "quantize": "int8"}),
    ("int8 fused (dynamic)", {"graph": "fused", "quantize": "int8"}),
    ("int8 fused (MatMulNBits)", {"graph": "fused", "quantize": "int8-nbits"}),
    ("int4 fused (MatMulNBits)", {"graph": "fused", "quantize": "int4"}),
)


def bench_model(label: str, hf_dir: Path, tokenizer_json: Path, work: Path, *, threads: int, rounds: int,
                n_prompt: int, n_new: int, genai_python: str | None, genai_why: str,
                peers: set[str], ghost_formats=GHOST_FORMATS) -> dict:
    """Build every engine's formats of one checkpoint, check fp32 logits, time; one result dict."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from ghost_lsp.tools.bench.checkpoints import export_quiet

    positions = n_prompt + n_new
    hf = _bench_checkpoint(hf_dir, work, positions)
    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = _prompt_ids(tok, n_prompt)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    torch_runner = _torch_runner(model, threads)
    ref_logits = torch_runner.prefill(ids)
    ref_tokens = [torch_runner.next_token() for _ in range(n_new)]
    result = {"model": label, "hf_dir": str(hf_dir), "parameters": n_params,
              "dims": {"hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
                       "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads, "vocab": cfg.vocab_size},
              "prompt_tokens": n_prompt, "new_tokens": n_new, "threads": threads, "rounds": rounds,
              "checks": [], "skipped": [], "rows": []}
    runners: list[Runner] = [torch_runner]

    def check(engine, fmt, runner_fn):
        """Build the engine's fp32 runner, compare logits; True when it may be timed."""
        try:
            r = runner_fn()
            c = {"engine": engine, "format": fmt, **logits_check(ref_logits, r.prefill(ids))}
            r.close()
        except Exception as e:  # noqa: BLE001 - a peer failing to load is a result, not a crash
            c = {"engine": engine, "format": fmt, "ok": False, "why": f"{type(e).__name__}: {e}"}
        result["checks"].append(c)
        if not c["ok"]:
            result["skipped"].append({"engine": engine, "reason": "fp32 logits check failed: "
                                      + c.get("why", f"max abs diff {c.get('max_abs_diff')}")})
        return c["ok"]

    def add(engine, fmt, fn):
        try:
            runners.append(fn())
        except Exception as e:  # noqa: BLE001
            log.warning("%s %s: %s", engine, fmt, e)
            result["skipped"].append({"engine": engine, "format": fmt, "reason": f"{type(e).__name__}: {e}"})

    # ghost-lsp: the export recipe's own formats (each validated against PyTorch by export_onnx)
    folders = {}
    for fmt, kw in ghost_formats:
        out = work / f"ghost-{kw['quantize']}-{kw['graph']}"
        try:
            # fp32 parity is still enforced; quantized agreement is reported (greedy=pt), not
            # gated: random weights have logit margins too small for int4 to keep greedy paths.
            export_quiet(hf, out, tokenizer_json=tokenizer_json, min_agreement=0.0, **kw)
            folders[fmt] = out
        except Exception as e:  # noqa: BLE001
            result["skipped"].append({"engine": "ghost-lsp", "format": fmt, "reason": f"export: {e}"})
    if "fp32 fused" in folders and check("ghost-lsp", "fp32 fused",
                                         lambda: _ghost_runner(folders["fp32 fused"], "fp32", threads)):
        for fmt, folder in folders.items():
            add("ghost-lsp", fmt, lambda f=folder, m=fmt: _ghost_runner(f, m, threads))

    if "llama.cpp" in peers:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            result["skipped"].append({"engine": "llama.cpp", "reason": f"llama-cpp-python not installed ({e}); "
                                      "pip install 'ghost-lsp[bench]' builds it (~4 min)"})
        else:
            ggufs = {}
            for q in ("f32", "q8_0", "q4_0"):
                path = work / f"model-{q}.gguf"
                info = write_gguf(hf, path, q, tokenizer_json)
                ggufs[q] = (path, info)
            if check("llama.cpp", "f32", lambda: _llama_cpp_runner(ggufs["f32"][0], "f32", threads, positions,
                                                                      f32_kv=True)):
                for q in ("q8_0", "q4_0"):
                    path, info = ggufs[q]
                    add("llama.cpp", q, lambda p=path, q=q, i=info: _with_info(
                        _llama_cpp_runner(p, q, threads, positions), {"fallback_f16": len(i["fallback_f16"])}))

    if "onnxruntime-genai" in peers:
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError as e:
            result["skipped"].append({"engine": "onnxruntime-genai", "reason": f"not installed ({e})"})
        else:
            if genai_python is None:
                result["skipped"].append({"engine": "onnxruntime-genai", "reason": genai_why})
            else:
                built = {}
                for prec in ("fp32", "int8", "int4"):
                    try:
                        built[prec] = build_genai(genai_python, hf, work / f"genai-{prec}", prec, threads)
                    except Exception as e:  # noqa: BLE001
                        result["skipped"].append({"engine": "onnxruntime-genai", "format": prec, "reason": str(e)})
                if "fp32" in built and check("onnxruntime-genai", "fp32",
                                             lambda: _genai_runner(built["fp32"], "fp32", positions)):
                    for prec in ("int8", "int4"):
                        if prec in built:
                            add("onnxruntime-genai", prec, lambda f=built[prec], p=prec: _genai_runner(f, p, positions))

    result["rows"] = time_runners(runners, ids, n_new, rounds, ref_tokens)
    for r in runners:
        r.close()
    _ratios(result)
    return result


def _with_info(r: Runner, info: dict) -> Runner:
    r.info.update(info)
    return r


def _prompt_ids(tokenizer, n: int) -> list[int]:
    """n token ids of real code: this package's own source (same ids for every engine)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py")))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if len(ids) < n:
        raise ValueError(f"only {len(ids)} prompt tokens available, need {n}")
    return ids[1000:1000 + n] if len(ids) >= 1000 + n else ids[:n]


def _ratios(result: dict) -> None:
    """Each row's time over the fastest peer's (llama.cpp / onnxruntime-genai) per phase."""
    peers = [r for r in result["rows"] if r["engine"] in ("llama.cpp", "onnxruntime-genai")]
    best = {}
    for k in ("prefill_ms", "decode_ms_per_token", f"e2e_{E2E_SHORT}_ms", f"e2e_{result['new_tokens']}_ms"):
        if peers:
            b = min(peers, key=lambda r: r[k])
            best[k] = {"engine": b["engine"], "format": b["format"], "value": b[k]}
            for r in result["rows"]:
                r[k.replace("_ms", "").replace("_per_token", "") + "_vs_best_peer"] = round(r[k] / b[k], 2)
    result["best_peer"] = best


# -- table and command --------------------------------------------------------------------------


def table(result: dict) -> str:
    n_new = result["new_tokens"]
    lines = [f"== {result['model']}: {result['parameters'] / 1e6:.2f} M params {result['dims']}, "
             f"{result['prompt_tokens']}-token prompt, {n_new} greedy tokens, {result['threads']} thread(s), "
             f"median of {result['rounds']}",
             "  fp32 logits vs PyTorch: " + "; ".join(
                 f"{c['engine']} {c['format']} " + (f"max|diff| {c['max_abs_diff']:.2g}" if "max_abs_diff" in c
                                                     else c.get("why", "")) + (" ok" if c["ok"] else " FAILED")
                 for c in result["checks"]),
             f"  {'engine':<18} {'format':<26} {'prefill ms':>10} {'x peer':>6} {'decode ms/tok':>13} "
             f"{'x peer':>6} {'e2e +' + str(E2E_SHORT):>8} {'e2e +' + str(n_new):>8} {'greedy=pt':>9}"]
    for r in result["rows"]:
        lines.append(f"  {r['engine']:<18} {r['format']:<26} {r['prefill_ms']:>10.2f} "
                     f"{r.get('prefill_vs_best_peer', float('nan')):>6.2f} {r['decode_ms_per_token']:>13.3f} "
                     f"{r.get('decode_vs_best_peer', float('nan')):>6.2f} {r[f'e2e_{E2E_SHORT}_ms']:>8.1f} "
                     f"{r[f'e2e_{n_new}_ms']:>8.1f} {r.get('greedy_prefix_agreement', ''):>9}")
    for s in result["skipped"]:
        lines.append(f"  skipped: {s['engine']} {s.get('format', '')}: {s['reason']}")
    return "\n".join(lines)


def run_peers(args) -> int:
    """Entry point for `ghost-lsp bench --peers` (args from bench.add_bench_parser)."""
    from ghost_lsp.tools.bench.checkpoints import hf_dir_for
    from ghost_lsp.engine.decoder import default_threads
    from ghost_lsp.settings.core import Settings, model_dir

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    folder = Path(args.model) if args.model else Path(model_dir(Settings()))
    threads = args.threads or default_threads()
    hf, why = hf_dir_for(folder, args.hf)
    peers = set(args.peer_list.split(",")) if getattr(args, "peer_list", None) else {"llama.cpp", "onnxruntime-genai"}
    genai_python, genai_why = genai_builder_python(getattr(args, "genai_builder", None))
    sizes = set((getattr(args, "peer_models", None) or "shipped,20m").split(","))
    bad = (peers - {"llama.cpp", "onnxruntime-genai"}) | (sizes - {"shipped", "20m"})
    if bad:
        print(f"ghost-lsp bench --peers: unknown name(s) {sorted(bad)}: peers are llama.cpp, onnxruntime-genai; "
              "models are shipped, 20m", file=sys.stderr)
        return 2
    results, meta = [], {"threads": threads, "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "command": " ".join(["ghost-lsp"] + sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="ghost-peers-") as tmp:
        work = Path(tmp)
        tok_json = folder / "tokenizer.json"
        plan = []
        if "shipped" in sizes:
            if hf is None:
                print(f"ghost-lsp bench --peers: {folder.name} has no PyTorch checkpoint to give the peers: {why}. "
                      "Pass --hf DIR, or --peer-models 20m for the random model only.", file=sys.stderr)
                return 2
            else:
                plan.append((f"{folder.name} ({hf.name} checkpoint)", hf))
        if "20m" in sizes:
            plan.append(("random Llama 20.8 M", build_random_llama(work / "random-20m", tok_json,
                                                                    args.new_tokens + PROMPT_TOKENS)))
        for label, path in plan:
            sub = work / path.name.replace("/", "_")
            sub.mkdir(exist_ok=True)
            res = bench_model(label, path, tok_json, sub, threads=threads, rounds=args.rounds,
                              n_prompt=PROMPT_TOKENS, n_new=args.new_tokens, genai_python=genai_python,
                              genai_why=genai_why, peers=peers)
            results.append(res)
            print(table(res), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "peers": results}, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0
