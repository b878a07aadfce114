"""`ghost-lsp bench --realsize CONFIG.json`: export and speed of a model at a real size.

The weights are RANDOM (speed, size and memory do not depend on their values): the model is
built with its real transformers class from a published checkpoint's config (realsize_configs/),
in bf16 as its checkpoints ship, with a small byte-level tokenizer (ids are fed directly).
Then, each step in its own process so its peak resident memory (wait4's ru_maxrss) is its own:
the fused export at int8 and at int4 (`model export --graph fused`, checked against PyTorch as
always: fp32 logits within tolerance; agreement of random weights is reported, not gated),
optionally optimum's int8 export, GGUF q8_0/q4_0 for llama.cpp (peer_models.write_gguf, as
llama.cpp's own architecture of each model type), and per format: a 1,024-token prefill and
greedy decode, `rounds` timed runs after a warm-up, medians. A model type the fused graph does
not build (gpt_bigcode) has its fused rows skipped with the reason.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).with_name("realsize_configs")
# an engine alone means each of its formats; ENGINE-FORMAT one of them (a 3 B export takes minutes)
FORMATS = {"fused": ("int8", "int4"), "optimum": ("int8",), "llama.cpp": ("q8_0", "q4_0")}


def expand_engines(spec: str) -> set[tuple[str, str]]:
    """"fused,llama.cpp-q8_0" -> {(fused, int8), (fused, int4), (llama.cpp, q8_0)}; ValueError if unknown."""
    out = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        engine, _, fmt = item.partition("-") if item.split("-")[0] in FORMATS else (item, "", "")
        if engine not in FORMATS or (fmt and fmt not in FORMATS[engine]):
            raise ValueError(f"unknown engine {item!r}: use " + ", ".join(
                f"{e} (or {', '.join(f'{e}-{f}' for f in fs)})" for e, fs in FORMATS.items()))
        out |= {(engine, f) for f in ((fmt,) if fmt else FORMATS[engine])}
    return out


def realsize_config(config_json: Path):
    """The transformers config of a realsize_configs/ file (keys starting with "_" are ours)."""
    from transformers import CONFIG_MAPPING

    raw = {k: v for k, v in json.loads(Path(config_json).read_text()).items() if not k.startswith("_")}
    return CONFIG_MAPPING[raw.pop("model_type")](**raw)


def build_random_checkpoint(config_json: Path, out: Path) -> int:
    """The config's model with transformers' own random init, saved in bf16 with a tokenizer;
    returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    from ghost_lsp.tools.modelkit.tiny import train_tiny_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(realsize_config(config_json), dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    train_tiny_tokenizer().save(str(out / "tokenizer.json"))
    return sum(p.numel() for p in model.parameters())


def _measured(args: list[str]) -> tuple[float, int, str]:
    """Run `python -m ghost_lsp.tools.bench.realsize ARGS` niced; (seconds, peak RSS bytes, stdout).
    The child's stderr is passed on when it ends; a failure raises with its last line (the reason)."""
    import tempfile

    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ghost_lsp.tools.bench.realsize", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=lambda: os.nice(10))
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        log = err.read()
    sys.stderr.write(log)
    if proc.returncode:
        last = next((line for line in reversed(log.splitlines()) if line.strip()), "").strip()
        # "package.module.SomeError: the reason" -> "SomeError: the reason"
        head, sep, reason = last.partition(": ")
        if sep and " " not in head:
            last = f"{head.rsplit('.', 1)[-1]}: {reason}"
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {last[:400]}")
    return time.perf_counter() - t, usage.ru_maxrss * 1024, out


def _speed(kind: str, path: Path, n_prompt: int, n_new: int, rounds: int, threads: int) -> dict:
    """Warm-up, then `rounds` requests of n_prompt random ids + n_new greedy tokens; medians."""
    import numpy as np

    from ghost_lsp.tools.bench.peers import _ghost_runner, _llama_cpp_runner, _one_request

    runner = (_ghost_runner(path, kind, threads) if kind == "onnx"
              else _llama_cpp_runner(path, kind, threads, n_prompt + n_new))
    ids = [int(i) for i in np.random.default_rng(0).integers(10, 400, n_prompt)]  # the tokenizer's range
    runs = [_one_request(runner, ids, n_new) for _ in range(rounds + 1)][1:]
    runner.close()
    return {"prefill_ms": round(statistics.median(r["prefill_ms"] for r in runs), 1),
            "decode_ms_per_token": round(statistics.median(r["decode_ms_per_token"] for r in runs), 2),
            "rounds": rounds, "prompt_tokens": n_prompt, "new_tokens": n_new}


def run_realsize(config_json: Path, work: Path, *, engines: set[tuple[str, str]], rounds: int, n_prompt: int, n_new: int,
                 threads: int, keep: bool = False) -> dict:
    """Every step of one config; returns the result dict (rows per format)."""
    import shutil

    from ghost_lsp.tools.modelkit.export import FUSED_TYPES

    name = Path(config_json).stem
    work = Path(work) / name
    hf = work / "hf"
    result: dict = {"config": str(config_json), "rows": [], "skipped": [], "threads": threads, "cpus": os.cpu_count()}
    if (hf / "config.json").is_file():  # kept from an earlier run (--keep)
        result["build"] = {"seconds": 0, "reused": str(hf)}
    else:
        secs, rss, stdout = _measured(["build", str(config_json), str(hf)])
        result["build"] = {"seconds": round(secs, 1), "peak_rss_gb": round(rss / 2**30, 2)}
        result["parameters"] = json.loads(stdout.strip().splitlines()[-1])["parameters"]
    model_type = json.loads(Path(config_json).read_text())["model_type"]
    if any(e == "fused" for e, _ in engines) and model_type not in FUSED_TYPES:  # the rest still runs
        result["skipped"].append({"engine": "fused", "reason": f"--graph fused builds {', '.join(FUSED_TYPES)} "
                                  f"only, not {model_type}"})
        engines = {(e, f) for e, f in engines if e != "fused"}
    exports = [(e, f) for e, fs in FORMATS.items() if e != "llama.cpp" for f in fs if (e, f) in engines]
    for graph, quant in exports:
        out = work / f"onnx-{graph}-{quant}"
        try:
            secs, rss, stdout = _measured(["export", str(hf), str(out), graph, quant])
        except RuntimeError as e:  # e.g. refused by the memory pre-check: the row says why
            result["skipped"].append({"engine": f"onnx {graph} {quant}", "reason": str(e)})
            continue
        report = json.loads(stdout.strip().splitlines()[-1])
        result.setdefault("parameters", report["parameters"])
        result["rows"].append({"engine": f"onnx {graph}", "format": quant, "export_s": round(secs, 1),
                               "export_peak_rss_gb": round(rss / 2**30, 2), "fp32_bytes": report["fp32_bytes"],
                               "bytes": report["model_bytes"], "fp32_max_abs_logit_diff": report["fp32_max_abs_logit_diff"],
                               "greedy_agreement_random_weights": report["int8_greedy_agreement"], "path": out})
    if any(e == "llama.cpp" for e, _ in engines):
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            result["skipped"].append({"engine": "llama.cpp", "reason": f"llama-cpp-python not installed ({e})"})
        else:
            for q in (f for f in FORMATS["llama.cpp"] if ("llama.cpp", f) in engines):
                out = work / f"model-{q}.gguf"
                secs, rss, _ = _measured(["gguf", str(hf), str(out), q])
                result["rows"].append({"engine": "llama.cpp", "format": q, "export_s": round(secs, 1),
                                       "export_peak_rss_gb": round(rss / 2**30, 2), "bytes": out.stat().st_size,
                                       "path": out})
    for row in result["rows"]:
        kind = "onnx" if row["engine"].startswith("onnx") else row["format"]
        row["path"] = str(row["path"])
        try:
            _, rss, stdout = _measured(["speed", kind, row["path"], str(n_prompt), str(n_new), str(rounds),
                                        str(threads)])
        except RuntimeError as e:  # e.g. a llama.cpp build that crashes: the row says so
            row["skipped"] = str(e)
            continue
        row.update(json.loads(stdout.strip().splitlines()[-1]), run_peak_rss_gb=round(rss / 2**30, 2))
        print(json.dumps(row), flush=True)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def table(result: dict) -> str:
    """One markdown row per format."""
    gb = 1e9
    lines = [f"{result['config']}: {result.get('parameters', 0) / 1e9:.2f} B parameters (random weights), "
             f"build {result['build']['seconds']} s"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['engine']} {r['format']} | {r['export_s']} s | {r['bytes'] / gb:.2f} GB | "
                         f"{r['export_peak_rss_gb']} GB | not timed: {r['skipped']} | |")
            continue
        size = (f"{r['fp32_bytes'] / gb:.2f} → {r['bytes'] / gb:.2f} GB" if "fp32_bytes" in r
                else f"{r['bytes'] / gb:.2f} GB")
        lines.append(f"| {r['engine']} {r['format']} | {r['export_s']} s | {size} | "
                     f"{r['export_peak_rss_gb']} GB | {r['prefill_ms'] / 1e3:.1f} s | {r['decode_ms_per_token']} ms |")
    lines += [f"  skipped: {s['engine']}: {s['reason']}" for s in result["skipped"]]
    return "\n".join(lines)


