"""Typed, fully defaulted settings.

Settings come in layers, later overriding earlier: defaults → `--config FILE` (TOML or
JSON) → command-line flags → the client's `initializationOptions` → each
`workspace/didChangeConfiguration` (section "ghost"). Keys may be snake_case or
camelCase. A bad value never raises: it becomes a warning naming the key and the value
kept, so the server can show it to the user and carry on.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ghost_lsp.settings.filters import FilterSettings
from ghost_lsp.paths import SHIPPED_MODEL

SECTION = "ghost"
MULTILINE_MODES = ("auto", "always", "never")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEARN_MODES = ("off", "idle")
REMOTE_DIALECTS = ("auto", "openai", "vllm", "llama.cpp", "ghost-lsp")  # engine/remote_request.py DIALECTS

DEFAULT_EXCLUDE = (
    "**/.env",
    "**/.env.*",
    "**/secrets/**",
    "*.pem",
    "*.key",
    ".env*",
    "id_rsa*",
    "**/.ssh/**",
    "**/.git/**",
)


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    # Model folder or .gguf file (llama.cpp); "" = $GHOST_LSP_MODEL, else the shipped model (paths.SHIPPED_MODEL).
    model: str = ""
    # Feedback database; "" = $XDG_DATA_HOME/ghost-lsp/feedback.db.
    db: str = ""
    feedback: bool = True
    # Store each suggestion's (redacted) prompt; off = only its hash and the suggestion.
    feedback_prompts: bool = True
    # Prompt template folder ("" = the shipped prompts/); an A/B variant may point elsewhere.
    prompts: str = ""
    # A/B variants: tables with "name", "weight" and settings to override (ghost_lsp/settings/ab.py).
    variants: tuple = ()
    max_new_tokens: int = 48
    # Candidates after the first (which is always greedy) are sampled at this temperature.
    temperature: float = 0.6
    top_p: float = 0.95
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    n: int = 1
    multiline: str = "auto"  # "auto" | "always" | "never"
    # Wait this long before inferring, so a burst of keystrokes costs one inference.
    debounce_ms: int = 30
    # Give up on a request after this long (engine stops between tokens).
    deadline_ms: int = 2000
    # Answer from the shown suggestion while the user types what it predicted (no model run).
    forward_cache: bool = True
    # KV caches kept for reuse across keystrokes, one per document (the GGUF engine allocates
    # each slot's full context up front: lower it for a big model on a small machine).
    kv_slots: int = 4
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    log_level: str = "INFO"
    # Context providers besides the current document, in priority order ("open_files", "project").
    context_providers: tuple[str, ...] = ("open_files", "project")
    # Optional prompt cleaner run on collected snippets: "off" or "strip" (drops comments/blank lines).
    prompt_cleaner: str = "off"
    # Temperature of candidate i (n candidates); empty = first greedy, the rest at `temperature`.
    temperatures: tuple[float, ...] = ()
    # Second model folder that re-scores the candidates (ghost_lsp/completion/rank.py); "" = off.
    rerank_model: str = ""
    # Output filters: each rule on/off and its thresholds (nested section "filters").
    filters: FilterSettings = FilterSettings()
    # Answer textDocument/completion too. None (the default) = only for clients that do not
    # support inline completion: VS Code and Neovim 0.12 ask for both on each keystroke, and
    # answering both would run the model twice.
    completion_items: bool | None = None
    # Remote model server (OpenAI-compatible /v1/completions: ghost-lsp serve-model, vLLM, TGI...);
    # "" = run the local model. The token may come from $GHOST_LSP_REMOTE_TOKEN instead.
    remote_url: str = ""
    remote_token: str = ""
    remote_timeout_ms: int = 1000
    # Model name sent to the server ("" = the first one its /v1/models lists).
    remote_model: str = ""
    # Answer with the local model while the remote one is down or slow.
    remote_fallback: bool = True
    # Model folder of the served model (its tokenizer, prompt template and context), trusted
    # whatever name the server reports; "" = the local `model` folder, used only while the
    # server reports the same model name.
    remote_model_dir: str = ""
    # The served model's context in tokens; 0 = from /v1/models (vLLM, serve-model), else the
    # model folder's, else 2048. Prompts are cut to it less max_new_tokens before sending.
    remote_context: int = 0
    # Sampling-field names the server takes: "auto" (from /v1/models), "openai", "vllm",
    # "llama.cpp", "ghost-lsp" (engine/remote_request.py).
    remote_dialect: str = "auto"
    # Workspace token n-gram cache mixed into the model's next-token distribution (local model
    # only; engine/ngram.py): largest mix weight, and its memory bound in tokens (~68 B each).
    ngram_cache: bool = True
    # Chosen on click + itsdangerous, not the held-out projects; checked on packaging + pluggy +
    # pyflakes (neither trained on nor reserved), mean next-line edit similarity: off 0.147,
    # 0.4 → 0.185, 0.6 → 0.184, 0.8 → 0.176, 0.95 → 0.179 (`ghost-lsp eval ngram --ngram-weight W`).
    ngram_weight: float = 0.6
    ngram_max_tokens: int = 400_000
    # Prompt-lookup speculative decoding: up to this many drafted tokens verified per model
    # call (engine/speculative.py); 0 = off. Same output (exactly with fp32 activations; dynamic
    # int8 may flip near-ties: 95 % identical), 4.5x fewer model calls. On ghost-py-base a model
    # call costs enough that 8 pays: decode x1.38 per request through the Completer, replayed
    # typing p50 -27 % (`ghost-lsp bench --only pipeline,lsp --draft-tokens 8`; README, "Speed").
    # On ghost-py-small's cheaper calls it did not (x0.96): set 0 there.
    draft_tokens: int = 8
    # Serve the model `ghost-lsp learn` adapted to this workspace (learned_dir(root)) when one
    # exists and no model is named in the settings; swapped in live when it appears or changes.
    learned_model: bool = True
    # "idle": run `ghost-lsp learn` on the workspace (low priority) after `learn_idle_minutes`
    # without typing, at most once per `learn_idle_minutes` × 6; "off": only when you run it.
    learn: str = "off"
    learn_idle_minutes: int = 10


def _in_range(lo: float, hi: float):
    def check(v: Any) -> bool:
        return lo <= v <= hi

    check.__doc__ = f"between {lo} and {hi}"
    return check


# key -> (python type, extra check or None)
_RULES: dict[str, tuple[type, Any]] = {
    "enabled": (bool, None),
    "model": (str, None),
    "db": (str, None),
    "feedback": (bool, None),
    "feedback_prompts": (bool, None),
    "prompts": (str, None),
    "variants": ("tables", None),
    "max_new_tokens": (int, _in_range(1, 1024)),
    "temperature": (float, _in_range(0.0, 2.0)),
    "top_p": (float, lambda v: 0.0 < v <= 1.0),
    "frequency_penalty": (float, _in_range(-2.0, 2.0)),
    "presence_penalty": (float, _in_range(-2.0, 2.0)),
    "n": (int, _in_range(1, 8)),
    "multiline": (str, lambda v: v in MULTILINE_MODES),
    "debounce_ms": (int, _in_range(0, 5000)),
    "deadline_ms": (int, _in_range(50, 600_000)),
    "forward_cache": (bool, None),
    "kv_slots": (int, _in_range(1, 32)),
    "exclude": (tuple, None),
    "log_level": (str, lambda v: v.upper() in LOG_LEVELS),
    "context_providers": (tuple, lambda v: set(v) <= {"open_files", "project"}),
    "prompt_cleaner": (str, lambda v: v in ("off", "strip")),
    "temperatures": ("floats", lambda v: len(v) <= 8 and all(0.0 <= t <= 2.0 for t in v)),
    "rerank_model": (str, None),
    "filters": (FilterSettings, None),
    "completion_items": (bool, None),
    "remote_url": (str, lambda v: v == "" or v.startswith(("http://", "https://"))),
    "remote_token": (str, None),
    "remote_timeout_ms": (int, _in_range(50, 600_000)),
    "remote_model": (str, None),
    "remote_fallback": (bool, None),
    "remote_model_dir": (str, None),
    "remote_context": (int, _in_range(0, 10_000_000)),
    "remote_dialect": (str, lambda v: v in REMOTE_DIALECTS),
    "ngram_cache": (bool, None),
    "ngram_weight": (float, _in_range(0.0, 1.0)),
    "ngram_max_tokens": (int, _in_range(0, 5_000_000)),
    "draft_tokens": (int, _in_range(0, 32)),
    "learned_model": (bool, None),
    "learn": (str, lambda v: v in LEARN_MODES),
    "learn_idle_minutes": (int, _in_range(1, 24 * 60)),
}
assert set(_RULES) == {f.name for f in fields(Settings)}


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _coerce(key: str, value: Any) -> Any:
    """Return the typed value or raise ValueError saying what was expected."""
    typ, check = _RULES[key]
    if key == "completion_items" and value is None:
        return None  # back to "decide from the client's capabilities"
    if typ == "tables":  # checked entry by entry where it is used (feedback/ab.py)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
            raise ValueError("expected a list of tables")
        return tuple(value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
    elif typ is int:
        # bool is an int subclass; `true` for a token count is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected a number")
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
    elif typ == "floats":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError("expected a list of numbers")
        value = tuple(float(v) for v in value)
    elif typ is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of glob strings")
        value = tuple(value)
    if check is not None and not check(value):
        what = check.__doc__ or {
            "multiline": f"one of {', '.join(MULTILINE_MODES)}",
            "log_level": f"one of {', '.join(LOG_LEVELS)}",
            "top_p": "in (0, 1]",
            "remote_url": "an http:// or https:// URL",
            "context_providers": "a list of: open_files, project",
            "prompt_cleaner": "one of off, strip",
            "temperatures": "at most 8 numbers between 0 and 2",
            "learn": f"one of {', '.join(LEARN_MODES)}",
            "remote_dialect": f"one of {', '.join(REMOTE_DIALECTS)}",
        }.get(key, "a valid value")
        raise ValueError(f"expected {what}")
    if key == "log_level":
        value = value.upper()
    return value


def unwrap_section(d: Any) -> Any:
    """Accept both {"ghost": {...}} and the bare {...}."""
    if isinstance(d, dict) and isinstance(d.get(SECTION), dict):
        return d[SECTION]
    return d


def section_of_change(d: Any) -> dict | None:
    """Our part of a `workspace/didChangeConfiguration` payload: the "ghost" section, or
    the payload itself if it is flat ghost settings (Helix sends the server's `config`
    as is). None when it holds only other sections: those are not ours to warn about."""
    if not isinstance(d, dict):
        return None
    if isinstance(d.get(SECTION), dict):
        return d[SECTION]
    if any(_snake(str(k)) in _RULES for k in d):
        return d
    return None


def from_dict(d: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Overlay `d` on `base` (default: all defaults). Never raises.

    Returns the settings and one warning per ignored key or bad value.
    """
    base = base or Settings()
    d = unwrap_section(d)
    if d is None:
        return base, []
    if not isinstance(d, dict):
        return base, [f"settings: expected an object, got {type(d).__name__}; kept the current settings"]
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    for raw_key, value in d.items():
        key = _snake(str(raw_key))
        if key not in _RULES:
            warnings.append(f"settings: unknown key {raw_key!r} ignored")
            continue
        if key == "filters":
            changes[key], more = _filters_from(value, changes.get(key, base.filters))
            warnings += more
            continue
        try:
            changes[key] = _coerce(key, value)
        except ValueError as e:
            warnings.append(
                f"settings: {raw_key} = {value!r}: {e}; using {getattr(base, key)!r}"
            )
    return replace(base, **changes), warnings


