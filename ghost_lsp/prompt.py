"""Prompt templates (data files in `prompts/`) and budgeted rendering.

A template is a TOML file named after a model family (the model manifest's `family`). Its
`name@version` is logged with every suggestion so A/B comparisons can tell prompts apart.

Budget: the rendered prompt never exceeds the model's context minus the generation budget,
measured with the model's own tokenizer. The prefix nearest the cursor has priority, then the
suffix (FIM only, capped at `suffix_share` of the budget); whole lines are dropped from the far
ends, never half lines (except the cursor's own line, which is always kept up to the cursor).
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ghost_lsp.manifest import Manifest
from ghost_lsp.types import Context, Prompt

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    template: str
    fim: bool = False
    path_header: bool = False
    stop: tuple[str, ...] = ()
    suffix_share: float = 0.25
    comments: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def header(self, ctx: Context) -> str:
        if not self.path_header or not ctx.path:
            return ""
        mark = self.comments.get(ctx.language) or self.comments.get("default", "#")
        return f"{mark} path: {ctx.path}\n"

    def fill(self, ctx: Context, prefix: str, suffix: str) -> str:
        # str.replace, not str.format: code is full of braces
        return (self.template.replace("{path_header}", self.header(ctx))
                .replace("{prefix}", prefix).replace("{suffix}", suffix))


BUILTIN_PLAIN = Template(name="plain-builtin", version=1, template="{prefix}")


class TemplateError(ValueError):
    pass


@lru_cache(maxsize=32)
def load_template(family: str, prompts_dir: str | None = None) -> Template:
    """Load prompts/<family>.toml; TemplateError names the file and the problem."""
    folder = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    path = folder / f"{family}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"{path}: no template for model family {family!r}") from None
    except tomllib.TOMLDecodeError as e:  # the message carries line and column
        raise TemplateError(f"{path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"{path}: {e}") from None
    try:
        comments = tomllib.loads((folder / "languages.toml").read_text(encoding="utf-8")).get("comment", {})
    except (OSError, tomllib.TOMLDecodeError):
        comments = {}
    try:
        t = Template(
            name=str(data["name"]), version=int(data["version"]), template=str(data["template"]),
            fim=bool(data.get("fim", False)), path_header=bool(data.get("path_header", False)),
            stop=tuple(data.get("stop", ())), suffix_share=float(data.get("suffix_share", 0.25)),
            comments=comments,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TemplateError(f"{path}: missing or bad field: {e}") from None
    if "{prefix}" not in t.template:
        raise TemplateError(f"{path}: template has no {{prefix}} placeholder")
    return t


def template_for(manifest: Manifest, prompts_dir: str | None = None) -> Template:
    """The manifest family's template, falling back to the built-in left-to-right one."""
    try:
        t = load_template(manifest.family, prompts_dir)
    except TemplateError as e:
        log.warning("%s; using the built-in left-to-right template", e)
        return BUILTIN_PLAIN
    if t.fim and not manifest.fim:
        log.warning("template %s needs a FIM model but %s has none; using left-to-right", t.id, manifest.name)
        return BUILTIN_PLAIN
    return t


def _fit_prefix(prefix: str, budget: int, count: Callable[[str], int]) -> str:
    """Longest tail of `prefix` made of whole lines (plus the cursor line) within `budget` tokens."""
    if count(prefix) <= budget:
        return prefix
    lines = prefix.split("\n")
    lo, hi = 1, len(lines)  # number of trailing lines kept; binary search on it
    best = lines[-1]
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = "\n".join(lines[-mid:])
        if count(cand) <= budget:
            best, lo = cand, mid + 1
        else:
            hi = mid - 1
    if count(best) > budget:  # the cursor line alone is too long: keep its end
        best = best[-budget:]
    return best


def _fit_suffix(suffix: str, budget: int, count: Callable[[str], int]) -> str:
    """Longest head of `suffix` made of whole lines within `budget` tokens ('' if none fits)."""
    if budget <= 0:
        return ""
    if count(suffix) <= budget:
        return suffix
    lines = suffix.split("\n")
    lo, hi, best = 1, len(lines), ""
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = "\n".join(lines[:mid]) + "\n"  # a cut suffix still ends its last line
        if count(cand) <= budget:
            best, lo = cand, mid + 1
        else:
            hi = mid - 1
    return best


def render(template: Template, ctx: Context, count_tokens: Callable[[str], int], budget: int) -> Prompt:
    """Render `ctx` with `template` in at most `budget` tokens."""
    overhead = count_tokens(template.fill(ctx, "", ""))
    room = max(1, budget - overhead)
    suffix = ""
    if template.fim and ctx.suffix:
        suffix = _fit_suffix(ctx.suffix, int(room * template.suffix_share), count_tokens)
    prefix = _fit_prefix(ctx.prefix, room - (count_tokens(suffix) if suffix else 0), count_tokens)
    text = template.fill(ctx, prefix, suffix)
    return Prompt(text=text, stop=list(template.stop), template=template.id, fim=template.fim)


def build_prompt(ctx: Context, manifest: Manifest, count_tokens: Callable[[str], int], max_new_tokens: int,
                 prompts_dir: str | None = None) -> Prompt:
    template = template_for(manifest, prompts_dir)
    budget = max(16, manifest.context_length - max_new_tokens)
    return render(template, ctx, count_tokens, budget)


def prompt_hash(prompt: Prompt) -> str:
    return hashlib.sha256(prompt.text.encode("utf-8")).hexdigest()[:16]
