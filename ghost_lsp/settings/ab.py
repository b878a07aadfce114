"""A/B variants: settings define them, a hash assigns one per workspace, every suggestion
records it.

    [[ghost.variants]]            # or "variants": [{...}, ...] in JSON / initializationOptions
    name = "small"
    weight = 1
    model = "/models/ghost-py-small"
    [[ghost.variants]]
    name = "small-fim"
    weight = 1
    prompts = "prompts-v2"        # another template folder
    temperature = 0.3

A variant overrides any ordinary setting (model folder, prompt template folder, sampling
params) except `variants` itself. Assignment hashes the workspace root (or, without one,
the feedback database path: one per install) with the variant names, so the same workspace
always gets the same variant and adding a variant reshuffles deliberately, not by accident.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ghost_lsp.settings.core import from_dict


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float = 1.0
    overrides: dict = field(default_factory=dict, hash=False)


def parse_variants(raw: Any) -> tuple[list[Variant], list[str]]:
    """Variants from the `variants` setting; a bad entry becomes a warning and is skipped."""
    out: list[Variant] = []
    warnings: list[str] = []
    if not raw:
        return out, warnings
    if not isinstance(raw, (list, tuple)):
        return out, [f"settings: variants: expected a list of tables, got {type(raw).__name__}; no A/B test"]
    seen: set[str] = set()
    for i, v in enumerate(raw):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
            warnings.append(f"settings: variants[{i}]: needs a table with a non-empty \"name\"; skipped")
            continue
        w = v.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            warnings.append(f"settings: variants[{i}] ({v['name']}): weight {w!r} is not a number ≥ 0; skipped")
            continue
        if v["name"] in seen:
            warnings.append(f"settings: variants[{i}]: duplicate name {v['name']!r}; skipped")
            continue
        seen.add(v["name"])
        overrides = {k: val for k, val in v.items() if k not in ("name", "weight")}
        out.append(Variant(v["name"], float(w), overrides))
    if out and sum(v.weight for v in out) <= 0:
        return [], warnings + ["settings: variants: all weights are 0; no A/B test"]
    return out, warnings


def assign(variants: list[Variant], key: str) -> Variant | None:
    """Deterministic weighted choice: same key and variants → same variant."""
    if not variants:
        return None
    names = ",".join(v.name for v in variants)
    h = hashlib.sha256(f"ghost-ab\0{names}\0{key}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2**64 * sum(v.weight for v in variants)
    for v in variants:
        if u < v.weight:
            return v
        u -= v.weight
    return [v for v in variants if v.weight > 0][-1]


def choose(settings, key: str):
    """(settings with the assigned variant's overrides, variant name or "", warnings)."""
    variants, warnings = parse_variants(getattr(settings, "variants", ()))
    v = assign(variants, key)
    if v is None:
        return settings, "", warnings
    overrides = {k: val for k, val in v.overrides.items() if k != "variants"}
    s, more = from_dict(overrides, settings)
    return s, v.name, warnings + [f"variant {v.name}: {w}" for w in more]
