"""Load benchmark of `ghost-lsp serve-model`: batching on vs off, side by side, loopback only.

    python -m ghost_lsp.tools.bench.serving --model models/ghost-py-base [--provider cuda]

Starts the real server twice (--no-batching, then batching), sends a bounded number of requests
at 1, 4 and 16 concurrent clients, and prints one table: requests/s, generated tokens/s, p50/p95
latency. Then an overload run at 1.5x the server's capacity (batch + queue): admitted requests'
p95 and how fast the rest are refused (429), as the loaded clients see it, as a separate client
process sees it, and inside the server. Every request has a bounded timeout; nothing waits
forever.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

PROMPTS = ["def read_lines(path):\n    with open(path) as f:\n", "class Stack:\n    def push(self, item):\n",
           "import os\n\n\ndef walk(root):\n", "for i in range(10):\n    if i % 2 == 0:\n"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_model_server(model, *args: str, port: int | None = None, token: str | None = None,
                       timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start `ghost-lsp serve-model` on 127.0.0.1 and wait (bounded) for /ready; returns the
    process and its base URL. `token`: the bearer token it requires (None: no auth).

    Its log goes to a temporary file (`server_log` reads it): a pipe nobody reads would block
    the server once full.
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k != "GHOST_LSP_SERVE_TOKEN"}
    if token:
        env["GHOST_LSP_SERVE_TOKEN"] = token
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "ghost_lsp.cli", "serve-model", "--model", str(model),
                             "--port", str(port), "--log-level", "WARNING", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log_file = log
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-model exited: {server_log(proc)[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"serve-model did not become ready in {timeout:g} s")


def server_log(proc: subprocess.Popen) -> str:
    """What a server started by start_model_server has logged so far."""
    proc.log_file.seek(0)
    return proc.log_file.read().decode(errors="replace")


def stop_model_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def one(port: int, body: dict) -> tuple[int, float, int, float]:
    """(status, seconds, completion tokens, Retry-After seconds or 0) of one request on its own
    connection."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        toks = json.loads(data)["usage"]["completion_tokens"] if resp.status == 200 else 0
        try:
            retry = float(resp.getheader("Retry-After") or 0)
        except ValueError:
            retry = 0.0
        return resp.status, time.perf_counter() - t0, toks, retry
    finally:
        conn.close()


