"""Prompt templates (data files in `prompts/`) and budgeted rendering.

A template is a TOML file named after a model family (the model manifest's `family`). Its
`name@version` is logged with every suggestion so A/B comparisons can tell prompts apart.

Budget: the rendered prompt never exceeds the model's context minus the generation budget,
measured with the model's own tokenizer. Priorities, highest first: the prefix nearest the
cursor (up to `prefix_share` of the budget), the suffix (FIM only, up to `suffix_share`),
imported project definitions, neighbour snippets from open files (together up to
`snippet_share`), and then the rest of the prefix further from the cursor. What does not fit is
dropped in whole lines, never half lines (except the cursor's own line, which is always kept up
to the cursor); a snippet whose text was already kept is not shown twice.

Far prefix lines are dropped in steps of `DROP_LINES` (counted from the start of the document
window, which `context/window.py` anchors), not one at a time: the longest fitting tail would
lose one more far line almost whenever the text grows, changing the prompt's first tokens and
so the KV cache's common prefix with the previous prompt (a full prefill on every such
keystroke). In steps, the prompt's start stays put for about `DROP_LINES` lines typed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Callable

from ghost_lsp.engine.manifest import Manifest
from ghost_lsp.context.base import DEFINITIONS
from ghost_lsp.languages import comment_for
from ghost_lsp.paths import PROMPTS_DIR
from ghost_lsp.types import Context, Prompt, Snippet

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{(path_header|snippets|repo_file|suffix|prefix)\}")


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    template: str
    fim: bool = False
    path_header: bool = False
    stop: tuple[str, ...] = ()
    suffix_share: float = 0.25
    # The nearest prefix is reserved this share first; snippets may take at most snippet_share.
    prefix_share: float = 0.5
    snippet_share: float = 0.35
    # One snippet: {comment} = the language's line comment, {path}, {code} = the snippet's lines,
    # each behind the comment mark when snippet_comment is true.
    snippet: str = "{comment} path: {path}\n{code}"
    snippet_comment: bool = True
    # Repository-level formats (StarCoder2, Qwen2.5-Coder, DeepSeek-Coder): shown only when at
    # least one snippet is: repo_header before the snippets, repo_footer after them, repo_file
    # (the current file's own header) at {repo_file}. {path} = the current file (its name only
    # when the path is absolute), {repo} = the name of its folder (a label), {comment} = the
    # language's line comment.
    repo_header: str = ""
    repo_footer: str = ""
    repo_file: str = ""
    comments: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def comment(self, language: str) -> str:
        """The line comment of `language` (a template folder's languages.toml may override it)."""
        return self.comments.get(language) or self.comments.get("default") or comment_for(language)

    def header(self, ctx: Context) -> str:
        if not self.path_header or not ctx.path:
            return ""
        return f"{self.comment(ctx.language)} path: {ctx.path}\n"

    def snippet_block(self, language: str, snip: Snippet) -> str:
        """One snippet rendered, ending in a newline."""
        code = snip.text.rstrip("\n")
        if self.snippet_comment:
            mark = self.comment(language)
            code = "\n".join(f"{mark} {ln}" if ln.strip() else mark for ln in code.split("\n"))
        block = self.snippet.replace("{comment}", self.comment(language)).replace("{path}", snip.path)
        return block.replace("{code}", code).rstrip("\n") + "\n"

    def _repo_text(self, text: str, ctx: Context) -> str:
        if not text:
            return ""
        path = PurePosixPath(ctx.path.replace("\\", "/"))
        repo = path.parent.name or "repo"
        # An absolute path would say where the user's home is: its file name only (as the
        # neighbour snippets show files outside the project).
        shown = path.name if path.is_absolute() or re.match(r"[A-Za-z]:", ctx.path) else str(path)
        return (text.replace("{comment}", self.comment(ctx.language)).replace("{repo}", repo)
                .replace("{path}", shown))

    def repo_cost(self, ctx: Context, count: Callable[[str], int]) -> int:
        """Tokens the repository-level wrapping adds once any snippet is shown."""
        wrap = [self._repo_text(t, ctx) for t in (self.repo_header, self.repo_footer, self.repo_file)]
        return sum(count(t) for t in wrap if t)

    def fill(self, ctx: Context, prefix: str, suffix: str, snippets: str = "") -> str:
        """The template with its placeholders filled; `snippets` = the rendered snippet blocks."""
        repo_file = ""
        if snippets:
            snippets = self._repo_text(self.repo_header, ctx) + snippets + self._repo_text(self.repo_footer, ctx)
            repo_file = self._repo_text(self.repo_file, ctx)
        # One pass over the template only: code is full of braces, and a "{prefix}" inside the
        # user's code must stay text.
        values = {"path_header": self.header(ctx), "snippets": snippets, "repo_file": repo_file,
                  "suffix": suffix, "prefix": prefix}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)


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
            prefix_share=float(data.get("prefix_share", 0.5)), snippet_share=float(data.get("snippet_share", 0.35)),
            snippet=str(data.get("snippet", Template.snippet)),
            snippet_comment=bool(data.get("snippet_comment", True)), comments=comments,
            repo_header=str(data.get("repo_header", "")), repo_footer=str(data.get("repo_footer", "")),
            repo_file=str(data.get("repo_file", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TemplateError(f"{path}: missing or bad field: {e}") from None
    if "{prefix}" not in t.template:
        raise TemplateError(f"{path}: template has no {{prefix}} placeholder")
    for share in ("suffix_share", "prefix_share", "snippet_share"):
        if not 0.0 <= getattr(t, share) <= 1.0:
            raise TemplateError(f"{path}: {share} must be between 0 and 1, not {getattr(t, share)}")
    if "{code}" not in t.snippet:
        raise TemplateError(f"{path}: snippet has no {{code}} placeholder")
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


# Far prefix lines are dropped in multiples of this many (see the module docstring).
DROP_LINES = 8
CURSOR_STEP = 32   # tokens: the cursor line's room is reserved in steps of this
CURSOR_SLACK = 8   # tokens: merges across the cursor line's break


def _reserve_step(budget: int) -> int:
    """The step the cursor line's room is reserved in: CURSOR_STEP, smaller for small budgets."""
    return max(1, min(CURSOR_STEP, budget // 8))


def _drop_lines(text: str, n: int) -> str:
    """`text` less its first `n` lines (the last line, the cursor's, is always kept)."""
    lines = text.split("\n")
    return "\n".join(lines[min(n, len(lines) - 1):])


def _fit_prefix(prefix: str, budget: int, count: Callable[[str], int], step: int = 0) -> str:
    """A tail of `prefix` made of whole lines (plus the cursor line) within `budget` tokens: the
    fewest far lines dropped, rounded up to a multiple of DROP_LINES, so the start moves rarely.

    The finished lines are fitted to the budget less a room for the cursor line reserved in steps
    of CURSOR_STEP tokens. Judged with the cursor line itself, whose token count goes up and down
    as a typed character merges with the token before it, the far edge would flip between two
    steps on consecutive keystrokes at the threshold (each flip a full prefill)."""
    lines = prefix.split("\n")
    last = len(lines) - 1  # dropping this many keeps the cursor line only
    head = lines[:-1]
    step = step or _reserve_step(budget)
    reserve = -(-(count(lines[-1]) + min(CURSOR_SLACK, step)) // step) * step
    room = budget - reserve

    def fits(drop: int) -> bool:
        return drop >= last or count("\n".join(head[drop:]) + "\n") <= room

    drop = 0
    if not fits(0):
        lo, hi, fewest = 1, last, last  # the fewest lines dropped that fit; binary search on it
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits(mid):
                fewest, hi = mid, mid - 1
            else:
                lo = mid + 1
        drop = min(last, -(-fewest // DROP_LINES) * DROP_LINES)
    best = "\n".join(lines[drop:])
    # The reserve's slack nearly always covers merges across the line break; should it not, go
    # on in steps.
    while drop < last and count(best) > budget:
        drop = min(last, drop + DROP_LINES)
        best = "\n".join(lines[drop:])
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


@dataclass
class Part:
    """What one piece of context contributed to a rendered prompt (for `ghost-lsp prompt`)."""

    source: str  # "prefix" | "suffix" | a provider name
    path: str
    tokens: int
    status: str  # "kept", "kept 12/40 lines", "dropped: no room", "dropped: duplicate", ...


def _lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


def _mostly_visible(text: str, visible: set[str]) -> bool:
    """Half or more of the snippet's lines are already in the window (e.g. the same file open
    twice): showing it again would spend the budget on a repeat."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    return not lines or sum(ln in visible for ln in lines) * 2 >= len(lines)


def _snippet_order(snippets: list[Snippet]) -> list[Snippet]:
    """Definitions before neighbour windows; the best-scored first within each."""
    return sorted(snippets, key=lambda s: (s.source != DEFINITIONS, -s.score))


def _fit_block(template: Template, language: str, snip: Snippet, room: int, count) -> tuple[str, int, int]:
    """(block, tokens, code lines kept): the snippet's longest head of whole lines within `room`."""
    block = template.snippet_block(language, snip)
    n = count(block)
    lines = snip.text.rstrip("\n").split("\n")
    if n <= room:
        return block, n, len(lines)
    lo, hi, best = 1, len(lines) - 1, ("", 0, 0)
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = template.snippet_block(language, Snippet(snip.path, "\n".join(lines[:mid]) + "\n"))
        c = count(cand)
        if c <= room:
            best, lo = (cand, c, mid), mid + 1
        else:
            hi = mid - 1
    return best


def render_parts(template: Template, ctx: Context, count_tokens: Callable[[str], int],
                 budget: int) -> tuple[Prompt, list[Part]]:
    """Render `ctx` with `template` in at most `budget` tokens; also say what each part got."""
    count = count_tokens
    overhead = count(template.fill(ctx, "", "", ""))
    room = max(1, budget - overhead)
    near_budget = max(1, int(room * template.prefix_share))
    step = _reserve_step(near_budget)  # one cursor-line reserve for both fits below
    near = _fit_prefix(ctx.prefix, near_budget, count, step)
    used = count(near)
    suffix = ""
    if template.fim and ctx.suffix:
        suffix = _fit_suffix(ctx.suffix, min(int(room * template.suffix_share), room - used), count)
        used += count(suffix) if suffix else 0

    parts: list[Part] = []
    blocks: list[str] = []
    kept_texts: list[str] = []
    snip_room = max(0, min(room - used, int(room * template.snippet_share)))
    can_show = "{snippets}" in template.template
    visible = {ln.strip() for ln in (near + "\n" + suffix).split("\n") if ln.strip()}
    for s in _snippet_order(ctx.snippets):
        key = s.text.strip()
        if not can_show:
            parts.append(Part(s.source, s.path, 0, f"dropped: {template.id} has no {{snippets}}"))
            continue
        if not key or any(key in k for k in kept_texts) or _mostly_visible(s.text, visible):
            parts.append(Part(s.source, s.path, 0, "dropped: duplicate"))
            continue
        # The repository-level wrapping is paid once, with the first snippet shown.
        wrap = 0 if blocks else template.repo_cost(ctx, count)
        block, n, kept_lines = _fit_block(template, ctx.language, s, snip_room - wrap, count)
        if not block:
            parts.append(Part(s.source, s.path, 0, "dropped: no room"))
            continue
        total_lines = _lines(s.text)
        blocks.append(block)
        kept_texts.append(key)
        snip_room -= n + wrap
        parts.append(Part(s.source, s.path, n, "kept" if kept_lines == total_lines
                          else f"kept {kept_lines}/{total_lines} lines"))

    # The token counts of parts do not add up exactly (merges across a boundary), so the whole
    # prompt is measured and, if over, the lowest priority goes first: snippets, then far prefix.
    snippets = "".join(blocks)
    prefix = _fit_prefix(ctx.prefix, max(1, room - used - count(snippets) + count(near)), count, step)
    if len(prefix) < len(near):  # the far prefix only adds to what the near share kept
        prefix = near
    text = template.fill(ctx, prefix, suffix, snippets)
    while count(text) > budget:
        if blocks:
            blocks.pop()
            dropped = next(p for p in reversed(parts) if p.status.startswith("kept"))
            dropped.status, dropped.tokens = "dropped: over budget", 0
            snippets = "".join(blocks)
        elif "\n" in prefix:  # in the same steps as _fit_prefix, so the start stays anchored
            prefix = _drop_lines(prefix, DROP_LINES)
        elif suffix:
            suffix = ""
        else:
            prefix = prefix[1:]
            if not prefix:
                break
        text = template.fill(ctx, prefix, suffix, snippets)

    head = [Part("prefix", ctx.path, count(prefix) if prefix else 0,
                 f"kept {_lines(prefix)}/{_lines(ctx.prefix)} lines")]
    if template.fim:
        head.append(Part("suffix", ctx.path, count(suffix) if suffix else 0,
                         f"kept {_lines(suffix)}/{_lines(ctx.suffix)} lines"))
    prompt = Prompt(text=text, stop=list(template.stop), template=template.id, fim=template.fim)
    return prompt, head + parts


def render(template: Template, ctx: Context, count_tokens: Callable[[str], int], budget: int) -> Prompt:
    """Render `ctx` with `template` in at most `budget` tokens."""
    return render_parts(template, ctx, count_tokens, budget)[0]


def build_prompt(ctx: Context, manifest: Manifest, count_tokens: Callable[[str], int], max_new_tokens: int,
                 prompts_dir: str | None = None) -> Prompt:
    template = template_for(manifest, prompts_dir)
    budget = max(16, manifest.context_length - max_new_tokens)
    prompt = render(template, ctx, count_tokens, budget)
    prompt.stop += [t for t in manifest.stop_tokens or () if t and t not in prompt.stop]
    return prompt


def prompt_hash(text: str) -> str:
    """What the feedback log keeps of a prompt when it may not keep the prompt itself."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
