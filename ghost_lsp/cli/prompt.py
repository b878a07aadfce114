"""`ghost-lsp prompt FILE --line N --col N`: the exact prompt the server would send, and why.

Prints the prompt, then a table of what each part (prefix, suffix, each provider's snippets)
contributed in tokens of the model's own tokenizer and what was dropped. Loads only the model's
manifest and tokenizer, not the ONNX session.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ghost_lsp.cli import common
from ghost_lsp.context import PROVIDERS, ContextRequest, FanOut, gather, make_providers
from ghost_lsp.positions import read_at
from ghost_lsp.languages import language_for_path

ROOT_MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg")


def find_root(path: Path) -> Path:
    """The nearest folder above `path` with a project marker, else the file's folder."""
    for folder in [path.parent, *path.parent.parents]:
        if any((folder / m).exists() for m in ROOT_MARKERS):
            return folder
    return path.parent


def add_prompt_parser(sub, model_help: str) -> argparse.ArgumentParser:
    p = sub.add_parser("prompt", help="print the exact prompt for a position and what each context provider added",
                       description="Build the prompt the server would send for FILE at LINE:COL (1-based) and "
                                   "show each part's token count and what the budget dropped.")
    common.add_position_arguments(p, model_help)
    p.add_argument("--root", metavar="DIR", help="project folder to index (default: nearest with .git/pyproject.toml)")
    p.add_argument("--open", action="append", default=[], metavar="FILE",
                   help="a file to treat as open in the editor (repeatable; most recent first)")
    p.add_argument("--providers", default=",".join(PROVIDERS),
                   help=f"comma-separated context providers (default {','.join(PROVIDERS)}; '' for none)")
    p.add_argument("--cleaner", default="off", choices=["off", "strip"], help="prompt cleaner")
    p.add_argument("--max-new-tokens", type=int, default=48, metavar="M")
    p.add_argument("--no-ngram", action="store_true", help="skip the n-gram cache report (context/ngram_index.py)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_prompt)
    return p


def cmd_prompt(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from ghost_lsp.context.index import ProjectIndex
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.completion.prompt import render_parts, template_for
    from ghost_lsp.settings.core import Settings, model_dir

    path = Path(args.file)
    try:
        text = read_at(path, args.line, args.col)
    except ValueError as e:
        return common.fail(str(e))
    folder = model_dir(Settings(model=args.model or ""))
    tok = None
    try:
        from ghost_lsp.engine.llamacpp import wants_llama_cpp

        if wants_llama_cpp(folder):  # a GGUF: its manifest and tokens come from llama.cpp
            from ghost_lsp.engine.loading import load_local

            engine = load_local(folder)
            manifest, count = engine.manifest, engine.count_tokens
        else:
            manifest = Manifest.load(folder)
            tok = Tokenizer.from_file(str(Path(folder) / manifest.tokenizer))

            def count(s: str) -> int:
                return len(tok.encode(s, add_special_tokens=False).ids)
    except Exception as e:  # noqa: BLE001 - any unreadable model folder is a user error here
        return common.fail(f"cannot load the model's manifest/tokenizer from {folder}: {e}")

    names = [n for n in args.providers.split(",") if n]
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        return common.fail(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
    index = None
    if "project" in names:
        root = Path(args.root) if args.root else find_root(path.resolve())
        index = ProjectIndex(root)
        index.build()
    open_docs = {}
    for f in args.open:
        try:
            open_docs[str(Path(f).resolve())] = Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            return common.fail(f"cannot read --open {f}: {e}")
    req = ContextRequest(text=text, line=args.line - 1, character=args.col - 1, path=str(path.resolve()),
                         language=language_for_path(str(path), "plaintext"), open_docs=open_docs, index=index)
    reports: list = []
    ctx = gather(req, FanOut(make_providers(names)), args.cleaner, reports)
    template = template_for(manifest)
    budget = max(16, manifest.context_length - args.max_new_tokens)
    prompt, parts = render_parts(template, ctx, count, budget)
    total = count(prompt.text)
    ngram = None if args.no_ngram or tok is None else _ngram_report(tok, index, open_docs, req, text, prompt.text)
    if args.json:
        print(json.dumps({"prompt": prompt.text, "template": prompt.template, "tokens": total, "budget": budget,
                          "parts": [p.__dict__ for p in parts],
                          "providers": [r.__dict__ for r in reports], "ngram": ngram}, ensure_ascii=False))
        return 0
    print(f"=== prompt ({prompt.template}, {total} tokens of a {budget}-token budget: context "
          f"{manifest.context_length} - {args.max_new_tokens} new) ===")
    print(prompt.text)
    print("=== end of prompt ===")
    rows = [(p.source, p.path if len(p.path) < 48 else "…" + p.path[-47:], str(p.tokens), p.status) for p in parts]
    widths = [max(len(r[i]) for r in rows + [("part", "path", "tokens", "status")]) for i in range(4)]
    for r in [("part", "path", "tokens", "status")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for r in reports:
        print(f"provider {r.name}: {r.snippets} snippet(s) in {r.ms:.2f} ms, {r.status}")
    if index is not None:
        print(f"index: {len(index)} modules under {index.root} ({index.stats.seconds:.2f} s)"
              + (f", capped: {index.stats.capped}" if index.stats.capped else ""))
    if ngram is not None:
        t = ngram["tiers"]
        print(f"n-gram cache: {t['project_tokens']} project tokens ({t['project_files']} files), {t['open_tokens']} open, "
              f"{t['current_tokens']} current; {t['bytes'] / 1e6:.1f} MB")
        print(f"  at the cursor: longest seen context {ngram['order']} token(s), λ {ngram['lambda']}, "
              f"top {', '.join(f'{w!r} {p:.2f}' for w, p in ngram['top']) or '(nothing seen)'}")
        print(f"  draft ({ngram['draft_source'] or 'none'}): {ngram['draft']!r}")
    return 0


def _ngram_report(tok, index, open_docs: dict, req, text: str, prompt_text: str) -> dict | None:
    """The workspace n-gram cache as the server would build it for this request."""
    from ghost_lsp.positions import split_at
    from ghost_lsp.engine.ngram_index import WorkspaceNgrams, describe
    from ghost_lsp.settings.core import Settings

    s = Settings()
    ws = WorkspaceNgrams(lambda t: tok.encode(t, add_special_tokens=False).ids, tok.get_vocab_size(True),
                         max_tokens=s.ngram_max_tokens)
    if index is not None:
        ws.load_paths([p for p in index.paths() if p != req.path])
    ws.set_open(open_docs)
    ws.set_current(req.path, *split_at(text, req.line, req.character))
    return describe(ws, tok, prompt_text, s.ngram_weight, s.draft_tokens)