def load(port: int, clients: int, per_client: int, max_tokens: int, seconds: float | None = None) -> dict:
    """`clients` threads, each sending `per_client` requests back to back; or, with `seconds`,
    sending for that long, a refused client waiting the Retry-After the server asked for (as the
    openai client does) before it asks again: a sustained load."""
    end = time.monotonic() + seconds if seconds else None

    def client(c):
        out = []
        for i in range(per_client if end is None else 10**9):
            if end is not None and time.monotonic() >= end:
                break
            body = {"prompt": PROMPTS[(c + i) % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8,
                    "seed": c * 1000 + i}
            out.append(one(port, body))
            if end is not None and out[-1][0] != 200:
                time.sleep(max(0.0, min(out[-1][3], end - time.monotonic())))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    ok = sorted(s for st, s, _, _ in results if st == 200)
    rejected = sorted(s for st, s, _, _ in results if st != 200)
    return {"clients": clients, "requests": len(results), "ok": len(ok), "rejected": len(rejected),
            "req_s": len(ok) / wall, "tok_s": sum(r[2] for r in results) / wall,
            "p50_ms": _pct(ok, 50) * 1000, "p95_ms": _pct(ok, 95) * 1000,
            "reject_p95_ms": _pct(rejected, 95) * 1000 if rejected else None}


def probe(port: int, delay: float, seconds: float) -> list[tuple[int, float]]:
    """(status, seconds) of one-token requests sent one after another for `seconds`, after
    `delay`. Run in its own process during the overload: it times refusals as a client sees
    them that is not itself one of 48 threads sharing one interpreter's lock."""
    time.sleep(delay)
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        status, dt, _, _ = one(port, {"prompt": PROMPTS[0], "max_tokens": 1, "temperature": 0.8})
        out.append((status, dt))
        time.sleep(0.005)
    return out


def server_refusal_p95_ms(port: int) -> float | None:
    """The server's own arrival-to-refusal time, p95 as the upper bound of its histogram bucket
    (Prometheus text from /metrics): what the server spends, without the loaded client's delays."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("ghost_serve_refusal_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= 0.95 * total) * 1000


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--per-client", type=int, default=4, help="requests per client at each level")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=100.0, help="serve-model's admission limit")
    ap.add_argument("--json", metavar="FILE", help="also write the rows here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    common = ["--provider", args.provider, "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue),
              "--max-wait-ms", str(args.max_wait_ms)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    rows = []
    # Without batching every queued request waits for all before it, so the wait-based admission
    # would refuse most of the 16-client load: "off" is bounded by the queue only, as a plain server.
    for mode, extra in (("off", ["--no-batching", "--max-wait-ms", "-1"]), ("on", [])):
        try:
            proc, url = start_model_server(args.model, *common, *extra)
        except RuntimeError as e:
            print(f"serving bench: {e}", file=sys.stderr)
            return 1
        port = int(url.rsplit(":", 1)[1])
        try:
            load(port, 2, 1, 4)  # warm-up
            for c in levels:
                r = load(port, c, args.per_client, args.max_tokens)
                r["batching"] = mode
                rows.append(r)
                print(f"batching {mode:3} clients {c:3}: {r['req_s']:6.2f} req/s {r['tok_s']:8.1f} tok/s "
                      f"p50 {r['p50_ms']:7.1f} ms p95 {r['p95_ms']:7.1f} ms ({r['ok']}/{r['requests']} ok)",
                      file=sys.stderr)
            if mode == "on":
                over = int(1.5 * (args.max_batch + args.max_queue))
                with concurrent.futures.ProcessPoolExecutor(1) as side:
                    probed = side.submit(probe, port, 0.5, 2.0)
                    r = load(port, over, 0, args.max_tokens, seconds=3.0)
                    probed = probed.result(timeout=120)
                refused = sorted(dt for st, dt in probed if st != 200)
                r["probe"] = {"requests": len(probed), "refused": len(refused),
                              "refused_p95_ms": _pct(refused, 95) * 1000 if refused else None}
                r["batching"] = "on, overload"
                r["server_refusal_p95_ms"] = server_refusal_p95_ms(port)
                rows.append(r)
        finally:
            stop_model_server(proc)

    print("| batching | clients | requests ok/sent | req/s | tokens/s | p50 ms | p95 ms | 429 p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rej = f"{r['reject_p95_ms']:.1f}" if r["reject_p95_ms"] is not None else "-"
        print(f"| {r['batching']} | {r['clients']} | {r['ok']}/{r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.0f} "
              f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {rej} |")
    for r in rows:
        if r.get("server_refusal_p95_ms") is not None:
            pr = r["probe"]
            at_probe = "-" if pr["refused_p95_ms"] is None else f"{pr['refused_p95_ms']:.1f} ms"
            print(f"\noverload ({r['clients']} clients): refusals p95 {r['reject_p95_ms']:.1f} ms at the loaded "
                  f"clients, {at_probe} at a client in its own process ({pr['refused']} of its "
                  f"{pr['requests']} one-token requests refused), <= {r['server_refusal_p95_ms']:g} ms inside the server")
    on = {r["clients"]: r for r in rows if r["batching"] == "on"}
    off = {r["clients"]: r for r in rows if r["batching"] == "off"}
    top = max(levels)
    if top in on and top in off and 1 in on:
        print(f"\nat {top} clients: batching gives {on[top]['tok_s'] / off[top]['tok_s']:.2f}x the tokens/s of "
              f"no batching and {on[top]['tok_s'] / on[1]['tok_s']:.2f}x its own 1-client rate; "
              f"p95 {on[top]['p95_ms'] / on[1]['p95_ms']:.2f}x the 1-client p95")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
