"""`ghost-lsp bench`: how fast, measured side by side in one run, on the same model.

1. engines: the int8 ONNX engine's loop vs Hugging Face PyTorch fp32 `generate` (greedy, the
   same prompt ids, the same number of new tokens): prefill ms, ms/token, tokens/s, peak RSS.
2. variants: fp32 vs int8 ONNX (the quantization gain) and teacher vs student (distillation).
3. cache: one request cold vs the follow-up keystroke (KV reuse; forward cache).
4. lsp: a replayed typing session against the real `ghost-lsp serve` process.
5. bandwidth: measured copy bandwidth and the bytes a decode step reads -> the best ms/token.

Rows that cannot run (no PyTorch checkpoint, no teacher) are reported as skipped with the
reason. Prints a table; writes JSON (--out). Timings alternate between the engines compared,
round by round, so background load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ghost_lsp.paths import PACKAGE
from ghost_lsp.tools.bench.checkpoints import DEFAULT_RUNS, export_quiet, hf_dir_for

log = logging.getLogger(__name__)



# -- small helpers ---------------------------------------------------------------------------------


def _median(xs):
    return round(float(statistics.median(xs)), 3) if xs else None


def _pct(xs, q):
    return round(float(np.percentile(xs, q)), 1) if xs else None


class PeakRss:
    """Peak resident memory of this process above a baseline, sampled every 2 ms."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


# -- 1. engines ---------------------------------------------------------------------------------