def cmd_realsize(args) -> int:
    try:
        engines = expand_engines(args.realsize_engines or "fused,llama.cpp")
    except ValueError as e:
        print(f"ghost-lsp bench --realsize: {e}", file=sys.stderr)
        return 2
    result = run_realsize(Path(args.realsize), Path(args.work), engines=engines, rounds=args.rounds,
                          n_prompt=args.prompt_tokens, n_new=args.new_tokens, threads=args.threads or 2,
                          keep=args.keep)
    result["command"] = " ".join(["ghost-lsp"] + sys.argv[1:])
    print(table(result))
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


def _child(argv: list[str]) -> None:
    """The steps run_realsize measures, one per process; the last stdout line is JSON."""
    step, rest = argv[0], argv[1:]
    if step == "build":
        print(json.dumps({"parameters": build_random_checkpoint(Path(rest[0]), Path(rest[1]))}))
    elif step == "export":
        from ghost_lsp.tools.bench.checkpoints import export_quiet

        report = export_quiet(Path(rest[0]), Path(rest[1]), graph=rest[2], quantize=rest[3], min_agreement=0.0)
        print(json.dumps(report, default=str))
    elif step == "gguf":
        from ghost_lsp.tools.bench.peer_models import write_gguf

        print(json.dumps(write_gguf(Path(rest[0]), Path(rest[1]), rest[2])))
    elif step == "speed":
        print(json.dumps(_speed(rest[0], Path(rest[1]), *map(int, rest[2:]))))
    else:
        raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    _child(sys.argv[1:])