def _filters_from(d: Any, base: FilterSettings) -> tuple[FilterSettings, list[str]]:
    """Overlay the nested `filters` section; each bad key warns and keeps its value."""
    if not isinstance(d, dict):
        return base, [f"settings: filters = {d!r}: expected an object; kept the current filters"]
    types = {f.name: type(getattr(base, f.name)) for f in fields(FilterSettings)}
    changes, warnings = {}, []
    for raw_key, value in d.items():
        key = _snake(str(raw_key))
        typ = types.get(key)
        if typ is None:
            warnings.append(f"settings: unknown key filters.{raw_key!r} ignored")
        elif typ is bool and not isinstance(value, bool) or typ is not bool and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or typ is int and not isinstance(value, int)):
            warnings.append(f"settings: filters.{raw_key} = {value!r}: expected "
                            f"{'true or false' if typ is bool else 'a number'}; using {getattr(base, key)!r}")
        else:
            changes[key] = typ(value)
    return replace(base, **changes), warnings


def load_file(path: str | Path) -> tuple[dict, list[str]]:
    """Read a TOML (.toml) or JSON settings file. Never raises: problems become warnings."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        return {}, [f"config {path}: cannot read ({e.strerror or e}); using defaults"]
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        return {}, [f"config {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({e}); using defaults"]
    data = unwrap_section(data)
    if not isinstance(data, dict):
        return {}, [f"config {path}: expected a table/object; using defaults"]
    return data, []


def default_model_dir() -> Path:
    env = os.environ.get("GHOST_LSP_MODEL")
    if env:
        return Path(env).expanduser()
    return SHIPPED_MODEL


def data_dir() -> Path:
    """ghost-lsp's per-user data: $XDG_DATA_HOME/ghost-lsp (~/.local/share/ghost-lsp)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "ghost-lsp"


def default_db_path() -> Path:
    return data_dir() / "feedback.db"


def project_key(root: str | Path) -> str:
    """A stable, path-free name for a workspace root: the first 16 hex digits of the sha256 of
    its resolved path."""
    import hashlib

    return hashlib.sha256(str(Path(root).expanduser().resolve()).encode("utf-8")).hexdigest()[:16]


def learned_dir(root: str | Path) -> Path:
    """Where `ghost-lsp learn` installs the model adapted to the workspace `root`, and where the
    server looks for it: <data dir>/learned/<project_key(root)>/ (a model folder)."""
    return data_dir() / "learned" / project_key(root)


def model_dir(s: Settings) -> Path:
    return Path(s.model).expanduser() if s.model else default_model_dir()


def db_path(s: Settings) -> Path:
    return Path(s.db).expanduser() if s.db else default_db_path()
