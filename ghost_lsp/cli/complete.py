"""`ghost-lsp complete FILE --line N --col N`: one completion through the server's pipeline,
without an editor."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

from ghost_lsp.cli import common
from ghost_lsp.settings.core import LOG_LEVELS

log = logging.getLogger("ghost_lsp")


def add_parser(sub, model_help: str) -> argparse.ArgumentParser:
    cp = sub.add_parser("complete", help="complete one position in a file, without an editor",
                        description="Run the server's completion pipeline on FILE at a position. "
                                    "LINE and COL are 1-based, as editors show them; COL counts characters.")
    common.add_position_arguments(cp, model_help)
    cp.add_argument("--config", metavar="FILE", help="settings file, TOML or JSON")
    cp.add_argument("--json", action="store_true", help="print one JSON object")
    cp.add_argument("--n", type=int, metavar="K", help="candidates to generate (first greedy, others sampled)")
    cp.add_argument("--max-new-tokens", type=int, metavar="M")
    cp.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    cp.set_defaults(func=cmd_complete)
    return cp


def cmd_complete(args: argparse.Namespace) -> int:
    overrides = {"model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens,
                 "debounce_ms": 0, "feedback": False}
    s, warnings = common.base_settings(args, overrides)
    common.setup_logging(args.log_level or "WARNING", None)
    for w in warnings:
        log.warning("%s", w)

    from ghost_lsp.positions import read_at

    path = Path(args.file)
    try:
        text = read_at(path, args.line, args.col)
    except ValueError as e:
        return common.fail(str(e))

    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.base import EngineError
    from ghost_lsp.engine.loading import load_local
    from ghost_lsp.settings.core import model_dir

    folder = model_dir(s)
    try:
        engine = load_local(folder)
    except EngineError as e:
        return common.fail(f"cannot load the model from {folder}: {e}")

    from ghost_lsp.languages import language_for_path
    from ghost_lsp.types import CompletionRequest

    req = CompletionRequest(uri=path.resolve().as_uri(), version=None, line=args.line - 1,
                            character=args.col - 1, language=language_for_path(str(path)),
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
