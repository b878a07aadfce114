"""The `ghost-lsp` command: serve, complete, model.

Logs go to stderr (or --log-file), never stdout: for `serve` over stdio, stdout is the
LSP stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from ghost_lsp import __version__
from ghost_lsp.settings import LOG_LEVELS, Settings, default_model_dir, from_dict, load_file

log = logging.getLogger("ghost_lsp")


def _setup_logging(level: str, log_file: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.handlers.clear()
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    if log_file:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
        err.setLevel(logging.WARNING)  # problems still reach stderr
    root.addHandler(err)
    root.setLevel(logging.WARNING)  # third-party chatter stays quiet
    logging.getLogger("ghost_lsp").setLevel(level)


def _base_settings(args: argparse.Namespace, overrides: dict) -> tuple[Settings, list[str]]:
    """defaults ← --config FILE ← command-line flags."""
    warnings: list[str] = []
    data: dict = {}
    if getattr(args, "config", None):
        data, warnings = load_file(args.config)
    s, more = from_dict(data)
    warnings += more
    s, more = from_dict({k: v for k, v in overrides.items() if v is not None}, s)
    return s, warnings + more


# -- serve ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    base, warnings = _base_settings(args, {"model": args.model, "db": args.db})
    _setup_logging(args.log_level or base.log_level, args.log_file)
    for w in warnings:
        log.warning("%s", w)

    from ghost_lsp.server import create_server

    server = create_server(base, warnings)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            print(f"ghost-lsp: --tcp expects HOST:PORT, got {args.tcp!r}", file=sys.stderr)
            return 2
        log.info("ghost-lsp %s listening on %s:%s", __version__, host, port)
        try:
            server.start_tcp(host, int(port))
        finally:
            _close(server)
        return 0
    # Keep the LSP stream to ourselves: fd 1 now points at stderr, so a stray print or a
    # C library writing to stdout cannot corrupt the protocol.
    lsp_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    log.info("ghost-lsp %s on stdio", __version__)
    try:
        server.start_io(sys.stdin.buffer, lsp_out)
    finally:
        _close(server)
    return 0


def _close(server) -> None:
    """Write what the feedback queue still holds, also when the client exits without
    `shutdown`."""
    server.feedback.stop()
    server.completer.close()
    if server.store is not None:
        server.store.close(timeout=2)


# -- complete -------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"ghost-lsp: {message}", file=sys.stderr)
    return 1


def cmd_complete(args: argparse.Namespace) -> int:
    overrides = {"model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens,
                 "debounce_ms": 0, "feedback": False}
    s, warnings = _base_settings(args, overrides)
    _setup_logging(args.log_level or "WARNING", None)
    for w in warnings:
        log.warning("%s", w)

    from ghost_lsp.context.window import read_at

    path = Path(args.file)
    try:
        text = read_at(path, args.line, args.col)
    except ValueError as e:
        return _fail(str(e))

    from ghost_lsp.completer import Completer
    from ghost_lsp.engine.base import EngineError
    from ghost_lsp.settings import model_dir

    folder = model_dir(s)
    try:
        from ghost_lsp.engine.onnx import OnnxEngine

        engine = OnnxEngine(folder)
    except (EngineError, ImportError, OSError, ValueError) as e:
        return _fail(f"cannot load the model from {folder}: {e}")

    from ghost_lsp.server import _LANGUAGES  # one extension table for both front ends
    from ghost_lsp.types import CompletionRequest

    req = CompletionRequest(uri=path.resolve().as_uri(), version=None, line=args.line - 1,
                            character=args.col - 1, language=_LANGUAGES.get(path.suffix.lower(), "plaintext"),
                            path=str(path.resolve()), trigger="invoked")
    completer = Completer(engine, s, None)
    try:
        completion = asyncio.run(completer.complete(req, text))
    finally:
        completer.close()

    if args.json:
        out = {"file": str(path), "line": args.line, "col": args.col, "model_id": engine.model_id,
               "text": None, "timings_ms": {}}
        if completion is not None:
            cand = completion.candidate
            out.update(text=completion.text, id=completion.id, prompt_template=completion.prompt_template,
                       cut_reasons=completion.cut_reasons, timings_ms=completion.timings_ms,
                       finish_reason=cand.finish_reason if cand else None,
                       generated_tokens=len(cand.token_ids) if cand else None,
                       decode_info=cand.decode_info if cand else {})
        print(json.dumps(out, ensure_ascii=False))
        return 0
    if completion is None:
        print(f"(no suggestion at {path}:{args.line}:{args.col} from {engine.model_id})")
        return 0
    t = completion.timings_ms
    print(f"--- suggestion at {path}:{args.line}:{args.col} from {engine.model_id} "
          f"(prompt {completion.prompt_template or '?'}) ---")
    print(completion.text)
    ntok = len(completion.candidate.token_ids) if completion.candidate else 0
    print(f"--- prefill {t.get('prefill_ms', 0):.1f} ms · decode {t.get('decode_ms', 0):.1f} ms "
          f"({ntok} tokens) · filters {t.get('filters_ms', 0):.1f} ms · total {t.get('total_ms', 0):.1f} ms")
    if completion.cut_reasons:
        print(f"--- cut: {', '.join(completion.cut_reasons)}")
    info = completion.candidate.decode_info if completion.candidate else {}
    if info:  # engine/speculative.py: drafts and the n-gram cache mix
        line = (f"--- model calls {1 + info['decode_calls']} · drafted {info['draft_tokens']}, "
                f"accepted {info['draft_accepted']}")
        if "ngram_steps" in info:
            line += (f" · n-gram cache: matched {info['ngram_matched']}/{info['ngram_steps']} steps, "
                     f"changed the top token {info['ngram_changed']}×, mean λ {info['ngram_mean_lambda']}")
        print(line)
    return 0


# -- model (training extras, loaded only when asked for) ---------------------------------


def _add_model_commands(sub) -> list[str]:
    """Let modelkit add `model ...` (it registers the `model` parser itself, export
    included); if it cannot load, offer what does. Returns why anything is missing."""
    try:
        from ghost_lsp.modelkit.train import add_model_parsers

        add_model_parsers(sub)
        return []
    except ImportError as e:
        missing = [f"corpus/tokenizer/train ({e})"]
    mp = sub.add_parser("model", help=MODEL_HELP)
    model_sub = mp.add_subparsers(dest="model_cmd", required=True)
    try:
        from ghost_lsp.modelkit.export import add_model_export_parser, cmd_model_export

        p = add_model_export_parser(model_sub)
        if isinstance(p, argparse.ArgumentParser) and p.get_default("func") is None:
            p.set_defaults(func=cmd_model_export)
    except ImportError as e:
        missing.append(f"export ({e})")
    return missing


MODEL_HELP = "build, train and export models (needs the [train] extra)"


def build_parser(with_model: bool = False) -> tuple[argparse.ArgumentParser, list[str]]:
    p = argparse.ArgumentParser(prog="ghost-lsp", description="AI code-autocomplete language server.")
    p.add_argument("--version", action="version", version=f"ghost-lsp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    from ghost_lsp.context.explain import add_position_arguments

    model_help = f"model folder (default: $GHOST_LSP_MODEL or {default_model_dir()})"
    sp = sub.add_parser("serve", help="run the language server (stdio unless --tcp)")
    sp.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio")
    sp.add_argument("--model", metavar="DIR", help=model_help)
    sp.add_argument("--db", metavar="PATH", help="feedback database (default: $XDG_DATA_HOME/ghost-lsp/feedback.db)")
    sp.add_argument("--config", metavar="FILE", help="settings file, TOML or JSON (keys as in README; optional [ghost] table)")
    sp.add_argument("--log-file", metavar="F", help="write logs here (warnings still go to stderr)")
    sp.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    sp.set_defaults(func=cmd_serve)

    cp = sub.add_parser("complete", help="complete one position in a file, without an editor",
                        description="Run the server's completion pipeline on FILE at a position. "
                                    "LINE and COL are 1-based, as editors show them; COL counts characters.")
    add_position_arguments(cp, model_help)
    cp.add_argument("--config", metavar="FILE", help="settings file, TOML or JSON")
    cp.add_argument("--json", action="store_true", help="print one JSON object")
    cp.add_argument("--n", type=int, metavar="K", help="candidates to generate (first greedy, others sampled)")
    cp.add_argument("--max-new-tokens", type=int, metavar="M")
    cp.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    cp.set_defaults(func=cmd_complete)

    from ghost_lsp.feedback.cli import add_parsers as add_feedback_parsers  # stats, export

    add_feedback_parsers(sub)

    from ghost_lsp.context.explain import add_prompt_parser

    add_prompt_parser(sub, model_help)

    from ghost_lsp.evals.cli import add_eval_parsers  # `eval ...`; other evals register there

    add_eval_parsers(sub)

    from ghost_lsp.serving.cli import add_serve_model_parser  # runs only with the [serve] extra

    add_serve_model_parser(sub, model_help)

    from ghost_lsp.bench import add_bench_parser  # torch/transformers only imported when it runs

    add_bench_parser(sub)

    missing: list[str] = []
    if with_model:
        missing = _add_model_commands(sub)
    else:
        # Listed in --help without importing the training code (and torch) for `serve`.
        sub.add_parser("model", help=MODEL_HELP, add_help=False)
    return p, missing


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with_model = bool(argv) and argv[0] == "model"
    parser, missing = build_parser(with_model)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if with_model and missing and (len(argv) < 2 or argv[1] not in ("-h", "--help")):
            print("ghost-lsp model: unavailable: " + "; ".join(missing)
                  + ". Training needs the extra: pip install 'ghost-lsp[train]'", file=sys.stderr)
        return int(e.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
