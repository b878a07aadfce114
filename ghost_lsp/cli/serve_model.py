"""`ghost-lsp serve-model`: the parser is importable without the [serve] extra; running needs it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("ghost_lsp")

PROVIDERS = {"auto": None, "cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def add_serve_model_parser(sub, model_help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve-model", help="serve a model over an OpenAI-compatible HTTP API (needs the [serve] extra)",
        description="Batching model server: POST /v1/completions, GET /v1/models, /health, /ready, /metrics. "
                    "The bearer token comes from --token-file or $GHOST_LSP_SERVE_TOKEN (never the command "
                    "line); it is required when --host is not a loopback address.")
    p.add_argument("--model", metavar="DIR", help=model_help)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", metavar="F", help="file holding the bearer token")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow a non-loopback host without a token (behind an authenticating proxy only)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="auto",
                   help="onnxruntime execution provider (auto: CUDA when onnxruntime-gpu has it)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    p.add_argument("--max-batch", type=int, default=16, metavar="N", help="rows per decode step")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences waiting beyond the batch; more → 429 with Retry-After")
    p.add_argument("--max-wait-ms", type=float, default=100.0, metavar="MS",
                   help="refuse (429) a request expected to wait longer than this for a batch slot, so "
                        "admitted ones keep a full batch's latency; negative = queue up to --max-queue")
    p.add_argument("--no-batching", action="store_true", help="one sequence at a time (for comparison)")
    p.add_argument("--deadline-s", type=float, default=30.0, help="per-request deadline, queueing included")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--target-utilisation", type=float, default=0.75,
                   help="exported as ghost_serve_target_utilisation for the autoscaler (0.7-0.8 advised)")
    p.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS (uvicorn's TLS)")
    p.add_argument("--ssl-keyfile", metavar="PEM")
    p.add_argument("--log-level", type=str.upper, default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=cmd_serve_model)
    return p


def cmd_serve_model(args: argparse.Namespace) -> int:
    from ghost_lsp.cli import common
    from ghost_lsp.settings.core import default_model_dir

    common.setup_logging(args.log_level, None)
    try:
        from ghost_lsp.serving.app import ServeConfig, is_loopback, load_token, run
    except ImportError as e:
        print(f"ghost-lsp serve-model: needs the [serve] extra ({e}): pip install 'ghost-lsp[serve]'",
              file=sys.stderr)
        return 1
    try:
        token = load_token(args.token_file, dict(os.environ))
    except (OSError, ValueError) as e:
        print(f"ghost-lsp serve-model: cannot read the token: {e}", file=sys.stderr)
        return 2
    if token is None and not is_loopback(args.host) and not args.insecure_no_auth:
        print(f"ghost-lsp serve-model: --host {args.host} is reachable from other machines: set a token "
              "with --token-file or $GHOST_LSP_SERVE_TOKEN (or pass --insecure-no-auth)", file=sys.stderr)
        return 2
    if not 0.0 < args.target_utilisation <= 1.0:
        print("ghost-lsp serve-model: --target-utilisation must be in (0, 1]", file=sys.stderr)
        return 2
    folder = Path(args.model).expanduser() if args.model else default_model_dir()
    config = ServeConfig(model_dir=folder, token=token, max_batch=args.max_batch, max_queue=args.max_queue,
                         batching=not args.no_batching, max_body_bytes=args.max_body_bytes,
                         deadline_s=args.deadline_s, providers=PROVIDERS[args.provider], threads=args.threads,
                         target_utilisation=args.target_utilisation,
                         max_wait_s=args.max_wait_ms / 1000 if args.max_wait_ms >= 0 else None)
    log.info("serve-model: %s on %s:%d, auth %s", folder, args.host, args.port, "on" if token else "off")
    run(config, args.host, args.port, args.ssl_certfile, args.ssl_keyfile, args.log_level)
    return 0