def _onnx_run(engine, ids: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """The engine's own loop over the same ids: prefill, then one token per step, greedy with
    the engine's token mask (as generate() does, minus healing and stop checks)."""
    from ghost_lsp.engine.sampling import choose_token

    dec = engine.decoder
    t0 = time.perf_counter()
    logits, past = dec.run(ids, dec.empty_past())
    logits = logits[-1]
    t1 = time.perf_counter()
    out = []
    for i in range(n_new):
        tok, _ = choose_token(logits, temperature=0.0, mask=engine.vocab.allowed)
        out.append(tok)
        if i + 1 < n_new:
            step, past = dec.run([tok], past)
            logits = step[-1]
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000 / max(1, n_new - 1), out


def _torch_run(model, ids: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """PyTorch `generate`, greedy: prefill = generate 1 token; decode = the rest per token."""
    import torch

    x = torch.tensor([ids])
    mask = torch.ones_like(x)
    kw = {"attention_mask": mask, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter()
        out = model.generate(x, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
        t2 = time.perf_counter()
    prefill = (t1 - t0) * 1000
    decode = ((t2 - t1) * 1000 - prefill) / max(1, n_new - 1)
    return prefill, decode, out[0, len(ids):].tolist()


def _prompt_ids(engine, n: int, seed: int = 0) -> list[int]:
    """n token ids of real code (the held-out text if any, else this package's source)."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py")))
    ids = engine.encode(text)
    start = random.Random(seed).randrange(0, max(1, len(ids) - n))
    return ids[start:start + n]


def _compare(onnx_engine, model, ids_prefill, ids_decode, n_new, rounds) -> dict:
    rows = {"onnx": {"prefill": [], "decode": []}, "torch": {"prefill": [], "decode": []}}
    agree = None
    for r in range(rounds + 1):
        for name in ("onnx", "torch"):
            fn = _onnx_run if name == "onnx" else _torch_run
            engine = onnx_engine if name == "onnx" else model
            pf, _, _ = fn(engine, ids_prefill, 1)
            _, dec, toks = fn(engine, ids_decode, n_new)
            if r == 0:  # warm-up round, not timed
                if name == "onnx":
                    a = toks
                else:
                    agree = round(sum(x == y for x, y in zip(a, toks)) / max(1, len(toks)), 3)
                continue
            rows[name]["prefill"].append(pf)
            rows[name]["decode"].append(dec)
    out = {}
    for name, v in rows.items():
        ms = _median(v["decode"])
        out[name] = {"prefill_ms": _median(v["prefill"]), "ms_per_token": ms,
                     "tokens_per_s": round(1000 / ms, 1) if ms else None}
    out["greedy_token_agreement"] = agree
    return out


def section_engines(model_dir: Path, hf_dir: str | None, n_new: int, rounds: int, threads: int,
                    long_ctx: bool) -> list[dict]:
    from ghost_lsp.engine.loading import load_local

    rows = []
    with PeakRss() as mem_onnx:
        engine = load_local(model_dir, intra_op_threads=threads)
        ctx = engine.manifest.context_length
        _onnx_run(engine, _prompt_ids(engine, min(256, ctx)), 4)
    hf, why = hf_dir_for(model_dir, hf_dir)
    if hf is None:
        return [{"row": "engines", "skipped": why}]
    with PeakRss() as mem_torch:  # the import counts: it is what serving with PyTorch costs
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        transformers.logging.set_verbosity_error()  # "exceeded the maximum length" on a full window
        torch.set_num_threads(threads)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        _torch_run(model, _prompt_ids(engine, min(256, ctx)), 4)
    n_pf = min(256, ctx)
    n_dec = min(256, ctx - n_new)
    res = _compare(engine, model, _prompt_ids(engine, n_pf, 1), _prompt_ids(engine, n_dec, 2), n_new, rounds)
    res["onnx"]["peak_rss_mb"] = mem_onnx.mb
    res["torch"]["peak_rss_mb"] = mem_torch.mb
    rows.append(_engine_row(f"{model_dir.name} (ctx {ctx})", n_pf, n_dec, n_new, res, threads))
    if long_ctx:
        rows.append(_long_context_row(engine.tokenizer, n_new, rounds, threads))
    return rows


def _engine_row(label, n_pf, n_dec, n_new, res, threads) -> dict:
    o, t = res["onnx"], res["torch"]
    return {
        "row": "engines", "model": label, "prefill_tokens": n_pf, "decode_after_tokens": n_dec,
        "new_tokens": n_new, "threads": threads, "onnx_int8": o, "torch_fp32_generate": t,
        "greedy_token_agreement": res["greedy_token_agreement"],
        "prefill_speedup": round(t["prefill_ms"] / o["prefill_ms"], 2),
        "decode_speedup": round(t["ms_per_token"] / o["ms_per_token"], 2),
        "memory_ratio": round(t["peak_rss_mb"] / o["peak_rss_mb"], 2) if o.get("peak_rss_mb") else None,
    }


def _long_context_row(tokenizer, n_new, rounds, threads) -> dict:
    """The shipped model's context is 256 tokens: for the 1,024-token row, a random-weight
    Llama of the same shape with a 1,280 context (speed does not depend on weight values)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ghost_lsp.engine.loading import load_local

    with tempfile.TemporaryDirectory(prefix="ghost-bench-1k-") as tmp:
        hf = Path(tmp) / "hf"
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=256, intermediate_size=688,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=1280, tie_word_embeddings=True, bos_token_id=0,
                          eos_token_id=0, pad_token_id=0)
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(hf)
        tokenizer.save(str(hf / "tokenizer.json"))
        out = Path(tmp) / "onnx"
        export_quiet(hf, out, quantize="int8", min_agreement=0.0, logits_atol=1e-2,
                manifest_fields={"name": "random-5m-1k"})
        engine = load_local(out, intra_op_threads=threads)
        rng = np.random.default_rng(3)
        ids_pf = rng.integers(10, cfg.vocab_size, 1024).tolist()
        ids_dec = rng.integers(10, cfg.vocab_size, 1024).tolist()
        res = _compare(engine, model, ids_pf, ids_dec, n_new, rounds)
        res["onnx"]["peak_rss_mb"] = res["torch"]["peak_rss_mb"] = None
        params = sum(p.numel() for p in model.parameters())
    return _engine_row(f"random Llama {params / 1e6:.1f} M (ctx 1280)", 1024, 1024, n_new, res, threads)


# -- 2. quantization and distillation -------------------------------------------------------------


def _onnx_speed(folder: Path, threads: int, n_new: int, rounds: int) -> dict:
    from ghost_lsp.engine.loading import load_local

    engine = load_local(folder, intra_op_threads=threads)
    ctx = engine.manifest.context_length
    ids_pf, ids_dec = _prompt_ids(engine, min(256, ctx), 1), _prompt_ids(engine, min(256, ctx - n_new), 2)
    pf, dec = [], []
    for r in range(rounds + 1):
        p, _, _ = _onnx_run(engine, ids_pf, 1)
        _, d, _ = _onnx_run(engine, ids_dec, n_new)
        if r:
            pf.append(p)
            dec.append(d)
    size = sum(f.stat().st_size for f in folder.glob("*.onnx*"))
    ms = _median(dec)
    return {"prefill_ms": _median(pf), "ms_per_token": ms, "tokens_per_s": round(1000 / ms, 1),
            "onnx_mb": round(size / 2**20, 2)}


def _val_loss(hf: Path) -> float | None:
    try:
        s = json.loads((hf / "train_summary.json").read_text())
    except (OSError, ValueError):
        return None
    for k in ("best_val_loss", "val_loss", "final_val_loss"):
        if isinstance(s.get(k), (int, float)):
            return round(float(s[k]), 4)
    return None


def _tokenizer_for(hf: Path, model_dir: Path) -> Path:
    """The checkpoint's tokenizer.json, else the model folder's (the recipe trains one tokenizer)."""
    from ghost_lsp.engine.manifest import Manifest

    own = hf / "tokenizer.json"
    return own if own.is_file() else model_dir / Manifest.load(model_dir).tokenizer


def section_variants(model_dir: Path, hf_dir: str | None, teacher: str, student: str, threads: int,
                     n_new: int, rounds: int) -> list[dict]:
    rows = []
    hf, why = hf_dir_for(model_dir, hf_dir)
    with tempfile.TemporaryDirectory(prefix="ghost-bench-var-") as tmp:
        if hf is None:
            rows.append({"row": "quantization", "skipped": why})
        else:
            fp32 = Path(tmp) / "fp32"
            export_quiet(hf, fp32, quantize=None, tokenizer_json=_tokenizer_for(hf, model_dir),
                    manifest_fields={"name": "fp32"})
            a, b = _onnx_speed(fp32, threads, n_new, rounds), _onnx_speed(model_dir, threads, n_new, rounds)
            rows.append({"row": "quantization", "model": str(hf), "onnx_fp32": a, "onnx_int8": b,
                         "decode_speedup": round(a["ms_per_token"] / b["ms_per_token"], 2),
                         "prefill_speedup": round(a["prefill_ms"] / b["prefill_ms"], 2),
                         "size_ratio": round(a["onnx_mb"] / b["onnx_mb"], 2)})
        t, s = Path(teacher), Path(student)
        missing = [str(p) for p in (t, s) if not (p / "config.json").is_file()]
        if missing:
            rows.append({"row": "distillation", "skipped": "no HF checkpoint in " + ", ".join(missing)})
            return rows
        res = {}
        for name, p in (("teacher", t), ("student", s)):
            out = Path(tmp) / name
            try:
                export_quiet(p, out, quantize="int8", tokenizer_json=_tokenizer_for(p, model_dir),
                        manifest_fields={"name": name})
            except Exception as e:  # noqa: BLE001 - a half-written checkpoint: report, keep the other rows
                rows.append({"row": "distillation", "skipped": f"export of {p} failed: {type(e).__name__}: {e}"})
                return rows
            res[name] = _onnx_speed(out, threads, n_new, rounds)
            res[name]["val_loss"] = _val_loss(p)
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(p)
            res[name]["hidden_layers"] = f"{cfg.hidden_size}x{cfg.num_hidden_layers}"
        rows.append({"row": "distillation", "teacher_int8": res["teacher"], "student_int8": res["student"],
                     "decode_speedup": round(res["teacher"]["ms_per_token"] / res["student"]["ms_per_token"], 2),
                     "prefill_speedup": round(res["teacher"]["prefill_ms"] / res["student"]["prefill_ms"], 2)})
    return rows


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
                       seed: int, tmp: Path) -> dict:
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
    await client.initialize_async(T.InitializeParams(capabilities=caps, process_id=os.getpid(),
                                                     initialization_options={"ghost": {"logLevel": "DEBUG"}}))
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


def section_lsp(model_dir: Path, package: str, keystrokes: int, gap_ms, seed: int, keep_log: Path) -> dict:
    import shutil

    with tempfile.TemporaryDirectory(prefix="ghost-bench-lsp-") as tmp:
        try:
            return asyncio.run(_lsp_session(model_dir, package, keystrokes, gap_ms, seed, Path(tmp)))
        finally:
            if (Path(tmp) / "server.log").exists():  # kept next to the JSON, to look into
                shutil.copyfile(Path(tmp) / "server.log", keep_log)


# -- 5. memory bandwidth ----------------------------------------------------------------------------


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best of a few large numpy copies: bytes read + written per second (GB/s)."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def bytes_per_token(model_dir: Path, kv_positions: int) -> dict:
    """What one decode step must read at least: every weight once (the embedding is read in
    full by the tied LM head) plus the KV cache at `kv_positions`."""
    import onnx
    from onnx import numpy_helper

    from ghost_lsp.engine.manifest import Manifest

    m = Manifest.load(model_dir)
    model = onnx.load(str(model_dir / m.onnx))
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    kv = 0
    for inp in model.graph.input:
        if inp.name.startswith("past"):
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            per_pos = int(np.prod([d for d in dims if d > 0]))
            kv += per_pos * kv_positions * 4  # float32 cache
    return {"weight_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv}


def section_bandwidth(model_dir: Path, measured_ms_per_token: float | None, n_new: int) -> dict:
    from ghost_lsp.engine.manifest import Manifest

    ctx = Manifest.load(model_dir).context_length
    bw = copy_bandwidth_gbs()
    b = bytes_per_token(model_dir, max(1, ctx - n_new // 2))
    best = b["total_bytes"] / (bw * 1e9) * 1000
    return {"row": "bandwidth", "copy_gb_s": round(bw, 2), **b, "best_ms_per_token": round(best, 4),
            "measured_ms_per_token": measured_ms_per_token,
            "times_the_limit": round(measured_ms_per_token / best, 1) if measured_ms_per_token else None}


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
        elif kind == "sampling":
            out.append(f"{kind:<13} top-p per token over {r['positions']} positions, vocab {r['vocab']}: " + "; ".join(
                f"p={k[6:]} partial sort {v['partial_ms']} ms vs full sort {v['full_sort_ms']} ms ({v['speedup']}x)"
                for k, v in r.items() if k.startswith("top_p_")))
        elif kind == "bandwidth":
            out.append(f"{kind:<13} copy {r['copy_gb_s']} GB/s; {r['total_bytes'] / 1e6:.2f} MB read per token "
                       f"({r['weight_bytes'] / 1e6:.2f} MB weights) -> best {r['best_ms_per_token']} ms/token; "
                       f"measured {r['measured_ms_per_token']} ({r['times_the_limit']}x the limit)")
    return "\n".join(out)


def section_sampling(model_dir: Path, rounds: int) -> dict:
    """Top-p sampling cost per token: the partial-sort nucleus vs a full sort of the vocabulary,
    on the model's own next-token distributions (held-out-like code, temperature 0.8)."""
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.engine.sampling import log_softmax, top_p_filter, top_p_filter_sorted

    engine = load_local(model_dir)
    text = (PACKAGE / "completion" / "filters" / "cycles.py").read_text(encoding="utf-8")
    ids = engine.encode(text)[: engine.manifest.context_length]
    logits, _ = engine.decoder.run(ids, engine.decoder.empty_past())
    dists = [np.exp(log_softmax(row / 0.8)) for row in logits]
    row = {"row": "sampling", "positions": len(dists), "vocab": int(logits.shape[-1])}
    for top_p in (0.95, 0.9):
        times = {"partial": [], "full_sort": []}
        for _ in range(rounds):  # alternate, so both see the same machine
            for name, fn in (("partial", top_p_filter), ("full_sort", top_p_filter_sorted)):
                t = time.perf_counter()
                for d in dists:
                    fn(d, top_p)
                times[name].append((time.perf_counter() - t) / len(dists) * 1000)
        assert all(np.array_equal(top_p_filter(d, top_p) > 0, top_p_filter_sorted(d, top_p) > 0) for d in dists)
        med = {k: statistics.median(v) for k, v in times.items()}
        row[f"top_p_{top_p}"] = {"partial_ms": round(med["partial"], 4), "full_sort_ms": round(med["full_sort"], 4),
                                 "speedup": round(med["full_sort"] / med["partial"], 2)}
    return row


SECTIONS = ("engines", "variants", "cache", "lsp", "bandwidth", "sampling")


def cmd_bench(args: argparse.Namespace) -> int:
    from ghost_lsp.engine.decoder import default_threads
    from ghost_lsp.settings.core import Settings, model_dir

    if getattr(args, "peers", False):
        from ghost_lsp.tools.bench.peers import run_peers

        return run_peers(args)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    folder = Path(args.model) if args.model else Path(model_dir(Settings()))
    if not (folder / "manifest.json").is_file():
        print(f"ghost-lsp bench: no model folder at {folder}", file=sys.stderr)
        return 1
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
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
    run("lsp", lambda: section_lsp(folder, args.package, args.keystrokes, (args.gap_min, args.gap_max), args.seed,
                                   Path(str(args.out) + ".server.log")))
    measured = next((r["onnx_int8"]["ms_per_token"] for r in results
                     if r["row"] == "engines" and "onnx_int8" in r), None)
    if measured is None and "bandwidth" in only:
        measured = _onnx_speed(folder, threads, args.new_tokens, args.rounds)["ms_per_token"]
    run("bandwidth", lambda: section_bandwidth(folder, measured, args.new_tokens))
    run("sampling", lambda: section_sampling(folder, args.rounds))
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
    p.set_defaults(func=cmd_bench)
